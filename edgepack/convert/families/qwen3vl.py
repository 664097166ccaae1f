"""Qwen3-VL's text model (the language model of Qwen3VLForConditionalGeneration), llama.cpp's ``qwen3vl``.

The decoder is Qwen3's (per-head q/k RMS norms, no biases, NEOX rope) with two differences llama.cpp's
``qwen3vl`` graph (src/models/qwen3vl.cpp) reproduces from GGUF keys:

* Interleaved multi-axis rope (``mrope_section``, e.g. [24, 20, 20] over head_dim 128): each rotary pair is
  driven by the time, height or width position. For text every axis carries the same position, so the model
  is plain rope there; an image's tokens get their grid positions from libmtmd. Written as
  ``rope.dimension_sections`` (padded to 4); llama.cpp applies it interleaved (IMROPE) for this architecture,
  as transformers does for ``mrope_interleaved`` checkpoints.
* DeepStack: the vision tower hands, besides the image embeddings, one extra embedding per
  ``deepstack_visual_indexes`` entry, added to the output of decoder layer 0, 1, ... . llama.cpp takes them
  concatenated to the image embedding (``n_deepstack_layers`` extra widths of n_embd in the input embedding)
  and needs their count, ``n_deepstack_layers``, from the vision config.

Refused: rope scaling other than plain (llama.cpp's qwen3vl applies none), an mrope_section that does not
cover head_dim / 2, attention biases, a head_dim that is not fully rotated.
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import (DECODER_HPARAMS, MULTIMODAL_TEXT_RENAMES, PLAIN_ROPE_TYPES, RMS_NORM_EPS, U32,
                      check_silu, decoder_tensors, head_size_metadata, mrope_metadata)
from ..spec import ArchSpec, HFConfig, register

K = gguf.Keys

# What transformers' Qwen3VLTextConfig / Qwen3VLVisionConfig fill in when config.json leaves a value out.
QWEN3VL_TEXT_DEFAULTS = {"head_dim": 128, "rms_norm_eps": 1e-6}
DEEPSTACK_DEFAULT = (8, 16, 24)


def mrope_section(config: HFConfig) -> list[int]:
    section = config.rope_parameters.get("mrope_section")
    if not isinstance(section, list) or not section or not all(isinstance(s, int) and s >= 0 for s in section):
        raise UnsupportedArchitecture(f"Qwen3-VL rope has no usable mrope_section ({section!r})",
                                      "re-download config.json (text_config.rope_scaling.mrope_section)")
    return section


def deepstack_layers(config: HFConfig) -> int:
    """How many extra embeddings the vision tower adds to the first decoder layers' outputs."""
    vision = config.data.get("vision_config") or {}
    return len(vision.get("deepstack_visual_indexes", DEEPSTACK_DEFAULT))


def _check(config: HFConfig) -> None:
    check_silu(config, "Qwen3-VL")
    rope_type = config.rope_parameters.get("rope_type")
    if rope_type not in PLAIN_ROPE_TYPES:
        raise UnsupportedArchitecture(f"rope scaling type {rope_type!r} is not supported for {config.architecture}",
                                      "llama.cpp's qwen3vl graph applies plain multi-axis rope only")
    if config.get("attention_bias", default=False):
        raise UnsupportedArchitecture("Qwen3-VL with attention_bias=true is not supported",
                                      "released Qwen3-VL models have no attention biases")
    section = mrope_section(config)
    if len(section) > 4 or 2 * sum(section) != config.rotary_dims or config.rotary_dims != config.head_dim:
        raise UnsupportedArchitecture(f"mrope_section {section} does not cover head_dim {config.head_dim}",
                                      "llama.cpp's qwen3vl rotates whole heads in sections summing to head_dim / 2")
    if deepstack_layers(config) > int(config.get("num_hidden_layers")):
        raise UnsupportedArchitecture("more deepstack_visual_indexes than decoder layers",
                                      "config.json is damaged (each deepstack embedding feeds one decoder layer)")


def _metadata(config: HFConfig):
    yield from mrope_metadata(config, mrope_section(config))
    yield K.LLM.NUM_DEEPSTACK_LAYERS, deepstack_layers(config), U32
    yield from head_size_metadata(config)


QWEN3VL = register(ArchSpec(
    hf_classes=("Qwen3VLForConditionalGeneration",),
    arch=gguf.MODEL_ARCH.QWEN3VL,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=lambda config: decoder_tensors(config, qk_norm=True),
    metadata=_metadata,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
    renames=MULTIMODAL_TEXT_RENAMES,
    dropped={r"^model\.visual\.": "vision tower"},
    defaults=QWEN3VL_TEXT_DEFAULTS,
))
