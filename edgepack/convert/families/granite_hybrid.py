"""Granite 4.0 hybrids (GraniteMoeHybridForCausalLM): Mamba2 + attention layers, MoE with a shared MLP.

What llama.cpp's granitehybrid graph expects (src/models/granite-hybrid.cpp, mamba-base.cpp):

* A layer is recurrent (Mamba2) exactly when its KV head count is 0: ``attention.head_count_kv`` is written per
  layer from ``layer_types`` ("mamba"/"attention" on the Hub; transformers 5 saves them as
  "linear_attention"/"full_attention").
* Mamba2 layers: in_proj gives z (d_inner), xBC (d_inner + 2 x groups x d_state) and dt (heads); a depthwise
  causal conv of ``mamba_d_conv`` taps with its bias, SiLU, the selective scan with A = -exp(A_log), the D skip,
  y x SiLU(z), a grouped RMS norm, out_proj. The GGUF carries A itself (``ssm_a``, [heads, 1]), D as [heads, 1],
  the conv kernel as [channels, taps], the norm weight as [groups, d_inner / groups], dt_bias as ``ssm_dt.bias``.
  llama.cpp keeps the last d_conv - 1 conv inputs and a d_state x d_inner scan state per sequence. It supports
  only mamba_expand 2, a conv bias and no projection biases, and does not clamp dt: ``time_step_limit`` must be
  transformers' default (0, inf).
* Feed-forward: with experts, a softmax router over ``num_local_experts`` picking ``num_experts_per_tok``
  (renormalised: the softmax of the chosen logits, as transformers), the experts' fused input_linear
  [experts, 2 x ff, hidden] split into gate (first half) and up, plus the shared MLP (input_linear split the same
  way) as the shared expert; without experts the shared MLP is the layer's MLP.
* Granite's four multipliers as for GraniteForCausalLM (granite.py).
* Rope: llama.cpp rotates only when ``rope.scaling.finetuned`` is true (its default); transformers rotates only
  with ``position_embedding_type: "rope"``. The flag is written from that setting (Granite 4.0-H uses none);
  with rope, q/k rows are permuted for llama.cpp's NORM rope as for Llama.
"""

from __future__ import annotations

import dataclasses
import math

import gguf
import numpy as np

from ...errors import UnsupportedArchitecture
from ..common import (DECODER_HPARAMS, RMS_NORM_EPS, U32, checked_layer_types, permute_k, permute_q,
                      rope_metadata)
from ..floats import bf16_to_f32
from ..spec import ArchSpec, Expected, HFConfig, LayerSize, Part, SizeFacts, register, uniform_sizes
from .granite import check_granite_layers, multiplier_metadata

K = gguf.Keys
T = gguf.MODEL_TENSOR
ARRAY = gguf.GGUFValueType.ARRAY
BOOL = gguf.GGUFValueType.BOOL
# Hub names, then the names transformers 5 saves.
LAYER_KINDS = {"mamba": "mamba", "linear_attention": "mamba", "attention": "attention", "full_attention": "attention"}


def layer_kinds(config: HFConfig) -> list[str]:
    """'mamba' or 'attention' per layer (transformers: every layer Mamba2 when layer_types is absent)."""
    n_layers = int(config.get("num_hidden_layers"))
    types = config.get("layer_types", default=None) or ["mamba"] * n_layers
    return [LAYER_KINDS[t] for t in checked_layer_types(types, n_layers, LAYER_KINDS, "Granite hybrid")]


def mamba_sizes(config: HFConfig) -> dict[str, int]:
    hidden = int(config.get("hidden_size"))
    d_inner = int(config.get("mamba_expand", default=2)) * hidden
    groups, d_state = int(config.get("mamba_n_groups", default=1)), int(config.get("mamba_d_state", default=256))
    heads = int(config.get("mamba_n_heads", default=128))
    conv_dim = d_inner + 2 * groups * d_state
    return {"d_inner": d_inner, "groups": groups, "d_state": d_state, "heads": heads, "conv_dim": conv_dim,
            "d_conv": int(config.get("mamba_d_conv", default=4)), "in_proj": d_inner + conv_dim + heads}


def n_experts(config: HFConfig) -> int:
    return int(config.get("num_local_experts", default=8) or 0)


def uses_rope(config: HFConfig) -> bool:
    return config.get("position_embedding_type", default=None) == "rope"


def _time_step_limit(config: HFConfig) -> tuple[float, float]:
    raw = config.get("time_step_limit", default=None) or (0.0, math.inf)
    # transformers writes infinity into config.json as {"__float__": "Infinity"}
    return tuple(float(v["__float__"]) if isinstance(v, dict) else float(v) for v in raw)


def _check(config: HFConfig) -> None:
    check_granite_layers(config, "Granite hybrid")
    kinds = layer_kinds(config)
    rope_metadata(config, frozenset())
    if "mamba" not in kinds:
        if n_experts(config) and not uses_rope(config):
            raise UnsupportedArchitecture("GraniteMoeHybrid with experts, no Mamba layers and position_embedding_type "
                                          f"{config.get('position_embedding_type', default=None)!r} is not supported",
                                          "llama.cpp runs it as granitemoe, whose graph always applies rope")
        return
    m = mamba_sizes(config)
    head_dim = config.get("mamba_d_head", default="auto")
    settings = {
        "mamba_expand": (int(config.get("mamba_expand", default=2)) == 2, "llama.cpp supports expand 2 only"),
        "mamba_conv_bias": (bool(config.get("mamba_conv_bias", default=True)),
                            "llama.cpp's mamba2 layer adds a conv bias"),
        "mamba_proj_bias": (not config.get("mamba_proj_bias", default=False),
                            "llama.cpp's mamba2 projections have no biases"),
        "mamba_d_head": (head_dim == "auto" or int(head_dim) * m["heads"] == m["d_inner"],
                         "llama.cpp derives the head size as d_inner / mamba_n_heads"),
        "time_step_limit": (_time_step_limit(config) == (0.0, math.inf), "llama.cpp does not clamp dt"),
        "mamba_n_groups": (m["d_inner"] % m["groups"] == 0 and m["d_inner"] % m["heads"] == 0,
                           "d_inner must split evenly into groups and heads"),
    }
    for key, (ok, why) in settings.items():
        if not ok:
            raise UnsupportedArchitecture(f"Granite hybrid with {key} {config.get(key, default=None)!r} is not "
                                          "supported", why)


def _metadata(config: HFConfig):
    kinds = layer_kinds(config)
    yield K.Attention.HEAD_COUNT_KV, [config.n_head_kv if k == "attention" else 0 for k in kinds], ARRAY
    yield from multiplier_metadata(config)
    rope = uses_rope(config)
    yield K.Rope.SCALING_FINETUNED, rope, BOOL
    if rope:
        yield from rope_metadata(config, frozenset())
    experts = n_experts(config)
    shared = int(config.get("shared_intermediate_size"))
    if experts:
        yield K.LLM.FEED_FORWARD_LENGTH, int(config.get("intermediate_size")), U32
        yield K.LLM.EXPERT_COUNT, experts, U32
        yield K.LLM.EXPERT_USED_COUNT, int(config.get("num_experts_per_tok")), U32
        yield K.LLM.EXPERT_SHARED_FEED_FORWARD_LENGTH, shared, U32
    else:
        yield K.LLM.FEED_FORWARD_LENGTH, shared, U32
    if "mamba" not in kinds:  # written as llama.cpp's granite architecture: no SSM keys
        return
    m = mamba_sizes(config)
    yield K.SSM.CONV_KERNEL, m["d_conv"], U32
    yield K.SSM.INNER_SIZE, m["d_inner"], U32
    yield K.SSM.STATE_SIZE, m["d_state"], U32
    yield K.SSM.TIME_STEP_RANK, m["heads"], U32
    yield K.SSM.GROUP_COUNT, m["groups"], U32


def _halves(name: str, shape: tuple[int, ...], index: tuple[int, ...] = ()) -> tuple[Part, Part]:
    """The gate (first) and up (second) halves of a fused input_linear's rows."""
    rows = shape[len(index)]
    return Part(name, shape, index, (0, rows // 2)), Part(name, shape, index, (rows // 2, rows))


def ffn_tensors(config: HFConfig, i: int, shared_mlp: bool = True) -> dict[str, Expected]:
    """Layer i's feed-forward in Granite's MoE layout: the shared MLP (a shared expert beside experts, else the
    layer's MLP) and the experts with their router. Granite MoE without a shared expert has ``shared_mlp`` False."""
    hidden = int(config.get("hidden_size"))
    shared = int(config.get("shared_intermediate_size")) if shared_mlp else 0
    p = f"model.layers.{i}."
    experts = n_experts(config)
    gate_name, up_name = ((T.FFN_GATE_SHEXP, T.FFN_UP_SHEXP) if experts else (T.FFN_GATE, T.FFN_UP))
    gate, up = _halves(p + "shared_mlp.input_linear.weight", (2 * shared, hidden))
    out = {} if not shared_mlp else {
        p + "shared_mlp.gate": Expected((shared, hidden), forms=((gate,),),
                                        gguf_name=gguf.TENSOR_NAMES[gate_name].format(bid=i) + ".weight"),
        p + "shared_mlp.up": Expected((shared, hidden), forms=((up,),),
                                      gguf_name=gguf.TENSOR_NAMES[up_name].format(bid=i) + ".weight"),
        p + "shared_mlp.output_linear.weight": Expected(
            (hidden, shared), gguf_name=gguf.TENSOR_NAMES[T.FFN_DOWN_SHEXP if experts else T.FFN_DOWN].format(
                bid=i) + ".weight"),
    }
    if experts:
        ff, q = int(config.get("intermediate_size")), p + "block_sparse_moe."
        fused = (experts, 2 * ff, hidden)
        halves = [_halves(q + "input_linear.weight", fused, (e,)) for e in range(experts)]
        out.update({
            q + "router.layer.weight": Expected((experts, hidden)),
            q + "experts.gate": Expected((experts, ff, hidden), forms=(tuple(h[0] for h in halves),),
                                         gguf_name=gguf.TENSOR_NAMES[T.FFN_GATE_EXP].format(bid=i) + ".weight"),
            q + "experts.up": Expected((experts, ff, hidden), forms=(tuple(h[1] for h in halves),),
                                       gguf_name=gguf.TENSOR_NAMES[T.FFN_UP_EXP].format(bid=i) + ".weight"),
            q + "output_linear.weight": Expected((experts, hidden, ff)),
        })
    return out


def _tensors(config: HFConfig) -> dict[str, Expected]:
    hidden, head_dim = int(config.get("hidden_size")), config.head_dim
    kv_rows, n_vocab = config.n_head_kv * head_dim, int(config.get("vocab_size"))
    m = mamba_sizes(config)
    names = gguf.TENSOR_NAMES
    tensors = {"model.embed_tokens.weight": Expected((n_vocab, hidden))}
    for i, kind in enumerate(layer_kinds(config)):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = Expected((hidden,))
        if kind == "mamba":
            q = p + "mamba."
            tensors.update({
                q + "in_proj.weight": Expected((m["in_proj"], hidden)),
                q + "conv1d.weight": Expected((m["conv_dim"], 1, m["d_conv"]), out_shape=(m["conv_dim"], m["d_conv"])),
                q + "conv1d.bias": Expected((m["conv_dim"],)),
                q + "dt_bias": Expected((m["heads"],), gguf_name=names[T.SSM_DT].format(bid=i) + ".bias"),
                q + "A_log": Expected((m["heads"],), out_shape=(m["heads"], 1)),
                q + "D": Expected((m["heads"],), out_shape=(m["heads"], 1)),
                q + "norm.weight": Expected((m["d_inner"],), out_shape=(m["groups"], m["d_inner"] // m["groups"])),
                q + "out_proj.weight": Expected((hidden, m["d_inner"])),
            })
        else:
            tensors.update({
                p + "self_attn.q_proj.weight": Expected((hidden, hidden)),
                p + "self_attn.k_proj.weight": Expected((kv_rows, hidden)),
                p + "self_attn.v_proj.weight": Expected((kv_rows, hidden)),
                p + "self_attn.o_proj.weight": Expected((hidden, hidden)),
            })
        tensors[p + "post_attention_layernorm.weight"] = Expected((hidden,))
        tensors.update(ffn_tensors(config, i))
    tensors["model.norm.weight"] = Expected((hidden,))
    tied = bool(config.get("tie_word_embeddings", default=False))
    tensors["lm_head.weight"] = Expected((n_vocab, hidden), optional=tied)
    return tensors


def _f32(weights: np.ndarray) -> np.ndarray:
    return bf16_to_f32(weights) if weights.dtype == np.uint16 else weights.astype(np.float32)


def _a_from_log(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    """A_log -> A = -exp(A_log), as [heads, 1] (what llama.cpp's ssm_scan reads), computed in float32."""
    return (-np.exp(_f32(weights))).reshape(-1, 1)


def _column(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    return weights.reshape(-1, 1)


def _grouped(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    groups = mamba_sizes(config)["groups"]
    return weights.reshape(groups, -1)


def _conv_taps(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    return weights.reshape(weights.shape[0], weights.shape[2])


def _sizes(config: HFConfig) -> SizeFacts:
    """For ``edgepack fit``: a Mamba2 layer holds no KV cache but, per sequence, d_conv - 1 conv inputs
    (d_inner + 2 x groups x d_state channels) and a d_state x d_inner scan state (llama.cpp's n_embd_r and
    n_embd_s); the widest feed-forward is the shared MLP or an expert."""
    facts, m = uniform_sizes(config), mamba_sizes(config)
    state = (m["d_conv"] - 1) * m["conv_dim"] + m["d_state"] * m["d_inner"]
    mamba = LayerSize(n_head=0, n_head_kv=0, head_dim_k=0, head_dim_v=0, state_floats=state)
    layers = tuple(mamba if kind == "mamba" else layer for layer, kind in zip(facts.layers, layer_kinds(config)))
    widest = max(int(config.get("shared_intermediate_size")),
                 int(config.get("intermediate_size")) if n_experts(config) else 0)
    return dataclasses.replace(facts, layers=layers, n_ff=widest)


def _rope_permute(permute):
    """q/k rows permuted for llama.cpp's NORM rope only when the model rotates at all."""
    return lambda weights, config: permute(weights, config) if uses_rope(config) else weights


def _attention_only(config: HFConfig) -> ArchSpec | None:
    """Without Mamba layers llama.cpp runs the checkpoint as its granite architecture (Granite 4.0-Micro: the shared
    MLP as the layer's MLP) or, with experts, as granitemoe (the shared MLP as the shared expert); its converter
    switches too. The same tensors and keys under that name."""
    if "mamba" in layer_kinds(config):
        return None
    return GRANITE_AS_MOE if n_experts(config) else GRANITE_AS_DENSE


GRANITE_HYBRID = register(ArchSpec(
    hf_classes=("GraniteMoeHybridForCausalLM",),
    arch=gguf.MODEL_ARCH.GRANITE_HYBRID,
    # head_count_kv is per layer (metadata); the rest as any decoder
    hparams=tuple(h for h in DECODER_HPARAMS
                  if h.key not in (K.Attention.HEAD_COUNT_KV, K.LLM.FEED_FORWARD_LENGTH)) + (RMS_NORM_EPS,),
    tensors=_tensors,
    metadata=_metadata,
    transforms={r"mamba\.A_log$": _a_from_log, r"mamba\.D$": _column, r"mamba\.norm\.weight$": _grouped,
                r"mamba\.conv1d\.weight$": _conv_taps,
                r"self_attn\.q_proj\.weight$": _rope_permute(permute_q),
                r"self_attn\.k_proj\.weight$": _rope_permute(permute_k)},
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
    sizes=_sizes,
    variant=_attention_only,
))
GRANITE_AS_DENSE = dataclasses.replace(GRANITE_HYBRID, arch=gguf.MODEL_ARCH.GRANITE, variant=lambda config: None)
GRANITE_AS_MOE = dataclasses.replace(GRANITE_HYBRID, arch=gguf.MODEL_ARCH.GRANITE_MOE, variant=lambda config: None)
