"""Llama family: Llama-2, Llama-3.x, TinyLlama, SmolLM/SmolLM2 (all LlamaForCausalLM) and Mistral; also the text
model of SmolVLM/SmolVLM2/Idefics3 (a Llama under ``model.text_model.``; the vision part is convert --mmproj's).

llama.cpp runs all of them as architecture ``llama``. The only layout difference from Hugging Face is the
rope row order of q_proj/k_proj (permuted here); Llama-3.1 rope scaling travels as a rope_freqs tensor.
Mistral's sliding_window is not carried: llama.cpp's llama graph has no sliding window, so Mistral-7B-v0.1
matches transformers only within 4096 tokens (v0.2+ set sliding_window to null).
"""

from __future__ import annotations

import dataclasses

import gguf

from ...errors import UnsupportedArchitecture
from ..common import (DECODER_HPARAMS, NORM_ROPE_QK, RMS_NORM_EPS, check_silu, decoder_tensors, head_size_metadata,
                      llama3_rope_factors, rope_metadata)
from ..spec import ArchSpec, HFConfig, register


def _check(config: HFConfig) -> None:
    check_silu(config, "Llama")
    if config.get("attention_bias", default=False) or config.get("mlp_bias", default=False):
        raise UnsupportedArchitecture("Llama checkpoints with attention_bias/mlp_bias are not supported",
                                      "this is unusual for Llama; convert the model with its own family")


def _metadata(config: HFConfig):
    yield from rope_metadata(config)
    yield from head_size_metadata(config)


LLAMA = register(ArchSpec(
    hf_classes=("LlamaForCausalLM", "MistralForCausalLM"),
    arch=gguf.MODEL_ARCH.LLAMA,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=decoder_tensors,
    metadata=_metadata,
    transforms=NORM_ROPE_QK,
    extra_tensors=llama3_rope_factors,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))

# SmolVLM / Idefics3 keep the decoder at model.text_model.* (4.x Hub checkpoints and transformers 5.x alike).
SMOLVLM_TEXT = register(dataclasses.replace(
    LLAMA,
    hf_classes=("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"),
    renames=((r"^model\.text_model\.", "model."),),
    dropped={r"^model\.vision_model\.": "vision tower", r"^model\.connector\.": "multimodal projector"},
))
