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
from ..common import DECODER_HPARAMS, check_silu, decoder_tensors, head_size_metadata, rope_metadata
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
    # llama.cpp's stablelm graph needs an output tensor of its own (it does not fall back to token_embd); tied
    # embeddings are refused in _check, so "unless-tied" always requires lm_head here.
    return decoder_tensors(config, qkv_bias=bool(config.get("use_qkv_bias", default=False)), norm_bias=True,
                           post_attention_norm=not config.get("use_parallel_residual", default=False))


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
