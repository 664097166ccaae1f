"""Ministral 3 (Ministral3ForCausalLM, and the text model of Mistral3ForConditionalGeneration): llama.cpp's
``mistral3`` architecture (src/models/mistral3.cpp).

A Llama-shaped decoder (NORM rope: q/k rows permuted; head_dim set apart from hidden/heads) with two
long-context settings that llama.cpp reads from the GGUF:

* YaRN rope scaling (factor 16 from a 16384-token original context in the released models), with
  ``mscale_all_dim`` carried as ``rope.scaling.yarn_log_multiplier``: the mistral3 loader reads it, and
  llama.cpp then starts the attention factor from mscale(factor, 1) / mscale(factor, log multiplier)
  (common.yarn_metadata writes the rest so that the product equals transformers' attention_factor).
* The query temperature of Llama 4 (``llama_4_scaling_beta``): transformers multiplies the rotated queries by
  1 + beta * log(1 + floor(position / original context)); llama.cpp does the same with
  ``attention.temperature_scale`` = beta and the YaRN original context as the floor scale.

Mistral3ForConditionalGeneration checkpoints hold a Pixtral vision tower and a projector besides the text
model: they are left out and the result says so (the vision part is a separate issue). Only a ``ministral3``
text model is converted this way; other Mistral 3 text models (Mistral Small 3.1's ``mistral``) are refused.
"""

from __future__ import annotations

import dataclasses

import gguf

from ...errors import UnsupportedArchitecture
from ..common import (DECODER_HPARAMS, F32, MULTIMODAL_TEXT_RENAMES, NORM_ROPE_QK, RMS_NORM_EPS, check_silu,
                      decoder_tensors, head_size_metadata, rope_metadata)
from ..spec import ArchSpec, HFConfig, register

K = gguf.Keys
ROPE_SCALING = frozenset({"yarn", "linear"})


def _rope(config: HFConfig):
    return rope_metadata(config, ROPE_SCALING, yarn_log_multiplier=True)


def _check(config: HFConfig) -> None:
    check_silu(config, "Ministral 3")
    text_type = config.text.get("model_type", "ministral3")
    if text_type != "ministral3":
        raise UnsupportedArchitecture(f"{config.architecture} with a {text_type!r} text model is not supported",
                                      "edgepack converts the Ministral 3 text model (model_type ministral3)")
    _rope(config)  # raises for rope scaling llama.cpp cannot reproduce
    if config.get("sliding_window", default=None):
        raise UnsupportedArchitecture("Ministral 3 with a sliding_window is not supported",
                                      "llama.cpp's mistral3 graph has no sliding-window attention")
    if config.rope_parameters.get("llama_4_scaling_beta") and config.rope_parameters.get("rope_type") != "yarn":
        # llama.cpp's floor scale for the query temperature is YaRN's original context (n_ctx_orig_yarn)
        raise UnsupportedArchitecture("llama_4_scaling_beta without YaRN rope scaling is not supported",
                                      "llama.cpp takes the query temperature's floor scale from YaRN's "
                                      "original context")


def _metadata(config: HFConfig):
    yield from _rope(config)
    yield from head_size_metadata(config)
    beta = config.rope_parameters.get("llama_4_scaling_beta")
    if beta:
        # llama.cpp's floor scale is the YaRN original context (rope.scaling.original_context_length, written by
        # the rope metadata): the same value transformers divides positions by (checked in _check).
        yield K.Attention.TEMPERATURE_SCALE, float(beta), F32


MINISTRAL3 = register(ArchSpec(
    hf_classes=("Ministral3ForCausalLM",),
    arch=gguf.MODEL_ARCH.MISTRAL3,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=decoder_tensors,
    metadata=_metadata,
    transforms=NORM_ROPE_QK,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))

# The Pixtral vision tower and the projector, in transformers 4.x and 5.x checkpoint layouts.
MISTRAL3_VISION_PARTS = {r"^(model\.)?vision_tower\.": "vision tower",
                         r"^(model\.)?multi_modal_projector\.": "multimodal projector"}

MISTRAL3_MULTIMODAL = register(dataclasses.replace(
    MINISTRAL3,
    hf_classes=("Mistral3ForConditionalGeneration",),
    renames=MULTIMODAL_TEXT_RENAMES,
    dropped=MISTRAL3_VISION_PARTS,
))
