"""Reading a PEFT LoRA adapter: adapter_config.json (types checked at the boundary, settings edgepack cannot
carry refused) and the lora_A/lora_B pairs of its safetensors."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ..convert.checkpoint import SAFETENSORS_DTYPES, TensorInfo, load_json, read_safetensors_header, read_tensor
from ..convert.floats import to_f32
from ..errors import AdapterError


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_OUTTYPES = ("f32", "f16")

# The GGUF tensors llama.cpp multiplies through build_lora_mm (src/llama-graph.cpp), i.e. the ones a LoRA pair
# can target: attention and feed-forward projections and the output head. Norms and embeddings are not.
_T = gguf.MODEL_TENSOR
LORA_TENSOR_KINDS = (_T.ATTN_Q, _T.ATTN_K, _T.ATTN_V, _T.ATTN_QKV, _T.ATTN_OUT, _T.FFN_GATE, _T.FFN_UP,
                     _T.FFN_DOWN, _T.OUTPUT)

# adapter_config.json settings whose adapters are not plain W + s·B·A on the base edgepack is given.
# key -> (value that is fine, reason when it is not).
_REFUSED_SETTINGS = {
    "use_dora": (False, "DoRA (use_dora) rescales each weight column by a trained magnitude; llama.cpp's adapter "
                        "format has no place for it", "merge it with PEFT's merge_and_unload() and convert the result"),
    "lora_bias": (False, "the adapter trains a bias on lora_B (lora_bias), which llama.cpp's adapters cannot carry",
                  "merge it with PEFT's merge_and_unload() and convert the result"),
    "fan_in_fan_out": (False, "fan_in_fan_out adapters (GPT-2 Conv1D layout) are not supported",
                       "only nn.Linear targets are supported"),
    "use_qalora": (False, "QA-LoRA adapters (use_qalora) are not supported", "use a plain LoRA adapter"),
    "use_bdlora": (None, "block-diagonal LoRA (use_bdlora) is not supported", "use a plain LoRA adapter"),
    "layer_replication": (None, "layer_replication changes the base's layer stack; llama.cpp cannot follow it",
                          "merge with PEFT and convert the merged model"),
    "target_parameters": (None, "LoRA on raw parameters (target_parameters, e.g. MoE experts) is not supported",
                          "target nn.Linear modules only"),
    "alora_invocation_tokens": (None, "activated LoRA (aLoRA) adapters are not supported by edgepack",
                                "use a plain LoRA adapter"),
    "trainable_token_indices": (None, "the adapter trains embedding rows (trainable_token_indices), which a "
                                      "LoRA adapter file cannot carry", "merge with PEFT and convert the merged model"),
}
# init_lora_weights values that change the base weights at initialisation: the saved adapter only fits the
# modified base unless PEFT converted it back when saving (it then records init_lora_weights=true).
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")

_LORA_NAME = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|block)\.(\d+)\.")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


@dataclass
class _Pair:
    module: str  # HF module name, e.g. model.layers.0.self_attn.q_proj
    a: TensorInfo | None = None
    b: TensorInfo | None = None
    scaling: float = 0.0

    @property
    def base_tensor(self) -> str:
        return self.module + ".weight"

    @property
    def kind(self) -> str:
        return self.module.rsplit(".", 1)[-1]

    @property
    def rank(self) -> int:
        return self.a.shape[0] if self.a is not None else self.b.shape[1]


@dataclass
class _Adapter:
    folder: Path
    config: dict
    weights: Path
    tensors: dict[str, TensorInfo]
    pairs: dict[str, _Pair]
    lora_alpha: float
    scaling: str
    errors: list[str]
    frozen: dict[str, TensorInfo]

    @property
    def declared_base(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    @property
    def declared_class(self) -> str | None:
        return (self.config.get("auto_mapping") or {}).get("base_model_class")

    def read(self, info: TensorInfo) -> np.ndarray:
        return _read_f32(info)


def _read_f32(info: TensorInfo) -> np.ndarray:
    """One adapter tensor as float32 (BF16 widened exactly)."""
    if info.dtype not in SAFETENSORS_DTYPES:
        raise AdapterError(f"adapter tensor {info.name} has dtype {info.dtype}",
                           "supported: " + ", ".join(SAFETENSORS_DTYPES))
    return to_f32(read_tensor(info), info.dtype)


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup (peft.utils.other.get_pattern_key): first key matching the end."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_strs(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# adapter_config.json keys this module reads, with the types PEFT writes (null is always allowed): checked at the
# boundary so that a stranger's file is one AdapterError naming the key, not a crash further in.
_CONFIG_TYPES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "r": ("a positive integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16),
    "lora_alpha": ("a finite number", _is_number),
    "lora_dropout": ("a finite number", _is_number),
    "peft_type": ("a string", lambda v: isinstance(v, str)),
    "bias": ("a string", lambda v: isinstance(v, str)),
    "base_model_name_or_path": ("a string", lambda v: isinstance(v, str)),
    "revision": ("a string", lambda v: isinstance(v, str)),
    "target_modules": ("a list of strings or a string", lambda v: isinstance(v, str) or _is_strs(v)),
    "modules_to_save": ("a list of strings", _is_strs),
    "rank_pattern": ("an object of integers", lambda v: isinstance(v, dict) and all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v.values())),
    "alpha_pattern": ("an object of numbers", lambda v: isinstance(v, dict) and all(map(_is_number, v.values()))),
    "layers_to_transform": ("an integer or a list of them", lambda v: (isinstance(v, int) and not isinstance(
        v, bool)) or (isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v))),
    "init_lora_weights": ("true/false or a string", lambda v: isinstance(v, (bool, str))),
    **{k: ("true or false", lambda v: isinstance(v, bool)) for k in ("fan_in_fan_out", "use_dora", "use_rslora")},
    "auto_mapping": ("an object of strings", lambda v: isinstance(v, dict) and all(
        isinstance(x, (str, type(None))) for x in v.values())),
}


def _check_config_types(config: dict) -> None:
    for key, (expected, ok) in _CONFIG_TYPES.items():
        value = config.get(key)
        if value is not None and not ok(value):
            raise AdapterError(f"{ADAPTER_CONFIG}: {key} is {repr(value)[:60]} (expected {expected})",
                               "fix or re-save the adapter with PEFT's save_pretrained()")


def _load_adapter(peft_dir: Path) -> _Adapter:
    if not peft_dir.is_dir():
        raise AdapterError(f"{peft_dir} is not a folder", "give the folder PEFT's save_pretrained() wrote")
    config_path = peft_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterError(f"no {ADAPTER_CONFIG} in {peft_dir}", "is this a PEFT adapter folder (save_pretrained)?")
    config = load_json(config_path, ADAPTER_CONFIG)
    _check_config_types(config)
    weights = peft_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = (peft_dir / "adapter_model.bin").is_file()
        raise AdapterError(f"no {ADAPTER_WEIGHTS} in {peft_dir}" + (" (only adapter_model.bin)" if pickled else ""),
                           "edgepack reads safetensors only: save with save_pretrained(safe_serialization=True)")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"adapter type {peft_type} is not LoRA", "only PEFT LoRA adapters are supported")

    errors = []
    for key, (fine, reason, hint) in _REFUSED_SETTINGS.items():
        value = config.get(key)
        if value not in (fine, None, False, [], {}, 0) and value != fine:
            errors.append(f"{reason} ({key}={value!r}); hint: {hint}")
    if config.get("bias", "none") != "none":
        errors.append(f"the adapter trains biases (bias={config['bias']!r}), which llama.cpp's adapters cannot "
                      "carry; hint: merge instead (edgepack adapter merge) or train with bias='none'")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        errors.append(f"init_lora_weights={init!r} changes the base weights, so this adapter only fits the "
                      "modified base; hint: save it with PEFT's path_initial_model_for_weight_conversion")
    modules_to_save = config.get("modules_to_save") or []
    if modules_to_save:
        embeds = [m for m in modules_to_save if re.search(r"embed|lm_head|wte|output", m)]
        what = "full embed_tokens/lm_head" if embeds else "full modules"
        errors.append(f"the adapter trains {what} (modules_to_save={list(modules_to_save)}), which a LoRA "
                      "adapter file cannot carry; hint: merge it with PEFT's merge_and_unload() and convert that")

    tensors = read_safetensors_header(weights)
    pairs: dict[str, _Pair] = {}
    frozen: dict[str, TensorInfo] = {}  # HF base tensor name -> the copy of it PEFT saved
    for name, info in tensors.items():
        match = _LORA_NAME.match(name)
        if match is None:
            if name.endswith(".base_layer.weight"):
                # PEFT saves the frozen base weight of a targeted lm_head/embedding (save_embedding_layers);
                # it is the base's own, so only its shape is checked (see _plan), as llama.cpp's converter skips it.
                frozen[name.removeprefix("base_model.model.").replace(".base_layer.weight", ".weight")] = info
            elif "lora_embedding_" in name:
                errors.append(f"the adapter puts LoRA on an embedding ({name}); edgepack carries LoRA on linear "
                              "projections only; hint: retrain without embed_tokens in target_modules")
            elif "lora_magnitude_vector" in name:
                errors.append("the adapter is DoRA (it holds lora_magnitude_vector); hint: merge it with PEFT")
            elif re.search(r"embed_tokens|lm_head", name):
                errors.append(f"the adapter holds a full {name.split('.')[-2]} (trained embeddings); hint: merge "
                              "it with PEFT's merge_and_unload() and convert that")
            else:
                errors.append(f"unexpected tensor {name} in {ADAPTER_WEIGHTS} (not a lora_A/lora_B weight)")
            continue
        pair = pairs.setdefault(match["module"], _Pair(match["module"]))
        setattr(pair, match["ab"].lower(), info)
    if not pairs and not errors:
        errors.append(f"{ADAPTER_WEIGHTS} holds no LoRA tensors")

    lora_alpha = float(config.get("lora_alpha", config.get("r", 8)))
    rslora = bool(config.get("use_rslora"))
    alpha_pattern, rank_pattern = config.get("alpha_pattern") or {}, config.get("rank_pattern") or {}
    for pair in pairs.values():
        if pair.a is None or pair.b is None:
            errors.append(f"{pair.module} has only lora_{'B' if pair.a is None else 'A'}; the adapter file is "
                          "incomplete; hint: re-save or re-download it")
            continue
        if len(pair.a.shape) != 2 or len(pair.b.shape) != 2 or pair.a.shape[0] != pair.b.shape[1]:
            errors.append(f"{pair.module}: lora_A {list(pair.a.shape)} and lora_B {list(pair.b.shape)} do not "
                          "form a rank-r pair")
            continue
        rank = pair.rank
        declared_rank = _pattern_value(rank_pattern, pair.module, config.get("r", rank))
        if int(declared_rank) != rank:
            errors.append(f"{pair.module}: tensors have rank {rank}, adapter_config.json says r={declared_rank}")
        alpha = float(_pattern_value(alpha_pattern, pair.module, lora_alpha))
        pair.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
    scaling = "alpha/sqrt(r)" if rslora else "per-module" if alpha_pattern else "alpha/r"
    return _Adapter(peft_dir, config, weights, tensors, pairs, lora_alpha, scaling, errors, frozen)
