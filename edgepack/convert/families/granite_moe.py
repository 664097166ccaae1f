"""Granite MoE (GraniteMoeForCausalLM: Granite 3.0/3.1 1B-A400M and 3B-A800M; GraniteMoeSharedForCausalLM, the same
with a shared expert): llama.cpp's granitemoe architecture, which runs the granite graph (src/models/granite.cpp)
with experts.

* Attention and the four multipliers as Granite 3.x (granite.py): NORM rope, q/k rows permuted; llama.cpp's
  granitemoe always applies rope (it reads no rope.scaling.finetuned switch), as transformers' GraniteMoe does.
* Every layer's feed-forward is a softmax router over ``num_local_experts`` choosing ``num_experts_per_tok``
  (the softmax of the chosen logits, as llama.cpp's normalised softmax gating), the experts' fused input_linear
  [experts, 2 x ff, hidden] split into gate (first half) and up, output_linear as the down projection; with
  ``shared_intermediate_size`` a shared MLP beside them. The layout and the streamed split are Granite 4's
  (granite_hybrid.ffn_tensors): each stacked tensor is written expert by expert from its rows of the fused one.

A GraniteMoeHybridForCausalLM without Mamba layers but with experts also runs as granitemoe (granite_hybrid.py).
"""

from __future__ import annotations

import dataclasses

import gguf

from ...errors import UnsupportedArchitecture
from ..common import DECODER_HPARAMS, NORM_ROPE_QK, RMS_NORM_EPS, U32, decoder_tensors, rope_metadata
from ..spec import ArchSpec, Expected, HFConfig, SizeFacts, register, uniform_sizes
from .granite import check_granite_layers, multiplier_metadata
from .granite_hybrid import ffn_tensors

K = gguf.Keys
ROPE_SCALING = frozenset({"linear"})


def shared_size(config: HFConfig) -> int:
    """The shared expert's feed-forward size; 0 for GraniteMoe (no shared expert)."""
    return int(config.get("shared_intermediate_size", default=0) or 0)


def _check(config: HFConfig) -> None:
    check_granite_layers(config, "Granite MoE")
    rope_metadata(config, ROPE_SCALING)
    if int(config.get("num_local_experts", default=0) or 0) < 1:
        raise UnsupportedArchitecture("Granite MoE without experts (num_local_experts 0) is not supported",
                                      "a dense Granite is GraniteForCausalLM")


def _tensors(config: HFConfig) -> dict[str, Expected]:
    """Granite's attention tensors, each layer's dense MLP replaced by the router, the experts and the shared MLP."""
    out = {}
    for name, expected in decoder_tensors(config).items():
        if ".mlp." in name:
            continue
        out[name] = expected
        if name.endswith("post_attention_layernorm.weight"):
            out.update(ffn_tensors(config, int(name.split(".")[2]), shared_mlp=shared_size(config) > 0))
    return out


def _metadata(config: HFConfig):
    yield from rope_metadata(config, ROPE_SCALING)
    yield from multiplier_metadata(config)
    yield K.LLM.EXPERT_COUNT, int(config.get("num_local_experts")), U32
    yield K.LLM.EXPERT_USED_COUNT, int(config.get("num_experts_per_tok")), U32
    if shared_size(config):
        yield K.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH, shared_size(config), U32


def _sizes(config: HFConfig) -> SizeFacts:
    """For ``edgepack fit``: attention layers alike; the widest feed-forward is an expert or the shared MLP."""
    facts = uniform_sizes(config)
    return dataclasses.replace(facts, n_ff=max(facts.n_ff, shared_size(config)))


GRANITE_MOE = register(ArchSpec(
    hf_classes=("GraniteMoeForCausalLM", "GraniteMoeSharedForCausalLM"),
    arch=gguf.MODEL_ARCH.GRANITE_MOE,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=_tensors,
    metadata=_metadata,
    transforms=NORM_ROPE_QK,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
    sizes=_sizes,
))
