"""SmolLM3 (SmolLM3ForCausalLM): a Llama-shaped decoder whose every 4th layer has no rotary embedding (NoPE).

llama.cpp's ``smollm3`` graph (src/models/smollm3.cpp) skips rope on layer ``il`` exactly when
``(il + 1) % 4 == 0``: the interval is hard-coded (``n_no_rope_layer_step = 4``) and nothing about it is read
from the GGUF. transformers reads the per-layer flags ``no_rope_layers`` (1 = rope, 0 = NoPE), built from
``no_rope_layer_interval`` when absent. So a checkpoint converts only when its flags are llama.cpp's pattern;
any other pattern is refused, since the GGUF could not say so and llama.cpp would silently rotate the wrong
layers. The rest is Llama's: NORM rope (q/k rows permuted), SwiGLU, RMS norms, tied embeddings by default.
Sliding-window layers (``use_sliding_window``) have no counterpart in the graph and are refused.
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import (DECODER_HPARAMS, NORM_ROPE_QK, RMS_NORM_EPS, check_silu, decoder_tensors, head_size_metadata,
                      rope_metadata)
from ..spec import ArchSpec, HFConfig, register

LLAMA_CPP_NOPE_INTERVAL = 4  # src/models/smollm3.cpp: hparams.n_no_rope_layer_step
ROPE_SCALING = frozenset({"linear", "yarn"})


def llama_cpp_rope_layers(n_layers: int) -> list[int]:
    """1 where llama.cpp's smollm3 graph applies rope, 0 on its NoPE layers (every 4th)."""
    return [int((i + 1) % LLAMA_CPP_NOPE_INTERVAL != 0) for i in range(n_layers)]


def _check(config: HFConfig) -> None:
    check_silu(config, "SmolLM3")
    rope_metadata(config, ROPE_SCALING)  # raises for rope scaling llama.cpp cannot reproduce
    n_layers = int(config.get("num_hidden_layers"))
    interval = int(config.get("no_rope_layer_interval", default=LLAMA_CPP_NOPE_INTERVAL))
    flags = config.get("no_rope_layers", default=None)
    if flags is None:  # transformers builds the flags from the interval
        flags = [int((i + 1) % interval != 0) for i in range(n_layers)]
    flags = [int(bool(f)) for f in flags[:n_layers]]
    expected = llama_cpp_rope_layers(n_layers)
    if len(flags) < n_layers or flags != expected:
        nope = [i for i, f in enumerate(flags) if not f]
        raise UnsupportedArchitecture(
            f"SmolLM3 with NoPE layers {nope} (no_rope_layers / no_rope_layer_interval) is not supported",
            f"llama.cpp hard-codes NoPE on every {LLAMA_CPP_NOPE_INTERVAL}th layer "
            f"({[i for i, f in enumerate(expected) if not f]}) and the GGUF cannot say otherwise")
    if config.get("use_sliding_window", default=False) and config.get("sliding_window", default=None):
        raise UnsupportedArchitecture("SmolLM3 with use_sliding_window=true is not supported",
                                      "llama.cpp's smollm3 graph has no sliding-window attention")
    if config.get("attention_bias", default=False) or config.get("mlp_bias", default=False):
        raise UnsupportedArchitecture("SmolLM3 with attention_bias/mlp_bias is not supported",
                                      "llama.cpp's smollm3 graph has no q/k/v/o or MLP biases")


def _metadata(config: HFConfig):
    yield from rope_metadata(config, ROPE_SCALING)
    yield from head_size_metadata(config)


SMOLLM3 = register(ArchSpec(
    hf_classes=("SmolLM3ForCausalLM",),
    arch=gguf.MODEL_ARCH.SMOLLM3,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=decoder_tensors,
    metadata=_metadata,
    transforms=NORM_ROPE_QK,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))
