"""Qwen3.5 (Qwen3_5ForCausalLM, the text model of Qwen3_5ForConditionalGeneration) and Qwen3.5-MoE.

A hybrid: most layers are Gated-DeltaNet linear attention (a causal depthwise convolution over q/k/v, then a
gated delta-rule recurrence whose state is fixed per sequence), every ``full_attention_interval``-th layer is
full attention with a sigmoid output gate (q_proj yields each head's query and gate side by side, which is how
llama.cpp's ``qwen35`` graph reads attn_q as well) and partial multi-axis rope (MRoPE sections; for text all
axes carry the same position). The MoE variant replaces every MLP with routed experts plus a gated shared expert.

What the converter changes (facts from llama.cpp's src/models/qwen35.cpp and its converter, conversion/qwen.py):

* Norms: HF's Qwen3_5RMSNorm multiplies by (1 + w); llama.cpp by w, so 1 is added (in float32). The gated norm
  inside the linear attention multiplies by w and is kept.
* ``A_log`` becomes ssm_a = -exp(A_log); ``dt_bias`` is ssm_dt.bias; the conv kernel (C, 1, K) loses its middle axis.
* Value-head order: with fewer key heads than value heads, HF repeats each key head for its group of value heads
  (``repeat_interleave``: value head j uses key head j // r); ggml broadcasts by tiling (value head j uses key head
  j % n_k). The value heads are therefore reordered from grouped to tiled in every tensor indexed by them: the
  v rows of in_proj_qkv and conv1d, in_proj_z, in_proj_a/b, A_log, dt_bias, and the columns of out_proj.
* The multi-token-prediction block (``mtp.*``), which Hub checkpoints hold and transformers 5 does not save, is
  left out (llama.cpp does not use it for generation) and the result says so; so is the vision tower.

Refused: a layer type other than linear_attention/full_attention, rope scaling, key and value head sizes that
differ (llama.cpp keeps one state size), MRoPE sections that do not cover the rotary dimensions, and for the
MoE variant dense layers (``mlp_only_layers``).
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np

from ...errors import UnsupportedArchitecture
from ..common import (DECODER_HPARAMS, EXPERT_HPARAMS, MULTIMODAL_TEXT_RENAMES, PLAIN_ROPE_TYPES, RMS_NORM_EPS,
                      U32, check_silu, head_size_metadata, mrope_metadata, stacked_experts)
from ..floats import bf16_to_f32
from ..spec import ArchSpec, Expected, HFConfig, HParam, LayerSize, SizeFacts, register, uniform_sizes
from .gemma import BOOL_ARRAY, plus_one

K = gguf.Keys
T = gguf.MODEL_TENSOR
RECURRENT_LAYERS = "{arch}.attention.recurrent_layers"  # llama.cpp's key (src/llama-arch.cpp); not in gguf-py
LAYER_TYPES = ("linear_attention", "full_attention")

# What transformers' Qwen3_5TextConfig fills in when config.json leaves a value out.
QWEN35_TEXT_DEFAULTS = {"head_dim": 256, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
                        "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                        "partial_rotary_factor": 0.25, "full_attention_interval": 4}
MROPE_SECTION_DEFAULT = [11, 11, 10]

SSM_HPARAMS: tuple[HParam, ...] = (
    HParam(K.SSM.CONV_KERNEL, ("linear_conv_kernel_dim",)),
    HParam(K.SSM.STATE_SIZE, ("linear_key_head_dim",)),
    HParam(K.SSM.GROUP_COUNT, ("linear_num_key_heads",)),
    HParam(K.SSM.TIME_STEP_RANK, ("linear_num_value_heads",)),
)


def recurrent_layers(config: HFConfig) -> list[bool]:
    """Per layer: is it a linear-attention (recurrent) layer? From ``layer_types``, else every
    ``full_attention_interval``-th layer is full attention (transformers' rule)."""
    n_layers = int(config.get("num_hidden_layers"))
    layer_types = config.get("layer_types", default=None)
    if layer_types is None:
        interval = int(config.get("full_attention_interval"))
        return [(i + 1) % interval != 0 for i in range(n_layers)]
    unknown = sorted(set(layer_types) - set(LAYER_TYPES))
    if unknown or len(layer_types) != n_layers:
        raise UnsupportedArchitecture(
            f"Qwen3.5 layer_types {unknown[0] if unknown else layer_types!r} is not supported",
            f"llama.cpp's qwen35 graph has {' and '.join(LAYER_TYPES)} layers, one entry per layer")
    return [t == "linear_attention" for t in layer_types]


def _mrope_section(config: HFConfig) -> list[int]:
    return list(config.rope_parameters.get("mrope_section") or MROPE_SECTION_DEFAULT)


def _check(config: HFConfig) -> None:
    check_silu(config, "Qwen3.5")
    recurrent_layers(config)
    rope_type = config.rope_parameters.get("rope_type")
    if rope_type not in PLAIN_ROPE_TYPES:
        raise UnsupportedArchitecture(f"rope scaling type {rope_type!r} is not supported for {config.architecture}",
                                      "llama.cpp reproduces Qwen3.5's plain multi-axis rope only")
    if config.get("attention_bias", default=False) or not config.get("attn_output_gate", default=True):
        raise UnsupportedArchitecture("Qwen3.5 with attention biases or without the attention output gate is not "
                                      "supported", "llama.cpp's qwen35 graph always gates and has no biases")
    k_dim, v_dim = int(config.get("linear_key_head_dim")), int(config.get("linear_value_head_dim"))
    if k_dim != v_dim:
        raise UnsupportedArchitecture(f"Qwen3.5 with linear_key_head_dim {k_dim} != linear_value_head_dim {v_dim} is "
                                      "not supported", "llama.cpp keeps one head size for the linear attention state")
    n_k, n_v = int(config.get("linear_num_key_heads")), int(config.get("linear_num_value_heads"))
    if n_v % n_k:
        raise UnsupportedArchitecture(f"linear_num_value_heads {n_v} is not a multiple of linear_num_key_heads {n_k}",
                                      "config.json is damaged")
    section = _mrope_section(config)
    if len(section) > 4 or 2 * sum(section) != config.rotary_dims:
        raise UnsupportedArchitecture(f"mrope_section {section} does not cover the {config.rotary_dims} rotary "
                                      "dimensions", "config.json is damaged (mrope_section sums to rotary dims / 2)")
    if config.get("mlp_only_layers", default=[]):
        raise UnsupportedArchitecture("Qwen3.5-MoE with dense layers (mlp_only_layers) is not supported",
                                      "llama.cpp's qwen35moe graph has experts on every layer")


def _metadata(config: HFConfig):
    yield from mrope_metadata(config, _mrope_section(config))
    yield from head_size_metadata(config)
    yield K.SSM.INNER_SIZE, int(config.get("linear_value_head_dim")) * int(config.get("linear_num_value_heads")), U32
    yield RECURRENT_LAYERS, recurrent_layers(config), BOOL_ARRAY


def _moe_metadata(config: HFConfig):
    yield from _metadata(config)
    yield K.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH, int(config.get("shared_expert_intermediate_size")), U32


# --- value-head reordering (grouped by key head -> tiled) ------------------------------------------------------

def _heads(config: HFConfig) -> tuple[int, int, int, int]:
    """(key heads, value heads per key head, head_k_dim, head_v_dim)."""
    n_k, n_v = int(config.get("linear_num_key_heads")), int(config.get("linear_num_value_heads"))
    return n_k, n_v // n_k, int(config.get("linear_key_head_dim")), int(config.get("linear_value_head_dim"))


def tile_value_heads(x: np.ndarray, config: HFConfig, head_size: int, axis: int = 0) -> np.ndarray:
    """Reorder the value heads along ``axis`` from HF's grouped order (key head k's r value heads together) to
    ggml's tiled order (value head slot s of every key head together): new[s * n_k + k] = old[k * r + s]."""
    n_k, r, _, _ = _heads(config)
    if r == 1:
        return x
    x = np.moveaxis(x, axis, 0)
    rest = x.shape[1:]
    tiled = x.reshape(n_k, r, head_size, *rest).swapaxes(0, 1).reshape(x.shape)
    return np.ascontiguousarray(np.moveaxis(tiled, 0, axis))


def _qkv_rows(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    """in_proj_qkv rows and conv1d channels [q | k | v]: only the v block is indexed by value head."""
    n_k, _, k_dim, v_dim = _heads(config)
    if weights.ndim == 3:  # conv1d (C, 1, K) -> (C, K), the layout of llama.cpp's ssm_conv1d
        weights = weights[:, 0, :]
    qk = 2 * n_k * k_dim
    return np.concatenate([weights[:qk], tile_value_heads(weights[qk:], config, v_dim)])


def _value_rows(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    return tile_value_heads(weights, config, _heads(config)[3])


def _per_head(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    return tile_value_heads(weights, config, 1)


def _ssm_a(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    """A_log -> -exp(A_log), computed in float32 as llama.cpp's converter does, in tiled order."""
    widened = bf16_to_f32(weights) if weights.dtype == np.uint16 else weights.astype(np.float32)
    return _per_head(-np.exp(widened), config)


def _out_columns(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    return tile_value_heads(weights, config, _heads(config)[3], axis=1)


def _flatten(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    return weights.reshape(-1)


TRANSFORMS = {
    r"\.(input_layernorm|post_attention_layernorm|q_norm|k_norm)\.weight$|^model\.norm\.weight$": plus_one,
    r"linear_attn\.(in_proj_qkv|conv1d)\.weight$": _qkv_rows,
    r"linear_attn\.in_proj_z\.weight$": _value_rows,
    r"linear_attn\.in_proj_[ab]\.weight$|linear_attn\.dt_bias$": _per_head,
    r"linear_attn\.A_log$": _ssm_a,
    r"linear_attn\.out_proj\.weight$": _out_columns,
    r"mlp\.shared_expert_gate\.weight$": _flatten,
}


# --- tensors -----------------------------------------------------------------------------------------------

def _mlp(config: HFConfig, i: int, moe: bool) -> dict[str, Expected]:
    hidden, p = int(config.get("hidden_size")), f"model.layers.{i}.mlp."
    if not moe:
        ff = int(config.get("intermediate_size"))
        return {p + "gate_proj.weight": Expected((ff, hidden)), p + "up_proj.weight": Expected((ff, hidden)),
                p + "down_proj.weight": Expected((hidden, ff))}
    n_expert, shared = int(config.get("num_experts")), int(config.get("shared_expert_intermediate_size"))
    return {p + "gate.weight": Expected((n_expert, hidden)),
            **stacked_experts(config, i, p + "experts"),
            p + "shared_expert.gate_proj.weight": Expected((shared, hidden)),
            p + "shared_expert.up_proj.weight": Expected((shared, hidden)),
            p + "shared_expert.down_proj.weight": Expected((hidden, shared)),
            # (1, hidden) in HF; llama.cpp reads ffn_gate_inp_shexp as a vector of n_embd.
            p + "shared_expert_gate.weight": Expected((1, hidden), out_shape=(hidden,))}


def _tensors(config: HFConfig, moe: bool = False) -> dict[str, Expected]:
    hidden, head_dim = int(config.get("hidden_size")), config.head_dim
    n_vocab, n_head, n_kv = int(config.get("vocab_size")), config.n_head, config.n_head_kv
    n_k, r, k_dim, v_dim = _heads(config)
    key_dim, value_dim, n_v = n_k * k_dim, n_k * r * v_dim, n_k * r
    conv_dim, kernel = 2 * key_dim + value_dim, int(config.get("linear_conv_kernel_dim"))
    names = gguf.TENSOR_NAMES
    tensors = {"model.embed_tokens.weight": Expected((n_vocab, hidden))}
    for i, recurrent in enumerate(recurrent_layers(config)):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = Expected((hidden,))
        if recurrent:
            a = p + "linear_attn."
            tensors.update({
                a + "in_proj_qkv.weight": Expected((conv_dim, hidden)),
                a + "in_proj_z.weight": Expected((value_dim, hidden)),
                a + "in_proj_b.weight": Expected((n_v, hidden)),
                a + "in_proj_a.weight": Expected((n_v, hidden)),
                a + "conv1d.weight": Expected((conv_dim, 1, kernel), out_shape=(conv_dim, kernel)),
                a + "dt_bias": Expected((n_v,), gguf_name=names[T.SSM_DT].format(bid=i) + ".bias"),
                a + "A_log": Expected((n_v,)),
                a + "norm.weight": Expected((v_dim,)),
                a + "out_proj.weight": Expected((hidden, value_dim)),
            })
        else:
            s = p + "self_attn."
            tensors.update({
                s + "q_proj.weight": Expected((2 * n_head * head_dim, hidden)),  # each head's query, then its gate
                s + "k_proj.weight": Expected((n_kv * head_dim, hidden)),
                s + "v_proj.weight": Expected((n_kv * head_dim, hidden)),
                s + "o_proj.weight": Expected((hidden, n_head * head_dim)),
                s + "q_norm.weight": Expected((head_dim,)),
                s + "k_norm.weight": Expected((head_dim,)),
            })
        tensors[p + "post_attention_layernorm.weight"] = Expected((hidden,))
        tensors.update(_mlp(config, i, moe))
    tensors["model.norm.weight"] = Expected((hidden,))
    tied = bool(config.get("tie_word_embeddings", default=False))
    tensors["lm_head.weight"] = Expected((n_vocab, hidden), optional=tied)
    return tensors


def _sizes(config: HFConfig) -> SizeFacts:
    """For ``edgepack fit``: a linear-attention layer holds no KV cache but, per sequence, the last K-1 inputs of
    its convolution over q, k and v and the delta-rule state (one head_v x head_k matrix per value head):
    llama.cpp's hparams.n_embd_r() + n_embd_s(), in F32."""
    facts = uniform_sizes(config)
    n_k, r, k_dim, v_dim = _heads(config)
    inner, kernel = n_k * r * v_dim, int(config.get("linear_conv_kernel_dim"))
    state = (kernel - 1) * (inner + 2 * n_k * k_dim) + k_dim * inner
    linear = LayerSize(n_head=0, n_head_kv=0, head_dim_k=0, head_dim_v=0, state_floats=state)
    layers = tuple(linear if recurrent else layer for layer, recurrent in zip(facts.layers, recurrent_layers(config)))
    n_ff = int(config.get("intermediate_size", default=0) or 0) or int(config.get("moe_intermediate_size"))
    return dataclasses.replace(facts, layers=layers, n_ff=n_ff)


DROPPED = {r"^(model\.)?mtp\.": "MTP block (multi-token prediction)", r"^model\.visual\.": "vision tower"}

QWEN35 = register(ArchSpec(
    hf_classes=("Qwen3_5ForCausalLM", "Qwen3_5ForConditionalGeneration"),
    arch=gguf.MODEL_ARCH.QWEN35,
    hparams=DECODER_HPARAMS + SSM_HPARAMS + (RMS_NORM_EPS,),
    tensors=_tensors,
    metadata=_metadata,
    transforms=TRANSFORMS,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
    renames=MULTIMODAL_TEXT_RENAMES,
    dropped=DROPPED,
    defaults=QWEN35_TEXT_DEFAULTS,
    sizes=_sizes,
))

QWEN35MOE = register(dataclasses.replace(
    QWEN35,
    hf_classes=("Qwen3_5MoeForCausalLM", "Qwen3_5MoeForConditionalGeneration"),
    arch=gguf.MODEL_ARCH.QWEN35MOE,
    hparams=DECODER_HPARAMS + SSM_HPARAMS + EXPERT_HPARAMS + (RMS_NORM_EPS,),
    tensors=lambda config: _tensors(config, moe=True),
    metadata=_moe_metadata,
))
