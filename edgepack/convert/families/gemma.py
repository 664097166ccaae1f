"""Gemma, Gemma 2 and Gemma 3 (text): GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, and the text
model of Gemma3ForConditionalGeneration (Gemma 3 4B/12B/27B; its vision tower and projector are not converted).

What sets them apart from Llama, and where each fact lives in llama.cpp (src/models/gemma*.cpp):

* RMS norm weights are stored as ``w - 1`` (HF computes ``x * (1 + w)``); llama.cpp multiplies by the
  stored weight, so every ``*norm.weight`` gets +1 here, in float32 (HF adds in float32 too).
* Embeddings are scaled by sqrt(hidden_size) and the output reuses the embedding: both done by the graphs.
* Rope is NEOX-style (rotate-half) in llama.cpp, as in HF: q/k rows are not permuted.
* Gemma 2: pre/post attention and feed-forward norms, tanh soft-capping of attention scores
  (``attn_logit_softcapping``) and of the final logits (``final_logit_softcapping``), and sliding-window
  attention on every other layer. llama.cpp always applies both soft-caps (defaults 50/30), so a config
  without them cannot be reproduced and is refused.
* Gemma 3: q/k RMS norms, no attention soft-capping, local (sliding) layers with their own rope base
  (``rope.freq_base_swa``) and global layers with the main one (optionally linearly scaled).
* Gemma 2/3 scale queries by ``query_pre_attn_scalar ** -0.5`` in HF; llama.cpp uses 1/sqrt(head_dim), or
  1/sqrt(hidden/heads) for the 27B layer counts. Any other combination is refused.

Which layers slide is written per layer (``attention.sliding_window_pattern`` as a bool array), taken from
HF's ``layer_types`` when config.json has it, else from the model's fixed pattern.

Gemma3ForConditionalGeneration keeps the same text decoder under another prefix (``MULTIMODAL_TEXT_RENAMES``)
in a ``text_config`` that holds only what differs from transformers' Gemma3TextConfig defaults (the 4B's names
hidden size, FFN size, layer count, rope scaling and window: heads, head_dim, vocabulary... are defaults), and
its forward pass never soft-caps the logits, whatever ``final_logit_softcapping`` says: the GGUF has no cap.
"""

from __future__ import annotations

import dataclasses
import math

import gguf

from ...errors import UnsupportedArchitecture
from ..common import (DECODER_HPARAMS, F32, MULTIMODAL_TEXT_RENAMES, PLAIN_ROPE_TYPES, RMS_NORM_EPS, STR, U32,
                      decoder_tensors, head_size_metadata, plus_one, rope_metadata)
from ..spec import ArchSpec, HFConfig, Metadata, SizeFacts, register, uniform_sizes

K = gguf.Keys
BOOL_ARRAY = gguf.GGUFValueType.ARRAY

# llama.cpp uses the 27B query scale (1/sqrt(hidden/heads)) for these layer counts (gemma2.cpp, gemma3.cpp).
LAYERS_27B = {"Gemma2ForCausalLM": 46, "Gemma3ForCausalLM": 62, "Gemma3ForConditionalGeneration": 62}


def _check_activation(config: HFConfig, allowed: tuple[str, ...]) -> None:
    act = config.get("hidden_activation", "hidden_act", default="gelu_pytorch_tanh")
    if act not in allowed:
        raise UnsupportedArchitecture(f"activation {act!r} is not supported for {config.architecture}",
                                      "llama.cpp's Gemma graphs use the tanh approximation of GELU "
                                      "(gelu_pytorch_tanh)")


def _check_tied(config: HFConfig) -> None:
    if not config.get("tie_word_embeddings", default=True):
        raise UnsupportedArchitecture(f"{config.architecture} with tie_word_embeddings=false is not supported",
                                      "llama.cpp's Gemma graph always reuses the token embedding as output")


def _check_query_scale(config: HFConfig) -> None:
    hidden, n_head = int(config.get("hidden_size")), config.n_head
    wanted = float(config.get("query_pre_attn_scalar", default=config.head_dim))
    is_27b = int(config.get("num_hidden_layers")) == LAYERS_27B.get(config.architecture)
    llama_cpp = float(hidden // n_head) if is_27b else float(config.head_dim)
    if not math.isclose(wanted, llama_cpp):
        raise UnsupportedArchitecture(
            f"query_pre_attn_scalar {wanted:g} is not supported here (llama.cpp scales queries by "
            f"1/sqrt({llama_cpp:g}) for this {config.architecture})",
            "llama.cpp derives the query scale from head_dim (or hidden_size/heads for the 27B layer count)")


def sliding_layers(config: HFConfig, every: int) -> list[bool]:
    """Per layer: does it use sliding-window attention? From ``layer_types`` (transformers 5.x configs), else
    from ``sliding_window_pattern`` (Gemma 3: every Nth layer is global) or the fixed ``every``."""
    n_layers = int(config.get("num_hidden_layers"))
    layer_types = config.get("layer_types", default=None)
    if layer_types is not None:
        if len(layer_types) != n_layers or set(layer_types) - {"sliding_attention", "full_attention"}:
            raise UnsupportedArchitecture(f"layer_types {layer_types!r} is not supported",
                                          "expected one of sliding_attention/full_attention per layer")
        return [t == "sliding_attention" for t in layer_types]
    pattern = int(config.get("sliding_window_pattern", default=every))
    return [(i + 1) % pattern != 0 for i in range(n_layers)]


def _sliding_metadata(config: HFConfig, every: int) -> list[Metadata]:
    return [(K.Attention.SLIDING_WINDOW, int(config.get("sliding_window")), U32),
            (K.Attention.SLIDING_WINDOW_PATTERN, sliding_layers(config, every), BOOL_ARRAY)]


def _sliding_sizes(config: HFConfig, every: int) -> SizeFacts:
    """For ``edgepack fit``: the sliding layers' caches hold only the window."""
    return uniform_sizes(config, sliding_layers(config, every), int(config.get("sliding_window", default=0) or 0))


# --- Gemma -------------------------------------------------------------------------------------------------

def _gemma_check(config: HFConfig) -> None:
    # transformers maps Gemma 1's legacy hidden_act "gelu" to the tanh approximation, which llama.cpp uses.
    _check_activation(config, ("gelu", "gelu_pytorch_tanh"))
    _check_tied(config)
    rope_metadata(config, frozenset())  # raises for rope scaling llama.cpp cannot reproduce


def _gemma_metadata(config: HFConfig):
    yield from rope_metadata(config, frozenset())
    yield from head_size_metadata(config)


GEMMA = register(ArchSpec(
    hf_classes=("GemmaForCausalLM",),
    arch=gguf.MODEL_ARCH.GEMMA,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=lambda config: decoder_tensors(config, lm_head="absent"),
    metadata=_gemma_metadata,
    transforms={r"norm\.weight$": plus_one},
    # A tied checkpoint that still saves lm_head holds the embedding again; llama.cpp never reads it.
    ignore=(r"rotary_emb\.inv_freq$", r"^lm_head\.weight$"),
    check=_gemma_check,
))


# --- Gemma 2 -----------------------------------------------------------------------------------------------

def _gemma2_check(config: HFConfig) -> None:
    _check_activation(config, ("gelu_pytorch_tanh",))
    _check_tied(config)
    _check_query_scale(config)
    rope_metadata(config, frozenset())
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if not config.get(key, default=None):
            raise UnsupportedArchitecture(f"Gemma 2 without {key} is not supported",
                                          "llama.cpp's gemma2 graph always applies both soft-caps")


def _gemma2_metadata(config: HFConfig):
    yield from rope_metadata(config, frozenset())
    yield from head_size_metadata(config)
    yield K.LLM.ATTN_LOGIT_SOFTCAPPING, float(config.get("attn_logit_softcapping")), F32
    yield K.LLM.FINAL_LOGIT_SOFTCAPPING, float(config.get("final_logit_softcapping")), F32
    yield from _sliding_metadata(config, every=2)


GEMMA2 = register(ArchSpec(
    hf_classes=("Gemma2ForCausalLM",),
    arch=gguf.MODEL_ARCH.GEMMA2,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=lambda config: decoder_tensors(config, sandwich_norms=True, lm_head="absent"),
    metadata=_gemma2_metadata,
    transforms={r"norm\.weight$": plus_one},
    ignore=(r"rotary_emb\.inv_freq$", r"^lm_head\.weight$"),
    check=_gemma2_check,
    sizes=lambda config: _sliding_sizes(config, every=2),
))


# --- Gemma 3 -----------------------------------------------------------------------------------------------

def gemma3_rope(config: HFConfig) -> tuple[dict, dict]:
    """(global, local) rope parameters, from transformers 5.x ``rope_parameters`` keyed by layer type or from
    the 4.x ``rope_theta`` / ``rope_scaling`` (global layers only) / ``rope_local_base_freq``."""
    raw = config.text.get("rope_parameters") or {}
    if "full_attention" in raw or "sliding_attention" in raw:
        return dict(raw.get("full_attention") or {}), dict(raw.get("sliding_attention") or {})
    local = {"rope_theta": float(config.get("rope_local_base_freq", default=10000.0))}
    return config.rope_parameters, local


def _rope_type(params: dict):
    return params.get("rope_type", params.get("type"))


def _gemma3_check(config: HFConfig) -> None:
    _check_activation(config, ("gelu_pytorch_tanh",))
    _check_query_scale(config)
    if config.get("use_bidirectional_attention", default=False):
        raise UnsupportedArchitecture("Gemma 3 with use_bidirectional_attention is not supported",
                                      "llama.cpp's gemma3 graph attends causally (an embedding model needs "
                                      "another architecture)")
    if config.get("attn_logit_softcapping", default=None):
        raise UnsupportedArchitecture("Gemma 3 with attn_logit_softcapping is not supported",
                                      "llama.cpp's gemma3 graph has no attention soft-capping")
    full, local = gemma3_rope(config)
    if _rope_type(full) not in PLAIN_ROPE_TYPES | {"linear"}:
        raise UnsupportedArchitecture(f"rope scaling type {_rope_type(full)!r} is not supported for Gemma 3",
                                      "supported rope scaling here: linear (global layers)")
    if _rope_type(local) not in PLAIN_ROPE_TYPES:
        raise UnsupportedArchitecture(f"rope scaling {_rope_type(local)!r} on Gemma 3's local layers is not "
                                      "supported", "llama.cpp scales only the global layers' rope")


def _gemma3_metadata(config: HFConfig, *, logit_softcap: bool = True):
    full, local = gemma3_rope(config)
    yield K.Rope.FREQ_BASE, float(full.get("rope_theta", 1_000_000.0)), F32
    yield K.Rope.DIMENSION_COUNT, config.head_dim, U32
    if _rope_type(full) == "linear":
        yield K.Rope.SCALING_TYPE, "linear", STR
        yield K.Rope.SCALING_FACTOR, float(full["factor"]), F32
    yield from head_size_metadata(config)
    if logit_softcap and config.get("final_logit_softcapping", default=None):
        yield K.LLM.FINAL_LOGIT_SOFTCAPPING, float(config.get("final_logit_softcapping")), F32
    layers = sliding_layers(config, every=6)
    if any(layers):
        yield from _sliding_metadata(config, every=6)
        yield K.Rope.FREQ_BASE_SWA, float(local.get("rope_theta", 10000.0)), F32


# transformers' Gemma3TextConfig defaults, which config.json leaves out when a value equals them.
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "tie_word_embeddings": True,
}

GEMMA3 = register(ArchSpec(
    hf_classes=("Gemma3ForCausalLM",),
    arch=gguf.MODEL_ARCH.GEMMA3,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=lambda config: decoder_tensors(config, sandwich_norms=True, qk_norm=True, lm_head="optional"),
    metadata=_gemma3_metadata,
    transforms={r"norm\.weight$": plus_one},
    ignore=(r"rotary_emb(_local)?\.inv_freq$",),
    check=_gemma3_check,
    defaults=GEMMA3_TEXT_DEFAULTS,
    sizes=lambda config: _sliding_sizes(config, every=6),
))

# The vision tower (SigLIP) and projector of Gemma 3 4B/12B/27B, in 4.x and 5.x checkpoint layouts.
GEMMA3_VISION_PARTS = {r"^(model\.)?vision_tower\.": "vision tower",
                       r"^(model\.)?multi_modal_projector\.": "multimodal projector"}

GEMMA3_MULTIMODAL = register(dataclasses.replace(
    GEMMA3,
    hf_classes=("Gemma3ForConditionalGeneration",),
    metadata=lambda config: _gemma3_metadata(config, logit_softcap=False),
    renames=MULTIMODAL_TEXT_RENAMES,
    dropped=GEMMA3_VISION_PARTS,
))
