"""StableLM (StableLmForCausalLM): StableLM-2 1.6B/Zephyr and StableLM-3B-4E1T.

LayerNorm with biases (not RMS), partial rotary embeddings (``partial_rotary_factor``, 0.25 on StableLM-2),
optional q/k/v biases (``use_qkv_bias``) and a SwiGLU MLP. llama.cpp's ``stablelm`` graph uses NEOX rope like
HF and decides between sequential and parallel residual by whether the post-attention norm exists, so
``use_parallel_residual`` only changes which tensors the checkpoint holds. Per-head q/k LayerNorms
(``qk_layernorm``, StableLM-2-12B) are refused: they would need stacking many HF tensors into one.
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import DECODER_HPARAMS, check_silu, head_size_metadata, rope_metadata
from ..spec import ArchSpec, Expected, HFConfig, HParam, register

K = gguf.Keys
LAYER_NORM_EPS = HParam(K.Attention.LAYERNORM_EPS, ("layer_norm_eps", "norm_eps"), float)


def _check(config: HFConfig) -> None:
    check_silu(config, "StableLM")
    rope_metadata(config, frozenset({"linear"}))  # raises for rope scaling llama.cpp cannot reproduce
    if config.get("qk_layernorm", default=False):
        raise UnsupportedArchitecture("StableLM with qk_layernorm=true (per-head q/k norms) is not supported",
                                      "this is StableLM-2-12B's layout; convert it with llama.cpp's own script")
    if config.get("tie_word_embeddings", default=False):
        raise UnsupportedArchitecture("StableLM with tie_word_embeddings=true is not supported",
                                      "llama.cpp's stablelm graph needs a separate output matrix")


def _tensors(config: HFConfig) -> dict[str, Expected]:
    hidden, head_dim = int(config.get("hidden_size")), config.head_dim
    q_rows, kv_rows = config.n_head * head_dim, config.n_head_kv * head_dim
    ff, n_vocab = int(config.get("intermediate_size")), int(config.get("vocab_size"))
    qkv_bias = bool(config.get("use_qkv_bias", default=False))
    parallel = bool(config.get("use_parallel_residual", default=False))
    tensors = {"model.embed_tokens.weight": Expected((n_vocab, hidden))}
    for i in range(int(config.get("num_hidden_layers"))):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = Expected((hidden,))
        tensors[p + "input_layernorm.bias"] = Expected((hidden,))
        for proj, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
            tensors[f"{p}self_attn.{proj}_proj.weight"] = Expected((rows, hidden))
            if qkv_bias:
                tensors[f"{p}self_attn.{proj}_proj.bias"] = Expected((rows,))
        tensors[p + "self_attn.o_proj.weight"] = Expected((hidden, q_rows))
        if not parallel:
            tensors[p + "post_attention_layernorm.weight"] = Expected((hidden,))
            tensors[p + "post_attention_layernorm.bias"] = Expected((hidden,))
        tensors.update({
            p + "mlp.gate_proj.weight": Expected((ff, hidden)),
            p + "mlp.up_proj.weight": Expected((ff, hidden)),
            p + "mlp.down_proj.weight": Expected((hidden, ff)),
        })
    tensors["model.norm.weight"] = Expected((hidden,))
    tensors["model.norm.bias"] = Expected((hidden,))
    # llama.cpp's stablelm graph needs an output tensor of its own (it does not fall back to token_embd).
    tensors["lm_head.weight"] = Expected((n_vocab, hidden))
    return tensors


def _metadata(config: HFConfig):
    yield from rope_metadata(config, frozenset({"linear"}))  # rotary dims: HFConfig.rotary_dims
    yield from head_size_metadata(config)


STABLELM = register(ArchSpec(
    hf_classes=("StableLmForCausalLM",),
    arch=gguf.MODEL_ARCH.STABLELM,
    hparams=DECODER_HPARAMS + (LAYER_NORM_EPS,),
    tensors=_tensors,
    metadata=_metadata,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))
