"""Building blocks most families share: the standard hyperparameter table, rope handling, Q/K permutation.

Family modules combine these; they are kept apart from the core so that the core never learns about a family.
"""

from __future__ import annotations

import math

import gguf
import numpy as np

from ..errors import UnsupportedArchitecture
from .floats import bf16_to_f32
from .spec import Expected, HFConfig, HParam, Metadata, Part

K = gguf.Keys
F32 = gguf.GGUFValueType.FLOAT32
U32 = gguf.GGUFValueType.UINT32
STR = gguf.GGUFValueType.STRING

# The hyperparameters every decoder-only transformer in llama.cpp reads.
DECODER_HPARAMS: tuple[HParam, ...] = (
    HParam(K.LLM.CONTEXT_LENGTH, ("max_position_embeddings", "n_positions", "n_ctx")),
    HParam(K.LLM.EMBEDDING_LENGTH, ("hidden_size", "n_embd")),
    HParam(K.LLM.BLOCK_COUNT, ("num_hidden_layers", "n_layer")),
    HParam(K.LLM.FEED_FORWARD_LENGTH, ("intermediate_size", "n_inner")),
    HParam(K.Attention.HEAD_COUNT, ("num_attention_heads", "n_head")),
    HParam(K.Attention.HEAD_COUNT_KV, ("num_key_value_heads", "num_attention_heads", "n_head")),
)
RMS_NORM_EPS = HParam(K.Attention.LAYERNORM_RMS_EPS, ("rms_norm_eps",), float)


def head_size_metadata(config: HFConfig) -> list[Metadata]:
    """key/value length only when head_dim is set apart from hidden_size / n_head (e.g. Gemma, Qwen3)."""
    if config.head_dim * config.n_head == int(config.get("hidden_size", "n_embd")):
        return []
    return [(K.Attention.KEY_LENGTH, config.head_dim, U32), (K.Attention.VALUE_LENGTH, config.head_dim, U32)]


# Where transformers saves the text decoder of a multimodal *ForConditionalGeneration model: 4.x (and the Hub
# checkpoints written with it) as language_model.model.* and language_model.lm_head.*, 5.x as
# model.language_model.* and lm_head.*. ArchSpec.renames with these gives the text-only class's names.
MULTIMODAL_TEXT_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^language_model\.model\.", "model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^model\.language_model\.", "model."),
)


# rope types whose HF implementation changes nothing but the base frequency: safe to carry as plain rope.
PLAIN_ROPE_TYPES = {None, "default"}


def rope_metadata(config: HFConfig, supported: frozenset = frozenset({"linear", "llama3"}),
                  yarn_log_multiplier: bool = False) -> list[Metadata]:
    """rope.freq_base, rope.dimension_count and scaling keys; unknown scaling is an error, never ignored."""
    params = config.rope_parameters
    out: list[Metadata] = [
        (K.Rope.FREQ_BASE, float(params.get("rope_theta", 10000.0)), F32),
        (K.Rope.DIMENSION_COUNT, config.rotary_dims, U32),
    ]
    rope_type = params.get("rope_type")
    if rope_type in PLAIN_ROPE_TYPES:
        return out
    if rope_type not in supported:
        raise UnsupportedArchitecture(
            f"rope scaling type {rope_type!r} is not supported for {config.architecture}",
            f"supported rope scaling here: {', '.join(sorted(supported))}; remove rope_scaling from config.json "
            "only if you accept a model that differs from the original")
    if rope_type == "linear":
        out += [(K.Rope.SCALING_TYPE, "linear", STR), (K.Rope.SCALING_FACTOR, float(params["factor"]), F32)]
    if rope_type == "yarn":
        out += yarn_metadata(config, yarn_log_multiplier)
    # llama3 scaling is carried as the rope_freqs tensor (see llama3_rope_factors), as llama.cpp expects.
    return out


YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0  # llama.cpp's only values: it reads no beta keys from a GGUF


def mrope_metadata(config: HFConfig, section: list[int]) -> list[Metadata]:
    """Multi-axis rope (Qwen3-VL, Qwen3.5): the plain rope keys and the sections, padded with 0 to the four that
    llama.cpp reads (text, height, width, time)."""
    return rope_metadata(config, frozenset()) + [
        (K.Rope.DIMENSION_SECTIONS, (list(section) + [0, 0, 0, 0])[:4], gguf.GGUFValueType.ARRAY)]


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_metadata(config: HFConfig, log_multiplier_key: bool = False) -> list[Metadata]:
    """YaRN as llama.cpp reproduces it: scaling type, factor, original context and the attention factor.

    transformers (``_compute_yarn_parameters``) blends interpolated and extrapolated frequencies over a ramp
    between the correction dims of beta_fast/beta_slow (floored/ceiled when ``truncate``) and scales cos/sin by
    ``attention_factor`` (default 0.1·ln(factor)+1, or the mscale/mscale_all_dim ratio). ggml's rope does the
    same ramp with floor/ceil and multiplies by 0.1·ln(factor)+1 times the GGUF's ``rope.scaling.attn_factor``
    (src/llama-context.cpp), so that key carries HF's factor divided by the default. llama.cpp reads no beta
    keys and always truncates: other betas or ``truncate: false`` are refused. ``log_multiplier_key``: carry
    ``mscale_all_dim`` as rope.scaling.yarn_log_multiplier, for the architectures whose loader reads it.
    """
    params = config.rope_parameters
    factor = params.get("factor")
    if factor is None or float(factor) < 1.0:
        raise UnsupportedArchitecture(f"YaRN rope scaling with factor {factor!r} is not supported",
                                      "llama.cpp reproduces YaRN for a factor >= 1 only")
    factor = float(factor)
    for key, default in (("beta_fast", YARN_BETA_FAST), ("beta_slow", YARN_BETA_SLOW)):
        if float(params.get(key) or default) != default:
            raise UnsupportedArchitecture(f"YaRN rope scaling with {key}={params[key]} is not supported",
                                          f"llama.cpp always uses {key}={default:g}")
    if params.get("truncate", True) is False:
        raise UnsupportedArchitecture("YaRN rope scaling with truncate=false is not supported",
                                      "llama.cpp always rounds the correction range to whole dimensions")
    original = params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings",
                                                                            "max_position_embeddings")
    attention = params.get("attention_factor")
    if attention is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        attention = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim) if mscale and mscale_all_dim
                     else _yarn_mscale(factor))
    out: list[Metadata] = [(K.Rope.SCALING_TYPE, "yarn", STR), (K.Rope.SCALING_FACTOR, factor, F32),
                           (K.Rope.SCALING_ORIG_CTX_LEN, int(original), U32)]
    base = _yarn_mscale(factor)
    log_multiplier = float(params.get("mscale_all_dim") or 0.0) if log_multiplier_key else 0.0
    if log_multiplier:
        # Graphs that read rope.scaling.yarn_log_multiplier (mistral3, deepseek2) start from
        # mscale(factor, 1) / mscale(factor, log multiplier) instead (src/llama-context.cpp).
        out.append((K.Rope.SCALING_YARN_LOG_MUL, log_multiplier, F32))
        base = _yarn_mscale(factor) / _yarn_mscale(factor, log_multiplier)
    if float(attention) != base:
        out.append((K.Rope.SCALING_ATTN_FACTOR, float(attention) / base, F32))
    return out


def llama3_rope_factors(config: HFConfig) -> list[tuple[str, np.ndarray]]:
    """The per-frequency divisors llama.cpp applies for Llama-3.1-style rope scaling (tensor rope_freqs).

    Computed as HF's default inverse frequencies divided by HF's llama3-scaled ones, in float64, so the
    GGUF reproduces transformers' ``_compute_llama3_parameters`` exactly.
    """
    params = config.rope_parameters
    if params.get("rope_type") != "llama3":
        return []
    base = float(params.get("rope_theta", 10000.0))
    dim = config.head_dim
    factor = float(params["factor"])
    low_freq_factor = float(params.get("low_freq_factor", 1.0))
    high_freq_factor = float(params.get("high_freq_factor", 4.0))
    old_context = float(params.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv_freq = inv_freq.astype(np.float64)
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    scaled = np.where(is_medium, smoothed, scaled)
    return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", (inv_freq / scaled).astype(np.float32))]


def permute_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K rows from HF's rotate-half rope layout to llama.cpp's interleaved pairs.

    HF stores each head's rotary dims as [first halves..., second halves...]; llama.cpp's NORM rope rotates
    adjacent pairs. Works on any dtype (BF16 travels as uint16), weights or biases.
    """
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def permute_q(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    return permute_rows(weights, config.n_head)


def permute_k(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    return permute_rows(weights, config.n_head_kv)


# The transforms of every Llama-shaped family whose llama.cpp graph uses NORM rope (llama, granite, smollm3,
# mistral3): q_proj/k_proj rows from HF's rotate-half order to adjacent pairs.
NORM_ROPE_QK = {r"self_attn\.q_proj\.weight$": permute_q, r"self_attn\.k_proj\.weight$": permute_k}


def check_silu(config: HFConfig, family: str) -> None:
    act = config.get("hidden_act", default="silu")
    if act != "silu":
        raise UnsupportedArchitecture(f"hidden_act {act!r} is not supported for {family}",
                                      f"llama.cpp's {family} graph uses SiLU (SwiGLU)")


def decoder_tensors(config: HFConfig, *, qkv_bias: bool = False, qk_norm: bool = False,
                    sandwich_norms: bool = False, norm_bias: bool = False, post_attention_norm: bool = True,
                    lm_head: str = "unless-tied") -> dict[str, Expected]:
    """The tensors of a Llama-shaped decoder (separate q/k/v, SwiGLU MLP, RMS norms) and their shapes.

    Options: q/k/v biases (Qwen2), per-head q/k norms (Qwen3, Gemma3), norms before and after the MLP as well
    (Gemma2/3), LayerNorms with biases and no post-attention norm for a parallel residual (StableLM).
    ``lm_head``: "unless-tied" (required unless tie_word_embeddings), "optional", or "absent" (the family always
    ties: a checkpoint holding one is wrong).
    """
    hidden, head_dim = int(config.get("hidden_size")), config.head_dim
    q_rows, kv_rows = config.n_head * head_dim, config.n_head_kv * head_dim
    ff, n_vocab = int(config.get("intermediate_size")), int(config.get("vocab_size"))
    tensors = {"model.embed_tokens.weight": Expected((n_vocab, hidden))}
    for i in range(int(config.get("num_hidden_layers"))):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = Expected((hidden,))
        if norm_bias:
            tensors[p + "input_layernorm.bias"] = Expected((hidden,))
        for proj, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
            tensors[f"{p}self_attn.{proj}_proj.weight"] = Expected((rows, hidden))
            if qkv_bias:
                tensors[f"{p}self_attn.{proj}_proj.bias"] = Expected((rows,))
        if qk_norm:
            tensors[p + "self_attn.q_norm.weight"] = Expected((head_dim,))
            tensors[p + "self_attn.k_norm.weight"] = Expected((head_dim,))
        tensors[p + "self_attn.o_proj.weight"] = Expected((hidden, q_rows))
        if post_attention_norm:
            tensors[p + "post_attention_layernorm.weight"] = Expected((hidden,))
            if norm_bias:
                tensors[p + "post_attention_layernorm.bias"] = Expected((hidden,))
        if sandwich_norms:
            tensors[p + "pre_feedforward_layernorm.weight"] = Expected((hidden,))
            tensors[p + "post_feedforward_layernorm.weight"] = Expected((hidden,))
        tensors.update({
            p + "mlp.gate_proj.weight": Expected((ff, hidden)),
            p + "mlp.up_proj.weight": Expected((ff, hidden)),
            p + "mlp.down_proj.weight": Expected((hidden, ff)),
        })
    tensors["model.norm.weight"] = Expected((hidden,))
    if norm_bias:
        tensors["model.norm.bias"] = Expected((hidden,))
    if lm_head != "absent":
        tied = bool(config.get("tie_word_embeddings", default=False))
        tensors["lm_head.weight"] = Expected((n_vocab, hidden), optional=lm_head == "optional" or tied)
    return tensors


# Mixture-of-experts hyperparameters. transformers 5 saves Qwen3-MoE's num_experts as num_local_experts.
EXPERT_COUNT_NAMES = ("num_experts", "num_local_experts")
EXPERT_HPARAMS: tuple[HParam, ...] = (
    HParam(K.LLM.EXPERT_COUNT, EXPERT_COUNT_NAMES),
    HParam(K.LLM.EXPERT_USED_COUNT, ("num_experts_per_tok",)),
    HParam(K.LLM.EXPERT_FEED_FORWARD_LENGTH, ("moe_intermediate_size",)),
)


def stacked_experts(config: HFConfig, bid: int, prefix: str,
                    projections: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")) -> dict[str, Expected]:
    """llama.cpp's stacked expert tensors of layer ``bid`` (ffn_gate_exps / ffn_up_exps / ffn_down_exps, expert
    e at index e) from the SwiGLU experts under ``prefix`` (e.g. "model.layers.0.mlp.experts"), in either layout:
    per expert as save_pretrained writes them (``{prefix}.{e}.gate_proj.weight`` (F, H), ``up_proj`` (F, H),
    ``down_proj`` (H, F)), or pre-fused as transformers 5 holds them (``{prefix}.gate_up_proj`` (E, 2F, H), each
    expert's gate rows before its up rows, and ``{prefix}.down_proj`` (E, H, F)). ``projections``: the per-expert
    names of gate, up and down (LFM2-MoE: w1, w3, w2)."""
    n_expert, hidden = int(config.get(*EXPERT_COUNT_NAMES)), int(config.get("hidden_size"))
    ff = int(config.get("moe_intermediate_size"))
    fused_gate_up, fused_down = (n_expert, 2 * ff, hidden), (n_expert, hidden, ff)
    names, T = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
    out = {}
    gate, up, down = projections
    for kind, proj, shape, fused in (
            (T.FFN_GATE_EXP, gate, (ff, hidden),
             [Part(f"{prefix}.gate_up_proj", fused_gate_up, (e,), (0, ff)) for e in range(n_expert)]),
            (T.FFN_UP_EXP, up, (ff, hidden),
             [Part(f"{prefix}.gate_up_proj", fused_gate_up, (e,), (ff, 2 * ff)) for e in range(n_expert)]),
            (T.FFN_DOWN_EXP, down, (hidden, ff),
             [Part(f"{prefix}.down_proj", fused_down, (e,)) for e in range(n_expert)])):
        per_expert = tuple(Part(f"{prefix}.{e}.{proj}.weight", shape) for e in range(n_expert))
        out[f"{prefix}.{proj}s"] = Expected((n_expert,) + shape, forms=(per_expert, tuple(fused)),
                                            gguf_name=names[kind].format(bid=bid) + ".weight")
    return out


def checked_layer_types(types: list[str], n_layers: int, known, family: str) -> list[str]:
    """``layer_types`` of a hybrid, refused unless there is one per layer and each is in ``known``."""
    if len(types) != n_layers:
        raise UnsupportedArchitecture(f"layer_types has {len(types)} entries for {n_layers} layers",
                                      "config.json is damaged: give one layer type per layer")
    unknown = [t for t in types if t not in known]
    if unknown:
        raise UnsupportedArchitecture(f"{family} layer type {unknown[0]!r} is not supported",
                                      f"llama.cpp's graph for it knows {', '.join(sorted(known))} layers only")
    return list(types)


def plus_one(weights: np.ndarray, config: HFConfig) -> np.ndarray:
    """Gemma's RMS norm weight w (HF multiplies by 1 + w) -> 1 + w, computed in float32: the Gemma families and
    the Gemma 3 projector (convert/mmproj/gemma3.py) store it so."""
    widened = bf16_to_f32(weights) if weights.dtype == np.uint16 else weights.astype(np.float32)
    return widened + np.float32(1.0)
