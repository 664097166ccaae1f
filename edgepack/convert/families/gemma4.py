"""Gemma 4 (text): Gemma4ForCausalLM and the text model of Gemma4ForConditionalGeneration (E2B, E4B, 31B, 26B-A4B).

What llama.cpp's gemma4 graph does (src/models/gemma4.cpp, src/llama-model.cpp) and how the checkpoint maps:

* Norm weights multiply directly (Gemma4RMSNorm has no ``1 + w``): nothing is shifted. V is RMS-normed without
  a weight, Q and K with theirs; attention scores are not scaled (transformers' ``scaling = 1.0``).
* Global (full-attention) and local (sliding) layers have their own head size: ``attention.key_length`` is the
  global one (``global_head_dim``, or ``per_layer_config`` as transformers 5.x saves it), ``key_length_swa`` the
  local one. KV heads may differ per layer (``num_global_key_value_heads`` with ``attention_k_eq_v``): written as
  a per-layer array. With ``attention_k_eq_v`` global layers have no v_proj: V is the raw K, as llama.cpp does
  when the GGUF has no attn_v.
* Global layers use "proportional" rope: the first ``partial_rotary_factor`` of the head's frequencies rotate,
  with exponents over the whole head, the rest do not. llama.cpp rotates the whole head (rope.dimension_count =
  global head size) and divides each frequency by the ``rope_freqs`` tensor: 1 (or the rope factor) for the
  rotated ones, 1e30 (no rotation) for the others.
* KV sharing: the last ``num_kv_shared_layers`` layers compute no K/V. transformers reuses the last earlier layer
  of the same type; llama.cpp hard-codes the two layers before the first shared one (the one just before for
  global layers, the one before that for local ones), so a checkpoint whose layer types put them elsewhere is
  refused. k/v weights a checkpoint keeps for shared layers are left out (reported).
* Per-layer embeddings (E2B/E4B): a second token embedding of ``hidden_size_per_layer_input`` per layer, a
  projection of the main embedding, gated into each layer's output; ``use_double_wide_mlp`` doubles the FFN of
  the shared layers (``feed_forward_length`` per layer). Each layer's output is scaled by ``layer_scalar``.
* The tokenizer is llama.cpp's ``gemma4`` (BPE by merge ranks, see vocab.py).
* MoE (26B-A4B, ``enable_moe_block``): every layer keeps its dense MLP and adds ``num_experts`` GEGLU experts, both
  read from the attention output through their own norms (pre_feedforward_layernorm / _2, post_feedforward_layernorm
  _1 / _2), summed, then post_feedforward_layernorm. The router RMS-normalises the attention output without a
  weight, scales it by ``router.scale`` / sqrt(hidden), takes the softmax over all experts, keeps ``top_k_experts``
  renormalised, and weights each chosen expert by ``router.per_expert_scale``: llama.cpp's gemma4 graph does the same
  from ``ffn_gate_inp.scale`` and ``ffn_down_exps.scale``. The fused experts.gate_up_proj is written as ffn_gate_exps
  and ffn_up_exps, expert by expert (common.stacked_experts).
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np

from ...errors import UnsupportedArchitecture
from ..common import F32, MULTIMODAL_TEXT_RENAMES, RMS_NORM_EPS, U32, stacked_experts
from ..spec import ArchSpec, Expected, HFConfig, HParam, LayerSize, SizeFacts, register

K = gguf.Keys
ARRAY = gguf.GGUFValueType.ARRAY
SLIDING, FULL = "sliding_attention", "full_attention"
NO_ROTATION = 1e30  # a frequency divisor that leaves a dimension unrotated (cos 1, sin 0)

# transformers' Gemma4TextConfig defaults (config.json leaves out what equals them).
GEMMA4_TEXT_DEFAULTS = {
    "vocab_size": 262_144, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 30,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "global_head_dim": 512,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "sliding_window": 512, "vocab_size_per_layer_input": 262_144,
    "hidden_size_per_layer_input": 256, "attention_k_eq_v": False, "num_kv_shared_layers": 0,
    "enable_moe_block": False, "use_double_wide_mlp": False, "attention_bias": False,
    "num_experts": None, "top_k_experts": None, "moe_intermediate_size": None,
}
DEFAULT_ROPE = {SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
                FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0}}


@dataclasses.dataclass(frozen=True)
class Layer:
    kind: str  # SLIDING or FULL
    head_dim: int
    n_head_kv: int
    shared_kv: bool  # reuses an earlier layer's K/V (no k/v weights of its own)
    v_is_k: bool  # attention_k_eq_v on a global layer: no v_proj
    n_ff: int


def layer_types(config: HFConfig) -> list[str]:
    """Per layer: sliding or full attention. transformers' default is 5 local + 1 global, and it makes the last
    layer global whatever the config says."""
    n_layer = int(config.get("num_hidden_layers"))
    types = config.get("layer_types", default=None)
    if types is None:
        types = [SLIDING if (i + 1) % 6 else FULL for i in range(n_layer)]
    if len(types) != n_layer or set(types) - {SLIDING, FULL}:
        raise UnsupportedArchitecture(f"layer_types {types!r} is not supported for Gemma 4",
                                      "expected one of sliding_attention/full_attention per layer")
    return list(types[:-1]) + [FULL]


def layers(config: HFConfig) -> list[Layer]:
    types = layer_types(config)
    n_shared = int(config.get("num_kv_shared_layers"))
    first_shared = len(types) - n_shared
    per_layer = config.get("per_layer_config", default=None)
    k_eq_v = bool(config.get("attention_k_eq_v"))
    n_ff = int(config.get("intermediate_size"))
    double_wide = bool(config.get("use_double_wide_mlp"))
    out = []
    for i, kind in enumerate(types):
        head_dim, n_kv = config.head_dim, config.n_head_kv
        if per_layer is not None:  # as transformers 5.x saves it: overrides by layer index
            override = per_layer.get(str(i)) or per_layer.get(i) or {}
            head_dim = int(override.get("head_dim", head_dim))
            n_kv = int(override.get("num_key_value_heads", n_kv))
        elif kind == FULL:  # as the Hub's configs say it
            head_dim = int(config.get("global_head_dim"))
            global_kv = config.get("num_global_key_value_heads", default=None)
            if k_eq_v and global_kv is not None:
                n_kv = int(global_kv)
        shared = i >= first_shared
        out.append(Layer(kind, head_dim, n_kv, shared, k_eq_v and kind == FULL,
                         n_ff * 2 if double_wide and shared else n_ff))
    return out


def rope(config: HFConfig) -> tuple[dict, dict]:
    """(global, local) rope parameters."""
    params = config.text.get("rope_parameters") or DEFAULT_ROPE
    return dict(params.get(FULL) or DEFAULT_ROPE[FULL]), dict(params.get(SLIDING) or DEFAULT_ROPE[SLIDING])


def _one(values: set, what: str) -> int:
    if len(values) != 1:
        raise UnsupportedArchitecture(f"Gemma 4 with {what} {sorted(values)} is not supported",
                                      "llama.cpp has one head size for global and one for local layers")
    return values.pop()


def head_dims(config: HFConfig) -> tuple[int, int]:
    """(global, local) head size."""
    ls = layers(config)
    full = _one({x.head_dim for x in ls if x.kind == FULL}, "global head sizes")
    local = {x.head_dim for x in ls if x.kind == SLIDING}
    return full, _one(local, "local head sizes") if local else config.head_dim


def _check(config: HFConfig) -> None:
    act = config.get("hidden_activation", "hidden_act")
    if act != "gelu_pytorch_tanh":
        raise UnsupportedArchitecture(f"activation {act!r} is not supported for Gemma 4",
                                      "llama.cpp's gemma4 graph uses the tanh approximation of GELU")
    if config.get("attention_bias"):
        raise UnsupportedArchitecture("Gemma 4 with attention_bias is not supported",
                                      "llama.cpp's gemma4 graph has no attention biases")
    if config.get("enable_moe_block"):
        for key in ("num_experts", "top_k_experts", "moe_intermediate_size"):
            if not config.get(key, default=None):
                raise UnsupportedArchitecture(f"Gemma 4 with enable_moe_block but no {key} is not supported",
                                              "config.json of a Gemma 4 MoE checkpoint names its experts")
    if config.get("use_bidirectional_attention", default=None) == "all":
        raise UnsupportedArchitecture("Gemma 4 with use_bidirectional_attention 'all' is not supported",
                                      "llama.cpp's gemma4 graph attends causally to text")
    ple = int(config.get("hidden_size_per_layer_input") or 0)
    if ple and int(config.get("vocab_size_per_layer_input")) != int(config.get("vocab_size")):
        raise UnsupportedArchitecture("Gemma 4 with vocab_size_per_layer_input != vocab_size is not supported",
                                      "llama.cpp reads one per-layer embedding row per token")
    full, local = rope(config)
    if full.get("rope_type") not in ("proportional", "default"):
        raise UnsupportedArchitecture(f"rope type {full.get('rope_type')!r} on Gemma 4's global layers is not "
                                      "supported", "supported: proportional, default")
    if local.get("rope_type") not in ("default", None):
        raise UnsupportedArchitecture(f"rope type {local.get('rope_type')!r} on Gemma 4's local layers is not "
                                      "supported", "supported: default")
    head_dims(config)
    _check_kv_sharing(config)


def _check_kv_sharing(config: HFConfig) -> None:
    """llama.cpp (llama-model.cpp, the gemma4 layer_reuse_cb) takes the K/V of a shared global layer from the layer
    just before the first shared one and of a shared local layer from the one before that; transformers takes the
    last unshared layer of the same type. Both must be the same layers."""
    ls = layers(config)
    first_shared = next((i for i, x in enumerate(ls) if x.shared_kv), None)
    if first_shared is None:
        return
    if first_shared < 2:
        raise UnsupportedArchitecture(f"Gemma 4 with num_kv_shared_layers {len(ls) - first_shared} of {len(ls)} "
                                      "layers is not supported", "llama.cpp needs two layers with their own K/V")
    for kind, source in ((FULL, first_shared - 1), (SLIDING, first_shared - 2)):
        if any(x.kind == kind for x in ls[first_shared:]) and ls[source].kind != kind:
            raise UnsupportedArchitecture(
                f"Gemma 4 KV sharing that llama.cpp cannot reproduce: shared {kind} layers would read layer "
                f"{source}, which is not {kind}",
                "llama.cpp reuses the K/V of the layer before the first shared one (global) and the one before that "
                "(local); layer_types must end the unshared layers with local, global")


def _tensors(config: HFConfig) -> dict[str, Expected]:
    hidden, n_vocab, n_head = int(config.get("hidden_size")), int(config.get("vocab_size")), config.n_head
    ls = layers(config)
    ple = int(config.get("hidden_size_per_layer_input") or 0)
    tensors = {"model.embed_tokens.weight": Expected((n_vocab, hidden))}
    if ple:
        n_ple = ple * len(ls)
        tensors.update({
            "model.embed_tokens_per_layer.weight": Expected((int(config.get("vocab_size_per_layer_input")), n_ple)),
            "model.per_layer_model_projection.weight": Expected((n_ple, hidden)),
            "model.per_layer_projection_norm.weight": Expected((ple,)),
        })
    for i, layer in enumerate(ls):
        p, hd = f"model.layers.{i}.", layer.head_dim
        tensors[p + "input_layernorm.weight"] = Expected((hidden,))
        tensors[p + "self_attn.q_proj.weight"] = Expected((n_head * hd, hidden))
        tensors[p + "self_attn.q_norm.weight"] = Expected((hd,))
        if not layer.shared_kv:
            tensors[p + "self_attn.k_proj.weight"] = Expected((layer.n_head_kv * hd, hidden))
            if not layer.v_is_k:
                tensors[p + "self_attn.v_proj.weight"] = Expected((layer.n_head_kv * hd, hidden))
            tensors[p + "self_attn.k_norm.weight"] = Expected((hd,))
        tensors[p + "self_attn.o_proj.weight"] = Expected((hidden, n_head * hd))
        for norm in ("post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            tensors[f"{p}{norm}.weight"] = Expected((hidden,))
        tensors[p + "mlp.gate_proj.weight"] = Expected((layer.n_ff, hidden))
        tensors[p + "mlp.up_proj.weight"] = Expected((layer.n_ff, hidden))
        tensors[p + "mlp.down_proj.weight"] = Expected((hidden, layer.n_ff))
        if config.get("enable_moe_block"):
            tensors.update(_moe_tensors(config, i))
        if ple:
            tensors[p + "per_layer_input_gate.weight"] = Expected((ple, hidden))
            tensors[p + "per_layer_projection.weight"] = Expected((hidden, ple))
            tensors[p + "post_per_layer_input_norm.weight"] = Expected((hidden,))
        tensors[p + "layer_scalar.weight"] = Expected((1,))
    tensors["model.norm.weight"] = Expected((hidden,))
    tensors["lm_head.weight"] = Expected((n_vocab, hidden), optional=True)
    return tensors


def _moe_tensors(config: HFConfig, i: int) -> dict[str, Expected]:
    """Layer i's router, expert norms and stacked experts (see the module docstring)."""
    hidden, n_expert, p = int(config.get("hidden_size")), int(config.get("num_experts")), f"model.layers.{i}."
    router, down = (gguf.TENSOR_NAMES[kind].format(bid=i) for kind in (gguf.MODEL_TENSOR.FFN_GATE_INP,
                                                                       gguf.MODEL_TENSOR.FFN_DOWN_EXP))
    tensors = {
        p + "router.proj.weight": Expected((n_expert, hidden)),
        p + "router.scale": Expected((hidden,), gguf_name=router + ".scale"),
        p + "router.per_expert_scale": Expected((n_expert,), gguf_name=down + ".scale"),
    }
    for norm in ("pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2"):
        tensors[f"{p}{norm}.weight"] = Expected((hidden,))
    tensors.update(stacked_experts(config, i, p + "experts"))
    return tensors


def _per_layer(values: list[int]) -> tuple[object, gguf.GGUFValueType]:
    """One number when every layer has it, else the per-layer array llama.cpp also accepts."""
    return (values[0], U32) if len(set(values)) == 1 else (values, ARRAY)


def _metadata(config: HFConfig):
    ls = layers(config)
    full_dim, local_dim = head_dims(config)
    full, local = rope(config)
    yield (K.LLM.FEED_FORWARD_LENGTH, *_per_layer([x.n_ff for x in ls]))
    yield (K.Attention.HEAD_COUNT_KV, *_per_layer([x.n_head_kv for x in ls]))
    yield K.Attention.KEY_LENGTH, full_dim, U32
    yield K.Attention.VALUE_LENGTH, full_dim, U32
    yield K.Attention.KEY_LENGTH_SWA, local_dim, U32
    yield K.Attention.VALUE_LENGTH_SWA, local_dim, U32
    yield K.Rope.FREQ_BASE, float(full.get("rope_theta", 1_000_000.0)), F32
    yield K.Rope.FREQ_BASE_SWA, float(local.get("rope_theta", 10_000.0)), F32
    # Global layers rotate the whole head through rope_freqs (see the module docstring); transformers' default
    # rope on local layers rotates the whole head too, whatever partial_rotary_factor says.
    yield K.Rope.DIMENSION_COUNT, full_dim, U32
    yield K.Rope.DIMENSION_COUNT_SWA, local_dim, U32
    yield K.Attention.SLIDING_WINDOW, int(config.get("sliding_window")), U32
    yield K.Attention.SLIDING_WINDOW_PATTERN, [x.kind == SLIDING for x in ls], ARRAY
    yield K.Attention.SHARED_KV_LAYERS, sum(x.shared_kv for x in ls), U32
    yield K.LLM.EMBD_LENGTH_PER_LAYER_INP, int(config.get("hidden_size_per_layer_input") or 0), U32
    if config.get("enable_moe_block"):
        yield K.LLM.EXPERT_COUNT, int(config.get("num_experts")), U32
        yield K.LLM.EXPERT_USED_COUNT, int(config.get("top_k_experts")), U32
        yield K.LLM.EXPERT_FEED_FORWARD_LENGTH, int(config.get("moe_intermediate_size")), U32
    if config.get("final_logit_softcapping", default=None):
        yield K.LLM.FINAL_LOGIT_SOFTCAPPING, float(config.get("final_logit_softcapping")), F32


def rope_freqs(config: HFConfig) -> list[tuple[str, np.ndarray]]:
    """The frequency divisors of the global layers: transformers' proportional rope rotates the first
    int(partial_rotary_factor * head_dim // 2) frequencies (divided by the rope factor) and leaves the rest."""
    full_dim, _ = head_dims(config)
    params, _ = rope(config)
    n_freq = full_dim // 2
    rotated = n_freq
    if params.get("rope_type") == "proportional":
        rotated = int(float(params.get("partial_rotary_factor", 1.0)) * full_dim // 2)
    factor = float(params.get("factor", 1.0))
    divisors = np.full(n_freq, NO_ROTATION, dtype=np.float32)
    divisors[:rotated] = factor
    return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", divisors)]


def _sizes(config: HFConfig) -> SizeFacts:
    """For ``edgepack fit``: each layer's own KV heads and head size, local layers' caches limited to the window,
    KV-shared layers without a cache; the per-layer embedding table is read one row per token."""
    window, each = int(config.get("sliding_window")), layers(config)
    sizes = tuple(LayerSize(config.n_head, x.n_head_kv, x.head_dim, x.head_dim,
                            sliding_window=window if x.kind == SLIDING else 0, kv_shared=x.shared_kv) for x in each)
    moe = bool(config.get("enable_moe_block"))
    return SizeFacts(layers=sizes, n_embd=int(config.get("hidden_size")), n_vocab=int(config.get("vocab_size")),
                     n_ff=max([x.n_ff for x in each] + [int(config.get("moe_intermediate_size")) if moe else 0]),
                     n_ctx_train=int(config.get("max_position_embeddings")),
                     n_expert=int(config.get("num_experts")) if moe else 0,
                     n_expert_used=int(config.get("top_k_experts")) if moe else 0,
                     lookup_tensors=("token_embd.weight", "per_layer_token_embd.weight"))


def shared_kv_weights(shared: list[int]) -> dict[str, str]:
    """The k/v weights a checkpoint may keep for its KV-shared layers (Gemma 3n and 4), which llama.cpp never
    reads: an ArchSpec.dropped part."""
    if not shared:
        return {}
    return {rf"^model\.layers\.({'|'.join(map(str, shared))})\.self_attn\.(k_proj|v_proj|k_norm|v_norm)\.":
            "k/v weights of KV-shared layers (unused)"}


def _shared_kv_weights(config: HFConfig) -> dict[str, str]:
    return shared_kv_weights([i for i, x in enumerate(layers(config)) if x.shared_kv])


GEMMA4 = register(ArchSpec(
    hf_classes=("Gemma4ForCausalLM",),
    arch=gguf.MODEL_ARCH.GEMMA4,
    hparams=(HParam(K.LLM.CONTEXT_LENGTH, ("max_position_embeddings",)),
             HParam(K.LLM.EMBEDDING_LENGTH, ("hidden_size",)),
             HParam(K.LLM.BLOCK_COUNT, ("num_hidden_layers",)),
             HParam(K.Attention.HEAD_COUNT, ("num_attention_heads",)),
             RMS_NORM_EPS),
    tensors=_tensors,
    metadata=_metadata,
    extra_tensors=rope_freqs,
    # layer_scalar is a buffer saved without ".weight"; gguf's name map wants one.
    renames=((r"\.layer_scalar$", ".layer_scalar.weight"),),
    dropped=_shared_kv_weights,
    check=_check,
    tokenizer_model="gemma4",
    defaults=GEMMA4_TEXT_DEFAULTS,
    sizes=_sizes,
))

# The towers of the multimodal Gemma 3n and Gemma 4 checkpoints: vision and audio, each with its embedder.
GEMMA_TOWERS = {r"^model\.(vision_tower|embed_vision)\.": "vision tower",
                r"^model\.(audio_tower|embed_audio)\.": "audio tower"}

GEMMA4_MULTIMODAL = register(dataclasses.replace(
    GEMMA4,
    hf_classes=("Gemma4ForConditionalGeneration",),
    renames=MULTIMODAL_TEXT_RENAMES + GEMMA4.renames,
    dropped=lambda config: {**GEMMA_TOWERS, **_shared_kv_weights(config)},
))
