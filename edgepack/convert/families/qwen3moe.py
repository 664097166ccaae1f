"""Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3's attention (q/k norms, no biases) with a routed mixture of experts.

Every layer routes each token to ``num_experts_per_tok`` of ``num_experts`` SwiGLU experts through a softmax
router and renormalises the chosen weights (``norm_topk_prob``). llama.cpp's ``qwen3moe`` graph hard-codes exactly
that (src/models/qwen3moe.cpp: softmax gating, normalised weights, experts on every layer), so configs with dense
layers (``mlp_only_layers``, ``decoder_sparse_step`` > 1) or unnormalised routing are refused. The experts are
stacked into one 3-D tensor per projection (common.stacked_experts), from per-expert or pre-fused checkpoints.
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import (DECODER_HPARAMS, EXPERT_COUNT_NAMES, EXPERT_HPARAMS, RMS_NORM_EPS, decoder_tensors,
                      stacked_experts)
from ..spec import ArchSpec, Expected, HFConfig, register
from .qwen2 import _metadata
from .qwen3 import _check as _check_qwen3


def _check(config: HFConfig) -> None:
    _check_qwen3(config)
    if config.get("mlp_only_layers", default=[]) or int(config.get("decoder_sparse_step", default=1)) != 1:
        raise UnsupportedArchitecture("Qwen3-MoE with dense layers (mlp_only_layers / decoder_sparse_step > 1) "
                                      "is not supported", "llama.cpp's qwen3moe graph has experts on every layer")
    if not config.get("norm_topk_prob", default=False):
        raise UnsupportedArchitecture("Qwen3-MoE with norm_topk_prob=false is not supported",
                                      "llama.cpp's qwen3moe graph always renormalises the chosen experts' weights")


def _tensors(config: HFConfig) -> dict[str, Expected]:
    """Qwen3's tensors with each dense MLP replaced by the router and the stacked experts."""
    hidden, n_expert = int(config.get("hidden_size")), int(config.get(*EXPERT_COUNT_NAMES))
    out = {}
    for name, expected in decoder_tensors(config, qk_norm=True).items():
        if ".mlp." in name:
            continue
        out[name] = expected
        if name.endswith("post_attention_layernorm.weight"):
            p = name.removesuffix("post_attention_layernorm.weight")
            out[p + "mlp.gate.weight"] = Expected((n_expert, hidden))
            out.update(stacked_experts(config, int(p.split(".")[2]), p + "mlp.experts"))
    return out


QWEN3MOE = register(ArchSpec(
    hf_classes=("Qwen3MoeForCausalLM",),
    arch=gguf.MODEL_ARCH.QWEN3MOE,
    hparams=DECODER_HPARAMS + EXPERT_HPARAMS + (RMS_NORM_EPS,),
    tensors=_tensors,
    metadata=_metadata,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))
