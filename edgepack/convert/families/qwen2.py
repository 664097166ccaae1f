"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM): Llama-shaped, plus q/k/v biases; the small sizes tie embeddings.

llama.cpp's ``qwen2`` graph uses NEOX rope (rotate-half, as HF), so q/k rows need no permutation. Qwen2's
optional sliding window (``use_sliding_window``, off in every released config) has no counterpart in the
``qwen2`` graph: a config that turns it on is refused rather than converted into a different model.
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import DECODER_HPARAMS, RMS_NORM_EPS, head_size_metadata, rope_metadata
from ..spec import ArchSpec, Expected, HFConfig, register

# Linear rope scaling divides positions by the factor in HF and in llama.cpp alike.
ROPE_SCALING = frozenset({"linear"})


def check_silu(config: HFConfig, family: str) -> None:
    act = config.get("hidden_act", default="silu")
    if act != "silu":
        raise UnsupportedArchitecture(f"hidden_act {act!r} is not supported for {family}",
                                      f"llama.cpp's {family} graph uses SiLU (SwiGLU)")


def _check(config: HFConfig) -> None:
    check_silu(config, "Qwen2")
    rope_metadata(config, ROPE_SCALING)  # raises for rope scaling llama.cpp cannot reproduce
    if config.get("use_sliding_window", default=False):
        raise UnsupportedArchitecture("Qwen2 with use_sliding_window=true is not supported",
                                      "llama.cpp's qwen2 graph has no sliding-window attention")


def decoder_tensors(config: HFConfig, *, qkv_bias: bool = False, qk_norm: bool = False) -> dict[str, Expected]:
    """The tensors of a Llama-shaped decoder (SwiGLU MLP, RMS norms), with optional q/k/v biases and
    per-head q/k norms (Qwen3)."""
    hidden, head_dim = int(config.get("hidden_size")), config.head_dim
    q_rows, kv_rows = config.n_head * head_dim, config.n_head_kv * head_dim
    ff, n_vocab = int(config.get("intermediate_size")), int(config.get("vocab_size"))
    tensors = {"model.embed_tokens.weight": Expected((n_vocab, hidden))}
    for i in range(int(config.get("num_hidden_layers"))):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = Expected((hidden,))
        for proj, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
            tensors[f"{p}self_attn.{proj}_proj.weight"] = Expected((rows, hidden))
            if qkv_bias:
                tensors[f"{p}self_attn.{proj}_proj.bias"] = Expected((rows,))
        if qk_norm:
            tensors[p + "self_attn.q_norm.weight"] = Expected((head_dim,))
            tensors[p + "self_attn.k_norm.weight"] = Expected((head_dim,))
        tensors.update({
            p + "self_attn.o_proj.weight": Expected((hidden, q_rows)),
            p + "post_attention_layernorm.weight": Expected((hidden,)),
            p + "mlp.gate_proj.weight": Expected((ff, hidden)),
            p + "mlp.up_proj.weight": Expected((ff, hidden)),
            p + "mlp.down_proj.weight": Expected((hidden, ff)),
        })
    tensors["model.norm.weight"] = Expected((hidden,))
    tensors["lm_head.weight"] = Expected((n_vocab, hidden),
                                         optional=bool(config.get("tie_word_embeddings", default=False)))
    return tensors


def _metadata(config: HFConfig):
    yield from rope_metadata(config, ROPE_SCALING)
    yield from head_size_metadata(config)


QWEN2 = register(ArchSpec(
    hf_classes=("Qwen2ForCausalLM",),
    arch=gguf.MODEL_ARCH.QWEN2,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=lambda config: decoder_tensors(config, qkv_bias=True),
    metadata=_metadata,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))
