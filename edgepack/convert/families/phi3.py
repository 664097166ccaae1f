"""Phi-3 / Phi-3.5 / Phi-4-mini (Phi3ForCausalLM): fused qkv_proj and gate_up_proj, LongRoPE on the 128k sizes.

llama.cpp's ``phi3`` graph takes the fused tensors as they are (attn_qkv; ffn_up holding gate and up, split by
its SwiGLU), and uses NEOX rope like HF, so no tensor is rewritten. LongRoPE ("longrope", formerly "su")
travels as two per-frequency tensors, ``rope_factors_long`` / ``rope_factors_short``, plus the attention
factor sqrt(1 + ln(s) / ln(original context)) with s = max_position_embeddings / original. llama.cpp picks
the long factors when its context is larger than the original one; transformers when the sequence is
longer than it, so the two agree whenever the llama.cpp context is no larger than the sequence (or both
stay below the original length).

Phi-3's ``sliding_window`` is written, but llama.cpp disables sliding-window attention for phi3 (see
src/models/phi3.cpp): models whose window is shorter than their context (Phi-3-mini-4k: 2047) match
transformers only within the window.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from ...errors import UnsupportedArchitecture
from ..common import DECODER_HPARAMS, F32, PLAIN_ROPE_TYPES, RMS_NORM_EPS, U32, check_silu
from ..spec import ArchSpec, Expected, HFConfig, register

K = gguf.Keys
LONGROPE = {"longrope", "su"}


def _rope(config: HFConfig) -> dict:
    params = config.rope_parameters
    rope_type = params.get("rope_type")
    if rope_type not in PLAIN_ROPE_TYPES | LONGROPE:
        raise UnsupportedArchitecture(f"rope scaling type {rope_type!r} is not supported for Phi-3",
                                      "supported rope scaling here: longrope (su)")
    return params


def _original_context(config: HFConfig) -> int:
    params = config.rope_parameters
    value = params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings",
                                                                         default=None)
    return int(value or config.get("max_position_embeddings"))


def _check(config: HFConfig) -> None:
    check_silu(config, "Phi-3")
    params = _rope(config)
    if params.get("rope_type") in LONGROPE:
        half = config.rotary_dims // 2
        for key in ("long_factor", "short_factor"):
            if len(params.get(key) or ()) != half:
                raise UnsupportedArchitecture(f"rope_scaling.{key} has {len(params.get(key) or ())} values, "
                                              f"expected {half} (rotary dims / 2)", "config.json is damaged")


def _tensors(config: HFConfig) -> dict[str, Expected]:
    hidden, head_dim = int(config.get("hidden_size")), config.head_dim
    qkv_rows = (config.n_head + 2 * config.n_head_kv) * head_dim
    ff, n_vocab = int(config.get("intermediate_size")), int(config.get("vocab_size"))
    tensors = {"model.embed_tokens.weight": Expected((n_vocab, hidden))}
    for i in range(int(config.get("num_hidden_layers"))):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": Expected((hidden,)),
            p + "self_attn.qkv_proj.weight": Expected((qkv_rows, hidden)),
            p + "self_attn.o_proj.weight": Expected((hidden, config.n_head * head_dim)),
            p + "post_attention_layernorm.weight": Expected((hidden,)),
            p + "mlp.gate_up_proj.weight": Expected((2 * ff, hidden)),
            p + "mlp.down_proj.weight": Expected((hidden, ff)),
        })
    tensors["model.norm.weight"] = Expected((hidden,))
    tensors["lm_head.weight"] = Expected((n_vocab, hidden),
                                         optional=bool(config.get("tie_word_embeddings", default=False)))
    return tensors


def _metadata(config: HFConfig):
    params = _rope(config)
    original = _original_context(config)
    yield K.Rope.FREQ_BASE, float(params.get("rope_theta", 10000.0)), F32
    yield K.Rope.DIMENSION_COUNT, config.rotary_dims, U32
    yield K.Rope.SCALING_ORIG_CTX_LEN, original, U32
    yield K.Attention.SLIDING_WINDOW, int(config.get("sliding_window", default=None) or 0), U32
    if params.get("rope_type") in LONGROPE:
        scale = int(config.get("max_position_embeddings")) / original
        factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
        # transformers lets rope_scaling state its own attention_factor; it then wins over the formula.
        factor = float(params.get("attention_factor") or factor)
        yield K.Rope.SCALING_ATTN_FACTOR, factor, F32
    if config.head_dim * config.n_head != int(config.get("hidden_size")):
        yield K.Attention.KEY_LENGTH, config.head_dim, U32
        yield K.Attention.VALUE_LENGTH, config.head_dim, U32


def _rope_factors(config: HFConfig):
    params = _rope(config)
    if params.get("rope_type") not in LONGROPE:
        return []
    names = gguf.TENSOR_NAMES
    return [(names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight",
             np.asarray(params["long_factor"], dtype=np.float32)),
            (names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight",
             np.asarray(params["short_factor"], dtype=np.float32))]


PHI3 = register(ArchSpec(
    hf_classes=("Phi3ForCausalLM",),
    arch=gguf.MODEL_ARCH.PHI3,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=_tensors,
    metadata=_metadata,
    extra_tensors=_rope_factors,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))
