"""Qwen3 (Qwen3ForCausalLM): the Qwen2 layout without biases, plus RMS norms on each head's q and k.

head_dim is set apart from hidden_size / n_head (128 with hidden 1024 and 16 heads on Qwen3-0.6B), so the key
and value lengths are written explicitly. Rope is NEOX-style in llama.cpp, as in HF: no permutation.
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import DECODER_HPARAMS, RMS_NORM_EPS, rope_metadata
from ..spec import ArchSpec, HFConfig, register
from ..common import check_silu, decoder_tensors
from .qwen2 import ROPE_SCALING, _metadata


def _check(config: HFConfig) -> None:
    check_silu(config, "Qwen3")
    rope_metadata(config, ROPE_SCALING)  # raises for rope scaling llama.cpp cannot reproduce
    if config.get("attention_bias", default=False):
        raise UnsupportedArchitecture("Qwen3 with attention_bias=true is not supported",
                                      "released Qwen3 models have no attention biases")
    if config.get("use_sliding_window", default=False):
        raise UnsupportedArchitecture("Qwen3 with use_sliding_window=true is not supported",
                                      "llama.cpp's qwen3 graph has no sliding-window attention")


QWEN3 = register(ArchSpec(
    hf_classes=("Qwen3ForCausalLM",),
    arch=gguf.MODEL_ARCH.QWEN3,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=lambda config: decoder_tensors(config, qk_norm=True),
    metadata=_metadata,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))
