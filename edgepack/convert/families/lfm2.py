"""LFM2 / LFM2.5 (Lfm2ForCausalLM) and LFM2-MoE (Lfm2MoeForCausalLM): Liquid's short-convolution + GQA hybrids;
also the text model of LFM2-VL (Lfm2VlForConditionalGeneration; its vision part is convert --mmproj's).

What llama.cpp expects (src/models/lfm2.cpp, lfm2moe.cpp, the loader in src/llama-model.cpp):

* A layer is a convolution layer exactly when its KV head count is 0: ``attention.head_count_kv`` is written as
  one value per layer (``num_key_value_heads`` on ``full_attention`` layers, 0 on ``conv`` layers), from HF's
  ``layer_types`` (or the older ``full_attn_idxs``). Any other layer type is refused.
* The convolution block: in_proj gives B, C and x (in that order), B*x goes through a depthwise causal
  convolution of ``conv_L_cache`` taps, C gates the result, out_proj. llama.cpp keeps the last
  ``conv_L_cache - 1`` inputs per sequence as the layer's state (``shortconv.l_cache``); HF's Conv1d weight
  [hidden, 1, L] is stored as [hidden, L] (the taps in the same order: both are cross-correlations). llama.cpp
  has no convolution biases, so ``conv_bias`` must be false.
* Attention: q/k RMS norms per head, NEOX rope as in HF (no row permutation), 1/sqrt(head_dim) scale,
  head_dim * heads == hidden (llama.cpp's output projection is [hidden, hidden]).
* LFM2's MLP size is not intermediate_size: with ``block_auto_adjust_ff_dim`` it is 2/3 of it, times
  ``block_ffn_dim_multiplier``, rounded up to ``block_multiple_of`` (transformers' Lfm2MLP); the GGUF carries
  the computed size. ``block_ff_dim`` wins over intermediate_size, as in transformers' config.
* The final norm is HF's ``embedding_norm`` (llama.cpp's ``token_embd_norm``, a historical name).
* LFM2-MoE: the first ``num_dense_layers`` layers have a dense SwiGLU MLP (intermediate_size as is), the others
  a sigmoid router with a selection bias (``expert_bias``), top-k experts whose weights are renormalised, and
  the experts stacked as [experts, rows, cols] tensors. llama.cpp always renormalises and never scales the
  weights there, so ``norm_topk_prob`` must be true and ``routed_scaling_factor`` 1. Without
  ``use_expert_bias`` the bias llama.cpp requires is written as zeros (the same routing).
  Experts come per expert (``experts.{e}.w1/w2/w3``, as on the Hub and as transformers 5 saves them) or fused
  (``experts.gate_up_proj`` [experts, 2 x ff, hidden], gate rows first, and ``experts.down_proj``); both are
  stacked one expert at a time, never the whole layer in memory.
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np

from ...errors import UnsupportedArchitecture
from ..common import (EXPERT_HPARAMS, MULTIMODAL_TEXT_RENAMES, U32, checked_layer_types, rope_metadata,
                      stacked_experts)
from ..spec import ArchSpec, Expected, HFConfig, HParam, LayerSize, SizeFacts, register, uniform_sizes

K = gguf.Keys
ARRAY = gguf.GGUFValueType.ARRAY
LAYER_TYPES = ("conv", "full_attention")

HPARAMS: tuple[HParam, ...] = (
    HParam(K.LLM.CONTEXT_LENGTH, ("max_position_embeddings",)),
    HParam(K.LLM.EMBEDDING_LENGTH, ("hidden_size",)),
    HParam(K.LLM.BLOCK_COUNT, ("num_hidden_layers",)),
    HParam(K.Attention.HEAD_COUNT, ("num_attention_heads",)),
    HParam(K.Attention.LAYERNORM_RMS_EPS, ("norm_eps",), float, 1e-5),
    HParam(K.ShortConv.L_CACHE, ("conv_L_cache",), int, 3),
)


def layer_types(config: HFConfig) -> list[str]:
    """'conv' or 'full_attention' per layer: ``layer_types``, else ``full_attn_idxs`` (LFM2 v1 configs); with
    neither, transformers makes every layer attention."""
    n_layers = int(config.get("num_hidden_layers"))
    types = config.get("layer_types", default=None)
    if types is None:
        idxs = config.get("full_attn_idxs", default=None)
        idxs = range(n_layers) if idxs is None else idxs
        types = ["full_attention" if i in idxs else "conv" for i in range(n_layers)]
    return checked_layer_types(types, n_layers, LAYER_TYPES, "LFM2")


def kv_heads_per_layer(config: HFConfig) -> list[int]:
    return [config.n_head_kv if t == "full_attention" else 0 for t in layer_types(config)]


def dense_ff(config: HFConfig) -> int:
    """The MLP width transformers' Lfm2MLP builds (LFM2-MoE's dense layers use intermediate_size as is)."""
    ff = int(config.get("block_ff_dim", "intermediate_size"))
    if config.architecture == "Lfm2MoeForCausalLM" or not config.get("block_auto_adjust_ff_dim", default=True):
        return ff
    ff = int(2 * ff / 3)
    multiplier = config.get("block_ffn_dim_multiplier", default=1.0)
    if multiplier is not None:
        ff = int(multiplier * ff)
    multiple = int(config.get("block_multiple_of", default=256))
    return multiple * ((ff + multiple - 1) // multiple)


def n_dense_layers(config: HFConfig) -> int:
    if config.architecture != "Lfm2MoeForCausalLM":
        return int(config.get("num_hidden_layers"))
    return int(config.get("num_dense_layers", default=2))


def _check(config: HFConfig) -> None:
    layer_types(config)
    rope_metadata(config, frozenset())  # raises for rope scaling llama.cpp's lfm2 graph does not apply
    if config.get("conv_bias", default=False):
        raise UnsupportedArchitecture("LFM2 with conv_bias=true is not supported",
                                      "llama.cpp's short-convolution block has no biases (released LFM2 "
                                      "models have none)")
    if config.head_dim * config.n_head != int(config.get("hidden_size")):
        raise UnsupportedArchitecture(f"LFM2 with head_dim {config.head_dim} x {config.n_head} heads != "
                                      f"hidden_size {config.get('hidden_size')} is not supported",
                                      "llama.cpp's lfm2 attention output is hidden x hidden")
    if int(config.get("conv_L_cache", default=3)) < 2:
        raise UnsupportedArchitecture("LFM2 with conv_L_cache < 2 is not supported",
                                      "llama.cpp keeps conv_L_cache - 1 tokens of convolution state")
    if config.architecture == "Lfm2MoeForCausalLM":
        if not config.get("norm_topk_prob", default=True):
            raise UnsupportedArchitecture("LFM2-MoE with norm_topk_prob=false is not supported",
                                          "llama.cpp's lfm2moe graph always renormalises the top-k weights")
        scale = float(config.get("routed_scaling_factor", default=1.0))
        if scale != 1.0:
            raise UnsupportedArchitecture(f"LFM2-MoE with routed_scaling_factor {scale:g} is not supported",
                                          "llama.cpp's lfm2moe graph does not scale the expert weights")


def _metadata(config: HFConfig):
    yield K.Attention.HEAD_COUNT_KV, kv_heads_per_layer(config), ARRAY
    yield K.LLM.FEED_FORWARD_LENGTH, dense_ff(config), U32
    yield from rope_metadata(config, frozenset())
    if config.architecture == "Lfm2MoeForCausalLM":  # (expert counts and size: EXPERT_HPARAMS)
        yield K.LLM.LEADING_DENSE_BLOCK_COUNT, n_dense_layers(config), U32
        yield K.LLM.EXPERT_GATING_FUNC, int(gguf.ExpertGatingFuncType.SIGMOID), U32


def _experts(config: HFConfig, i: int) -> dict[str, Expected]:
    """One MoE layer's router, selection bias and stacked experts (per-expert w1/w3/w2 or fused)."""
    n_expert, p = int(config.get("num_experts")), f"model.layers.{i}.feed_forward."
    bias = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.FFN_EXP_PROBS_B].format(bid=i) + ".bias"
    return {
        p + "gate.weight": Expected((n_expert, int(config.get("hidden_size")))),
        # llama.cpp reads the selection bias as exp_probs_b.bias (gguf-py's map says .weight).
        p + "expert_bias": Expected((n_expert,), optional=not config.get("use_expert_bias", default=True),
                                    gguf_name=bias),
        **stacked_experts(config, i, p + "experts", ("w1", "w3", "w2")),
    }


def _tensors(config: HFConfig) -> dict[str, Expected]:
    hidden, head_dim = int(config.get("hidden_size")), config.head_dim
    kv_rows, n_vocab = config.n_head_kv * head_dim, int(config.get("vocab_size"))
    taps, ff, n_dense = int(config.get("conv_L_cache", default=3)), dense_ff(config), n_dense_layers(config)
    tensors = {"model.embed_tokens.weight": Expected((n_vocab, hidden))}
    for i, kind in enumerate(layer_types(config)):
        p = f"model.layers.{i}."
        tensors[p + "operator_norm.weight"] = Expected((hidden,))
        if kind == "conv":
            tensors.update({
                p + "conv.in_proj.weight": Expected((3 * hidden, hidden)),
                p + "conv.conv.weight": Expected((hidden, 1, taps), out_shape=(hidden, taps)),
                p + "conv.out_proj.weight": Expected((hidden, hidden)),
            })
        else:
            tensors.update({
                p + "self_attn.q_proj.weight": Expected((hidden, hidden)),
                p + "self_attn.k_proj.weight": Expected((kv_rows, hidden)),
                p + "self_attn.v_proj.weight": Expected((kv_rows, hidden)),
                p + "self_attn.q_layernorm.weight": Expected((head_dim,)),
                p + "self_attn.k_layernorm.weight": Expected((head_dim,)),
                p + "self_attn.out_proj.weight": Expected((hidden, hidden)),
            })
        tensors[p + "ffn_norm.weight"] = Expected((hidden,))
        if i < n_dense:
            tensors.update({
                p + "feed_forward.w1.weight": Expected((ff, hidden)),
                p + "feed_forward.w3.weight": Expected((ff, hidden)),
                p + "feed_forward.w2.weight": Expected((hidden, ff)),
            })
        else:
            tensors.update(_experts(config, i))
    tensors["model.embedding_norm.weight"] = Expected((hidden,))
    tied = bool(config.get("tie_word_embeddings", default=True))
    # gguf-py's lfm2moe tensor list lacks the output; llama.cpp reads it (optional) for both architectures.
    tensors["lm_head.weight"] = Expected((n_vocab, hidden), optional=tied,
                                         gguf_name=gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight")
    return tensors


def _conv_taps(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    """HF's depthwise Conv1d weight [hidden, 1, L] -> llama.cpp's ssm_conv kernel [hidden, L] (same tap order)."""
    return weights.reshape(weights.shape[0], weights.shape[2])


def _zero_expert_bias(config: HFConfig):
    """llama.cpp requires the selection bias; a model without one routes as with zeros."""
    if config.architecture != "Lfm2MoeForCausalLM" or config.get("use_expert_bias", default=True):
        return []
    n_expert = int(config.get("num_experts"))
    name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.FFN_EXP_PROBS_B]
    return [(name.format(bid=i) + ".bias", np.zeros(n_expert, dtype=np.float32))
            for i in range(n_dense_layers(config), int(config.get("num_hidden_layers")))]


def _sizes(config: HFConfig) -> SizeFacts:
    """For ``edgepack fit``: convolution layers hold no KV cache but conv_L_cache - 1 inputs (hidden values
    each) per sequence, llama.cpp's recurrent state (hparams.n_embd_r)."""
    facts = uniform_sizes(config)
    state = int(config.get("hidden_size")) * (int(config.get("conv_L_cache", default=3)) - 1)
    conv = LayerSize(n_head=0, n_head_kv=0, head_dim_k=0, head_dim_v=0, state_floats=state)
    layers = tuple(conv if kind == "conv" else layer for layer, kind in zip(facts.layers, layer_types(config)))
    return dataclasses.replace(facts, layers=layers, n_ff=dense_ff(config))


def _spec(hf_class: str, arch: gguf.MODEL_ARCH, **extra) -> ArchSpec:
    return register(ArchSpec(
        hf_classes=(hf_class,),
        arch=arch,
        tensors=_tensors,
        metadata=_metadata,
        transforms={r"conv\.conv\.weight$": _conv_taps},
        # A tied checkpoint may still hold lm_head (the embedding again): it is written as the output then.
        ignore=(r"rotary_emb\.inv_freq$",),
        check=_check,
        sizes=_sizes,
        **extra,
    ))


LFM2 = _spec("Lfm2ForCausalLM", gguf.MODEL_ARCH.LFM2, hparams=HPARAMS)
LFM2MOE = _spec("Lfm2MoeForCausalLM", gguf.MODEL_ARCH.LFM2MOE, hparams=HPARAMS + EXPERT_HPARAMS,
                extra_tensors=_zero_expert_bias)

# LFM2-VL: the same decoder at model.language_model.* (language_model.model.* in 4.x layouts); the SigLIP2 tower
# and projector are convert --mmproj's.
LFM2VL_TEXT = register(dataclasses.replace(
    LFM2,
    hf_classes=("Lfm2VlForConditionalGeneration",),
    renames=MULTIMODAL_TEXT_RENAMES,
    dropped={r"^(model\.)?vision_tower\.": "vision tower",
             r"^(model\.)?multi_modal_projector\.": "multimodal projector"},
))
