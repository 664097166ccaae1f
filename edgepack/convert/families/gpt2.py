"""GPT-2 (GPT2LMHeadModel): learned absolute positions, LayerNorm with biases, fused qkv, GELU (tanh) MLP.

HF's GPT-2 uses ``Conv1D`` layers, which store weights as (in, out): the transpose of a Linear. llama.cpp
expects (out, in) rows, so c_attn, c_proj and c_fc weights are transposed here and declared with their new
shape. The fused c_attn (q, k, v stacked) is what llama.cpp's ``gpt2`` graph reads as attn_qkv. The
output reuses the token embedding unless the checkpoint has its own lm_head. Variants that change the
attention maths (``scale_attn_by_inverse_layer_idx``, unscaled attention) or use another activation are
refused.
"""

from __future__ import annotations

import gguf
import numpy as np

from ...errors import UnsupportedArchitecture
from ..common import U32
from ..spec import ArchSpec, Expected, HFConfig, HParam, register

K = gguf.Keys
HPARAMS = (
    HParam(K.LLM.CONTEXT_LENGTH, ("n_positions", "n_ctx")),  # llama.cpp sizes position_embd from this
    HParam(K.LLM.EMBEDDING_LENGTH, ("n_embd", "hidden_size")),
    HParam(K.LLM.BLOCK_COUNT, ("n_layer", "num_hidden_layers")),
    HParam(K.Attention.HEAD_COUNT, ("n_head", "num_attention_heads")),
    HParam(K.Attention.HEAD_COUNT_KV, ("n_head", "num_attention_heads")),
    HParam(K.Attention.LAYERNORM_EPS, ("layer_norm_epsilon",), float),
)
# The tanh approximation of GELU, which llama.cpp's gpt2 graph uses (ggml_gelu).
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _n_ff(config: HFConfig) -> int:
    return int(config.get("n_inner", default=None) or 4 * int(config.get("n_embd")))


def _check(config: HFConfig) -> None:
    act = config.get("activation_function", default="gelu_new")
    if act not in TANH_GELU:
        raise UnsupportedArchitecture(f"GPT-2 activation_function {act!r} is not supported",
                                      "llama.cpp's gpt2 graph uses the tanh approximation of GELU (gelu_new)")
    if config.get("scale_attn_by_inverse_layer_idx", default=False) or not config.get("scale_attn_weights",
                                                                                    default=True):
        raise UnsupportedArchitecture("GPT-2 with scale_attn_by_inverse_layer_idx or scale_attn_weights=false "
                                      "is not supported", "llama.cpp scales attention by 1/sqrt(head_dim) only")


def _tensors(config: HFConfig) -> dict[str, Expected]:
    hidden, n_vocab = int(config.get("n_embd")), int(config.get("vocab_size"))
    n_pos, ff = int(config.get("n_positions", "n_ctx")), _n_ff(config)
    tensors = {"transformer.wte.weight": Expected((n_vocab, hidden)),
               "transformer.wpe.weight": Expected((n_pos, hidden))}
    for i in range(int(config.get("n_layer"))):
        p = f"transformer.h.{i}."
        tensors.update({
            p + "ln_1.weight": Expected((hidden,)),
            p + "ln_1.bias": Expected((hidden,)),
            p + "attn.c_attn.weight": Expected((hidden, 3 * hidden), out_shape=(3 * hidden, hidden)),
            p + "attn.c_attn.bias": Expected((3 * hidden,)),
            p + "attn.c_proj.weight": Expected((hidden, hidden), out_shape=(hidden, hidden)),
            p + "attn.c_proj.bias": Expected((hidden,)),
            p + "ln_2.weight": Expected((hidden,)),
            p + "ln_2.bias": Expected((hidden,)),
            p + "mlp.c_fc.weight": Expected((hidden, ff), out_shape=(ff, hidden)),
            p + "mlp.c_fc.bias": Expected((ff,)),
            p + "mlp.c_proj.weight": Expected((ff, hidden), out_shape=(hidden, ff)),
            p + "mlp.c_proj.bias": Expected((hidden,)),
        })
    tensors["transformer.ln_f.weight"] = Expected((hidden,))
    tensors["transformer.ln_f.bias"] = Expected((hidden,))
    tensors["lm_head.weight"] = Expected((n_vocab, hidden), optional=True)
    return tensors


def conv1d_to_linear(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    """Conv1D (in, out) -> Linear (out, in)."""
    return np.ascontiguousarray(weights.T)


def _metadata(config: HFConfig):
    yield K.LLM.FEED_FORWARD_LENGTH, _n_ff(config), U32


GPT2 = register(ArchSpec(
    hf_classes=("GPT2LMHeadModel",),
    arch=gguf.MODEL_ARCH.GPT2,
    hparams=HPARAMS,
    tensors=_tensors,
    metadata=_metadata,
    transforms={r"\.(c_attn|c_proj|c_fc)\.weight$": conv1d_to_linear},
    # older checkpoints save the causal-mask buffers (attn.bias, attn.masked_bias): nothing llama.cpp reads.
    ignore=(r"\.attn\.(masked_)?bias$",),
    check=_check,
    # openai-community/gpt2 and its early siblings were saved from GPT2Model: "h.0.attn.c_attn.weight", no lm_head
    optional_prefix="transformer.",
))
