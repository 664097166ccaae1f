"""Gemma 3n (text): Gemma3nForCausalLM and the text model of Gemma3nForConditionalGeneration (E2B, E4B).

llama.cpp's gemma3n graph (src/models/gemma3n.cpp) reads little of the geometry from the GGUF and hard-codes the
rest to the released models' values; a checkpoint is converted only when it has exactly those, else refused:

* AltUp with 4 streams, the first one active, its corrected output scaled (``altup_num_inputs`` 4,
  ``altup_active_idx`` 0, ``altup_correct_scale``); LAuReL of rank 64; per-layer embeddings of 256 per layer.
* Layers 0-19 compute K/V, every later layer reuses the K/V of layer 19 (global layers) or 18 (local ones):
  ``num_hidden_layers - num_kv_shared_layers`` must be 20 (or, without sharing, at most 20 layers), with layer 19
  global and layer 18 local, which is where transformers takes them from too (the last unshared layer of a type).
* Activation sparsity on layers 0-9 at 0.95 (the gate's Gaussian top-k cut at mean + 1.645 std), none after.
* Final logits soft-capped at 30.

Tensors: the AltUp (un)embedding projections, three per model in the checkpoint, are stacked into one tensor
each. KV-shared layers compute no K/V, but llama.cpp's loader wants attn_k/attn_v/attn_k_norm for every layer:
they are written as copies of the weights of the layer they read from (never used), so checkpoints saved by
transformers 5 (without them) and those on the Hub (with their own, then left out and reported) convert alike.
The per-layer embedding table has ``vocab_size_per_layer_input`` rows; transformers looks up token 0's row for any
token beyond it, so the table is padded to the vocabulary with copies of row 0. Norm weights multiply directly.
"""

from __future__ import annotations

import dataclasses

import gguf

from ...errors import UnsupportedArchitecture
from ..common import DECODER_HPARAMS, F32, MULTIMODAL_TEXT_RENAMES, RMS_NORM_EPS, U32
from ..spec import ArchSpec, Expected, HFConfig, LayerSize, Part, SizeFacts, register
from .gemma4 import GEMMA_TOWERS, shared_kv_weights

K = gguf.Keys
T = gguf.MODEL_TENSOR
ARRAY = gguf.GGUFValueType.ARRAY
SLIDING, FULL = "sliding_attention", "full_attention"

# What llama.cpp hard-codes (llama-hparams.h defaults, src/models/gemma3n.cpp, models.h).
LLAMA_CPP = {"altup_num_inputs": 4, "altup_active_idx": 0, "laurel_rank": 64, "hidden_size_per_layer_input": 256,
             "final_logit_softcapping": 30.0}
KV_LAYERS = 20  # hparams.n_layer_kv_from_start
SPARSE_LAYERS, SPARSITY = 10, 0.95  # n_layer_sparsity, and f_sparsity_std_mul = icdf(0.95)

# transformers' Gemma3nTextConfig defaults (config.json leaves out what equals them).
GEMMA3N_TEXT_DEFAULTS = {
    "vocab_size": 262_400, "hidden_size": 2048, "intermediate_size": 16_384, "num_hidden_layers": 35,
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 32_768, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "sliding_window": 512,
    "final_logit_softcapping": 30.0, "vocab_size_per_layer_input": 262_144, "hidden_size_per_layer_input": 256,
    "altup_active_idx": 0, "altup_correct_scale": True, "altup_num_inputs": 4, "num_kv_shared_layers": 15,
    "laurel_rank": 64, "attention_bias": False,
}


def layer_types(config: HFConfig) -> list[str]:
    n_layer = int(config.get("num_hidden_layers"))
    types = config.get("layer_types", default=None) or [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(n_layer)]
    if len(types) != n_layer or set(types) - {SLIDING, FULL}:
        raise UnsupportedArchitecture(f"layer_types {types!r} is not supported for Gemma 3n",
                                      "expected one of sliding_attention/full_attention per layer")
    return list(types)


def _n_ff(config: HFConfig) -> int:
    sizes = config.get("intermediate_size")
    sizes = sizes if isinstance(sizes, list) else [sizes]
    if len(set(sizes)) != 1:
        raise UnsupportedArchitecture("Gemma 3n with per-layer intermediate sizes is not supported",
                                      "llama.cpp's gemma3n graph uses one FFN size for every layer")
    return int(sizes[0])


def _first_shared(config: HFConfig) -> int:
    n_layer = int(config.get("num_hidden_layers"))
    return n_layer - int(config.get("num_kv_shared_layers"))


def _refuse(setting: str, hint: str) -> None:
    raise UnsupportedArchitecture(f"Gemma 3n with {setting} is not supported", hint)


def _check(config: HFConfig) -> None:
    for key, value in LLAMA_CPP.items():
        if config.get(key) != value:
            _refuse(f"{key} {config.get(key)!r}", f"llama.cpp's gemma3n graph hard-codes {key} = {value!r}")
    if not config.get("altup_correct_scale"):
        _refuse("altup_correct_scale false", "llama.cpp's gemma3n graph always scales the corrected output")
    act = config.get("hidden_activation", "hidden_act")
    if act != "gelu_pytorch_tanh":
        _refuse(f"activation {act!r}", "llama.cpp's gemma3n graph uses the tanh approximation of GELU")
    if config.get("attention_bias"):
        _refuse("attention_bias", "llama.cpp's gemma3n graph has no attention biases")
    _n_ff(config)
    types, n_layer = layer_types(config), int(config.get("num_hidden_layers"))
    sparsity = config.get("activation_sparsity_pattern", default=None)
    if sparsity is None:  # transformers' default
        sparsity = [SPARSITY] * SPARSE_LAYERS + [0.0] * (n_layer - SPARSE_LAYERS) if n_layer > 10 else [0.0] * n_layer
    llama_cpp = [SPARSITY if i < SPARSE_LAYERS else 0.0 for i in range(n_layer)]
    if [float(s) for s in sparsity] != llama_cpp:
        _refuse(f"activation_sparsity_pattern {sparsity}",
                f"llama.cpp's gemma3n graph makes layers 0-{SPARSE_LAYERS - 1} sparse at {SPARSITY} and no others")
    first_shared = _first_shared(config)
    if first_shared != n_layer and first_shared != KV_LAYERS or first_shared == n_layer and n_layer > KV_LAYERS:
        _refuse(f"{n_layer - first_shared} KV-shared layers of {n_layer}",
                f"llama.cpp's gemma3n graph computes K/V on the first {KV_LAYERS} layers only, and shares it after")
    if first_shared < n_layer and (types[KV_LAYERS - 1], types[KV_LAYERS - 2]) != (FULL, SLIDING):
        _refuse(f"layer types {types[KV_LAYERS - 2]}/{types[KV_LAYERS - 1]} on layers 18/19",
                "llama.cpp's KV-shared layers read layer 19 (global) and 18 (local): they must be of those types")
    params = config.text.get("rope_parameters") or {}
    by_kind = [params.get(kind) or {} for kind in (FULL, SLIDING)] if FULL in params or SLIDING in params else [
        config.rope_parameters]
    for rope_type in {p.get("rope_type") for p in by_kind} - {None, "default"}:
        _refuse(f"rope type {rope_type!r}", "llama.cpp's gemma3n graph uses plain rope")
    vocab, per_layer_vocab = int(config.get("vocab_size")), int(config.get("vocab_size_per_layer_input"))
    if per_layer_vocab > vocab:
        _refuse("vocab_size_per_layer_input > vocab_size", "the checkpoint's sizes do not fit together")


def _rope_thetas(config: HFConfig) -> tuple[float, float]:
    params = config.text.get("rope_parameters") or {}
    if FULL in params or SLIDING in params:
        return (float((params.get(FULL) or {}).get("rope_theta", 1_000_000.0)),
                float((params.get(SLIDING) or {}).get("rope_theta", 10_000.0)))
    return (float(config.rope_parameters.get("rope_theta", 1_000_000.0)),
            float(config.get("rope_local_base_freq", default=10_000.0)))


def kv_source(config: HFConfig, i: int) -> int:
    """The layer whose K/V layer ``i`` attends to (llama.cpp's layer_reuse_cb for gemma3n)."""
    if i < _first_shared(config):
        return i
    return KV_LAYERS - 2 if layer_types(config)[i] == SLIDING else KV_LAYERS - 1


def _tensors(config: HFConfig) -> dict[str, Expected]:
    hidden, n_vocab, n_head = int(config.get("hidden_size")), int(config.get("vocab_size")), config.n_head
    head_dim, kv_rows, n_ff = config.head_dim, config.n_head_kv * config.head_dim, _n_ff(config)
    n_layer, ple = int(config.get("num_hidden_layers")), int(config.get("hidden_size_per_layer_input"))
    per_layer_vocab = int(config.get("vocab_size_per_layer_input"))
    n_altup, rank = int(config.get("altup_num_inputs")), int(config.get("laurel_rank"))
    names = gguf.TENSOR_NAMES
    table = "model.embed_tokens_per_layer.weight"
    table_shape = (per_layer_vocab, n_layer * ple)
    tensors = {
        "model.embed_tokens.weight": Expected((n_vocab, hidden)),
        # padded with token 0's row, which transformers uses for any token beyond the table
        table: Expected((n_vocab, n_layer * ple), gguf_name=names[T.PER_LAYER_TOKEN_EMBD] + ".weight", forms=((
            (Part(table, table_shape),) + (Part(table, table_shape, (0,)),) * (n_vocab - per_layer_vocab)),)),
        "model.per_layer_model_projection.weight": Expected((n_layer * ple, hidden)),
        "model.per_layer_projection_norm.weight": Expected((ple,)),
    }
    for stack, kind in (("altup_projections", T.ALTUP_PROJ), ("altup_unembed_projections", T.ALTUP_UNEMBD_PROJ)):
        parts = tuple(Part(f"model.{stack}.{j}.weight", (hidden, hidden)) for j in range(n_altup - 1))
        tensors[f"model.{stack}.weight"] = Expected((n_altup - 1, hidden, hidden), forms=(parts,),
                                                    gguf_name=names[kind] + ".weight")
    for i in range(n_layer):
        p = f"model.layers.{i}."
        source = f"model.layers.{kv_source(config, i)}.self_attn."
        tensors[p + "input_layernorm.weight"] = Expected((hidden,))
        tensors[p + "self_attn.q_proj.weight"] = Expected((n_head * head_dim, hidden))
        tensors[p + "self_attn.q_norm.weight"] = Expected((head_dim,))
        for proj, kind, shape in (("k_proj", T.ATTN_K, (kv_rows, hidden)), ("v_proj", T.ATTN_V, (kv_rows, hidden)),
                                  ("k_norm", T.ATTN_K_NORM, (head_dim,))):
            if source == p + "self_attn.":
                tensors[f"{p}self_attn.{proj}.weight"] = Expected(shape)
            else:  # placeholder for a KV-shared layer: its source layer's weights (never read, see docstring)
                tensors[f"{p}self_attn.{proj}.shared"] = Expected(shape, forms=((Part(f"{source}{proj}.weight",
                                                                                      shape),),),
                                                                  gguf_name=names[kind].format(bid=i) + ".weight")
        tensors[p + "self_attn.o_proj.weight"] = Expected((hidden, n_head * head_dim))
        for norm in ("post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
                     "post_per_layer_input_norm", "altup.router_norm", "laurel.post_laurel_norm"):
            tensors[f"{p}{norm}.weight"] = Expected((hidden,))
        tensors.update({
            p + "mlp.gate_proj.weight": Expected((n_ff, hidden)),
            p + "mlp.up_proj.weight": Expected((n_ff, hidden)),
            p + "mlp.down_proj.weight": Expected((hidden, n_ff)),
            p + "per_layer_input_gate.weight": Expected((ple, hidden)),
            p + "per_layer_projection.weight": Expected((hidden, ple)),
            p + "altup.correct_output_scale.weight": Expected((hidden,)),
            p + "altup.correction_coefs.weight": Expected((n_altup, n_altup)),
            p + "altup.prediction_coefs.weight": Expected((n_altup * n_altup, n_altup)),
            p + "altup.modality_router.weight": Expected((n_altup, hidden)),
            p + "laurel.linear_left.weight": Expected((rank, hidden)),
            p + "laurel.linear_right.weight": Expected((hidden, rank)),
        })
    tensors["model.norm.weight"] = Expected((hidden,))
    tensors["lm_head.weight"] = Expected((n_vocab, hidden), optional=True)
    return tensors


def _metadata(config: HFConfig):
    full_theta, local_theta = _rope_thetas(config)
    types = layer_types(config)
    yield K.LLM.FEED_FORWARD_LENGTH, _n_ff(config), U32
    yield K.Attention.KEY_LENGTH, config.head_dim, U32
    yield K.Attention.VALUE_LENGTH, config.head_dim, U32
    yield K.Rope.FREQ_BASE, full_theta, F32
    yield K.Rope.FREQ_BASE_SWA, local_theta, F32
    yield K.Rope.DIMENSION_COUNT, config.head_dim, U32
    yield K.Attention.SLIDING_WINDOW, int(config.get("sliding_window")), U32
    yield K.Attention.SLIDING_WINDOW_PATTERN, [t == SLIDING for t in types], ARRAY
    # Not read by llama.cpp (it hard-codes them, see the module docstring); written for readers such as fit.
    yield K.Attention.SHARED_KV_LAYERS, len(types) - _first_shared(config), U32
    yield K.LLM.EMBD_LENGTH_PER_LAYER_INP, int(config.get("hidden_size_per_layer_input")), U32
    yield K.LLM.FINAL_LOGIT_SOFTCAPPING, float(config.get("final_logit_softcapping")), F32


def _sizes(config: HFConfig) -> SizeFacts:
    """For ``edgepack fit``: layers from the first shared one on hold no KV cache, local layers' caches are
    limited to the window; the per-layer embedding table is read one row per token."""
    window, first_shared = int(config.get("sliding_window")), _first_shared(config)
    layers = tuple(LayerSize(config.n_head, config.n_head_kv, config.head_dim, config.head_dim,
                             sliding_window=window if kind == SLIDING else 0, kv_shared=i >= first_shared)
                   for i, kind in enumerate(layer_types(config)))
    return SizeFacts(layers=layers, n_embd=int(config.get("hidden_size")), n_vocab=int(config.get("vocab_size")),
                     n_ff=_n_ff(config), n_ctx_train=int(config.get("max_position_embeddings")),
                     lookup_tensors=("token_embd.weight", "per_layer_token_embd.weight"))


def _shared_kv_weights(config: HFConfig) -> dict[str, str]:
    return shared_kv_weights(list(range(_first_shared(config), int(config.get("num_hidden_layers")))))


GEMMA3N = register(ArchSpec(
    hf_classes=("Gemma3nForCausalLM",),
    arch=gguf.MODEL_ARCH.GEMMA3N,
    hparams=tuple(h for h in DECODER_HPARAMS if h.key != K.LLM.FEED_FORWARD_LENGTH) + (RMS_NORM_EPS,),
    tensors=_tensors,
    metadata=_metadata,
    # correct_output_scale is a parameter without ".weight"; gguf's name map wants one.
    renames=((r"\.correct_output_scale$", ".correct_output_scale.weight"),),
    dropped=_shared_kv_weights,
    check=_check,
    defaults=GEMMA3N_TEXT_DEFAULTS,
    sizes=_sizes,
))

GEMMA3N_MULTIMODAL = register(dataclasses.replace(
    GEMMA3N,
    hf_classes=("Gemma3nForConditionalGeneration",),
    renames=MULTIMODAL_TEXT_RENAMES + GEMMA3N.renames,
    dropped=lambda config: {**GEMMA_TOWERS, **_shared_kv_weights(config)},
))
