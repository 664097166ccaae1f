"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM): Llama-shaped, plus q/k/v biases; the small sizes tie embeddings.

llama.cpp's ``qwen2`` graph uses NEOX rope (rotate-half, as HF), so q/k rows need no permutation. Qwen2's
optional sliding window (``use_sliding_window``, off in every released config) has no counterpart in the
``qwen2`` graph: a config that turns it on is refused rather than converted into a different model.
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import DECODER_HPARAMS, RMS_NORM_EPS, check_silu, decoder_tensors, head_size_metadata, rope_metadata
from ..spec import ArchSpec, HFConfig, register

# Linear rope scaling divides positions by the factor in HF and in llama.cpp alike; YaRN (Qwen2.5's and Qwen3's
# long-context setting) is carried as GGUF rope-scaling keys where llama.cpp reproduces it (common.yarn_metadata).
ROPE_SCALING = frozenset({"linear", "yarn"})


def _check(config: HFConfig) -> None:
    check_silu(config, "Qwen2")
    rope_metadata(config, ROPE_SCALING)  # raises for rope scaling llama.cpp cannot reproduce
    if config.get("use_sliding_window", default=False):
        raise UnsupportedArchitecture("Qwen2 with use_sliding_window=true is not supported",
                                      "llama.cpp's qwen2 graph has no sliding-window attention")


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
