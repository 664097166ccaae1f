"""Granite 3.x (GraniteForCausalLM): the Llama layout with four multipliers.

transformers' Granite scales the token embeddings by ``embedding_multiplier``, each block's output by
``residual_multiplier`` before the residual add, uses ``attention_multiplier`` as the attention scale itself
(instead of 1/sqrt(head_dim)) and divides the logits by ``logits_scaling``. llama.cpp's granite graph
(src/models/granite.cpp, src/llama-graph.cpp) applies the same four from ``embedding_scale``,
``residual_scale``, ``attention.scale`` and ``logit_scale``; all four are written, with transformers'
defaults (1.0) where config.json leaves one out. Rope is the NORM (pairwise) kind in llama.cpp, so q/k rows
are permuted as for Llama. llama.cpp derives the head size from hidden_size / heads for this graph.
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import DECODER_HPARAMS, F32, NORM_ROPE_QK, RMS_NORM_EPS, check_silu, decoder_tensors, rope_metadata
from ..spec import ArchSpec, HFConfig, register

K = gguf.Keys
# config.json name -> GGUF key, for the four Granite multipliers (transformers' GraniteConfig defaults 1.0).
MULTIPLIERS = {"embedding_multiplier": K.LLM.EMBEDDING_SCALE, "residual_multiplier": K.LLM.RESIDUAL_SCALE,
               "attention_multiplier": K.Attention.SCALE, "logits_scaling": K.LLM.LOGIT_SCALE}


def multiplier_metadata(config: HFConfig):
    for name, key in MULTIPLIERS.items():
        yield key, float(config.get(name, default=1.0)), F32


def check_multipliers(config: HFConfig) -> None:
    for name in ("attention_multiplier", "logits_scaling"):
        if float(config.get(name, default=1.0)) == 0.0:  # llama.cpp reads 0 as "not set" (1/sqrt(d), no scale)
            raise UnsupportedArchitecture(f"Granite with {name} 0 is not supported",
                                          "llama.cpp treats a zero scale as absent; the model would differ")


def check_granite_layers(config: HFConfig, family: str) -> None:
    """What llama.cpp's granite graphs (granite, granitemoe, granitehybrid) share: SiLU, non-zero multipliers, no q/k/v
    biases, head size hidden / heads."""
    check_silu(config, family)
    check_multipliers(config)
    if config.get("attention_bias", default=False):
        raise UnsupportedArchitecture(f"{family} with attention_bias=true is not supported",
                                      "llama.cpp's granite graphs have no q/k/v biases")
    if config.head_dim * config.n_head != int(config.get("hidden_size")):
        raise UnsupportedArchitecture(f"{family} with head_dim {config.head_dim} is not supported",
                                      "llama.cpp's granite graphs use hidden_size / num_attention_heads")


def _check(config: HFConfig) -> None:
    check_granite_layers(config, "Granite")
    rope_metadata(config, frozenset({"linear"}))
    if config.get("mlp_bias", default=False):
        raise UnsupportedArchitecture("Granite with attention_bias/mlp_bias is not supported",
                                      "released Granite 3.x models have no biases")


def _metadata(config: HFConfig):
    yield from rope_metadata(config, frozenset({"linear"}))
    yield from multiplier_metadata(config)


GRANITE = register(ArchSpec(
    hf_classes=("GraniteForCausalLM",),
    arch=gguf.MODEL_ARCH.GRANITE,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=decoder_tensors,
    metadata=_metadata,
    transforms=NORM_ROPE_QK,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))
