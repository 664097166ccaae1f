"""PEFT LoRA adapters: check they belong to a base, convert them to GGUF adapters, or merge them into the base.

``check_compatibility(peft_dir, base)`` reads adapter_config.json and the adapter's safetensors headers and
the base (a Hugging Face folder, a Hub repo id, or a GGUF) and reports every reason the pair does not fit:
architecture, layer count, hidden sizes, target modules, trained embeddings, features edgepack cannot carry
exactly (DoRA, trained biases, ...), and whether the base named in adapter_config.json is this base.
``convert_adapter`` writes llama.cpp's adapter format (the facts are those of llama.cpp's
convert_lora_to_gguf.py and src/llama-adapter.cpp):

* ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` and ``general.architecture``
  of the base; llama.cpp applies ``scale * alpha / rank`` with rank read from each pair's tensors (or plain
  ``scale`` when alpha is 0).
* one ``<base GGUF tensor name>.lora_a`` (HF shape ``(r, in)``) and ``.lora_b`` (``(out, r)``) per target.
* the base family's transform of the target weight applies to ``B·A``; for a row permutation (the Llama Q/K
  rope order) that is the same permutation of ``lora_b``'s rows. Transforms are found through the family's
  ``ArchSpec`` and checked to be row permutations by probing them, so no family knowledge lives here.
* scalings other than ``alpha/r`` (rsLoRA's ``alpha/sqrt(r)``, ``alpha_pattern``/``rank_pattern``) are folded
  into ``lora_b`` so that llama.cpp's ``alpha/r`` gives PEFT's scaling exactly.

``merge_adapter`` writes the base's safetensors with ``W + scaling·B·A`` (one tensor at a time) and copies
the config and tokenizer files, so the merged folder converts and quantizes like any other model.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from . import __version__
from . import gguf_keys as keys
from .convert import families  # noqa: F401  (registers every family)
from .convert.checkpoint import (SAFETENSORS_DTYPES, Checkpoint, TensorInfo, load_json, read_safetensors_header,
                                  read_tensor)
from .convert.floats import f32_to_bf16, to_f32
from .convert.core import ConvertResult, convert
from .convert.spec import ArchSpec, HFConfig, Transform, family_of, spec_for, supported_architectures
from .errors import AdapterError, BadGGUF, EdgepackError, OutputError, UsageError
from .fileio import atomic_path, check_output_path, sha256_file
from .ggufheader import read_header
from .progress import QUIET, Progress
from .source import Provenance, resolve as resolve_source

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


# -- results ---------------------------------------------------------------------------------------------------

@dataclass
class CompatibilityReport:
    """Whether an adapter fits a base: ``errors`` refuse the pair, ``warnings`` are worth reading."""

    adapter: str
    base: str
    base_kind: str  # "hf" or "gguf"
    base_name: str
    architecture: str | None  # Hugging Face class of the base (None for a GGUF without edgepack provenance)
    gguf_architecture: str | None
    n_layers: int | None
    target_modules: list[str] = field(default_factory=list)  # e.g. ["k_proj", "q_proj"]
    n_pairs: int = 0
    ranks: list[int] = field(default_factory=list)
    lora_alpha: float | None = None
    scaling: str = ""  # "alpha/r", "alpha/sqrt(r)" or "per-module"
    base_identity: str = "unknown"  # "verified", "mismatch" or "unknown"
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class AdapterResult:
    """What ``convert_adapter`` wrote."""

    output: Path
    architecture: str | None
    gguf_architecture: str
    outtype: str
    n_pairs: int
    ranks: list[int]
    lora_alpha: float
    size_bytes: int
    seconds: float
    base_name: str
    base_sha256: dict[str, str] = field(default_factory=dict)
    adapter_sha256: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class MergeResult:
    """What ``merge_adapter`` wrote."""

    output: Path
    architecture: str
    n_merged: int  # weight tensors that received B·A
    n_tensors: int
    files: list[str]
    seconds: float
    warnings: list[str] = field(default_factory=list)


# -- reading the adapter ---------------------------------------------------------------------------------------

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


# -- reading the base ------------------------------------------------------------------------------------------

@dataclass
class _Base:
    path: Path
    kind: str  # "hf" | "gguf"
    name: str
    hf_class: str | None
    spec: ArchSpec
    config: HFConfig
    n_blocks: int
    shapes: dict[str, tuple[int, ...]]  # GGUF tensor name -> HF-order shape, for every 2-D+ base weight
    names: set[str] = field(default_factory=set)  # extra names that identify the base (general.name, ...)
    provenance: Provenance | None = None
    weights_sha256: dict[str, str] | None = None  # source safetensors file -> sha256 (None: not computed yet)
    gguf_sha256: str | None = None
    checkpoint: Checkpoint | None = None

    def gguf_name(self, hf_tensor: str) -> str | None:
        return gguf.get_tensor_name_map(self.spec.arch, self.n_blocks).get_name(hf_tensor,
                                                                                try_suffixes=(".weight", ".bias"))

    def source_hashes(self, progress: Progress = QUIET) -> dict[str, str]:
        if self.weights_sha256 is None:  # an HF folder: hash its safetensors as the converter does
            files = self.checkpoint.files
            progress.start("hashing base weights", len(files))
            self.weights_sha256 = {}
            for path in files:
                self.weights_sha256[path.name] = sha256_file(path)
                progress.advance()
            progress.finish()
        return self.weights_sha256


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _resolve(source: str | os.PathLike, what: str, progress: Progress) -> tuple[Path, Provenance | None]:
    """A local path as given, or a Hub repo id fetched with edgepack.hub (pinned, verified)."""
    path, provenance = resolve_source(source, progress=progress)
    if not Path(path).exists():
        raise AdapterError(f"{what} {os.fspath(source)} does not exist", "give a local folder, a .gguf, or org/name")
    return Path(path), provenance


def _load_base(base: str | os.PathLike, progress: Progress = QUIET) -> _Base:
    text = os.fspath(base)
    if Path(text).is_file():
        if not _is_gguf(Path(text)):
            raise AdapterError(f"base {text} is a file but not a GGUF", "give the base's HF folder or its .gguf")
        return _load_gguf_base(Path(text))
    path, provenance = _resolve(text, "base", progress)
    if path.is_file():
        return _load_gguf_base(path)
    return _load_hf_base(path, provenance)


def _load_hf_base(folder: Path, provenance: Provenance | None) -> _Base:
    spec, config = family_of(load_json(folder / "config.json", "config.json"))
    spec.check(config)
    checkpoint = Checkpoint(folder)
    n_blocks = int(config.get("num_hidden_layers", "n_layer"))
    name_map = gguf.get_tensor_name_map(spec.arch, n_blocks)
    shapes = {}
    for hf_name, expected in spec.tensors(config).items():
        if expected.optional and hf_name not in checkpoint.tensors:
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None and len(expected.shape) >= 2:
            shapes[gguf_name] = tuple(expected.shape)
    names = {folder.resolve().name}
    if provenance and provenance.repo_id:
        names.add(provenance.repo_id)
    return _Base(folder, "hf", folder.resolve().name, config.architecture, spec, config, n_blocks, shapes, names,
                 provenance, checkpoint=checkpoint)


def _load_gguf_base(path: Path) -> _Base:
    header = read_header(path)  # fast and strict: a damaged file is one BadGGUF line
    K = gguf.Keys
    if header.get(K.General.TYPE, "model") != "model":
        raise AdapterError(f"base {path.name} is a GGUF of type {header.get(K.General.TYPE)!r}, not a model",
                           "give the base model's GGUF")
    arch = header.get(K.General.ARCHITECTURE)
    hf_class = header.get(keys.Source.ARCHITECTURE)
    known_class = hf_class
    if hf_class is None:  # a GGUF made by another tool: any class registered for this llama.cpp arch will do
        hf_class = next((c for c, a in supported_architectures().items() if a == arch), None)
        if hf_class is None:
            raise AdapterError(f"base architecture {arch!r} is not supported by edgepack",
                               "edgepack convert --list-architectures lists the supported ones")
    spec = spec_for(hf_class)
    if spec.arch_name != arch:
        raise BadGGUF(f"{path.name} says architecture {arch} but was converted from {hf_class}",
                      "the file's metadata is inconsistent; re-convert the base")

    def key(template: str, default=None):
        return header.get(template.format(arch=arch), default)

    # The family's transforms read a few hyperparameters (head counts for the Q/K permutation); rebuild them.
    data = {"architectures": [hf_class], "hidden_size": key(K.LLM.EMBEDDING_LENGTH),
            "num_hidden_layers": key(K.LLM.BLOCK_COUNT), "num_attention_heads": key(K.Attention.HEAD_COUNT),
            "num_key_value_heads": key(K.Attention.HEAD_COUNT_KV), "intermediate_size": key(K.LLM.FEED_FORWARD_LENGTH),
            "head_dim": key(K.Attention.KEY_LENGTH), "vocab_size": key(K.LLM.VOCAB_SIZE)}
    config = HFConfig({k: v for k, v in data.items() if v is not None})
    shapes = {t.name: tuple(reversed(t.shape)) for t in header.tensors if len(t.shape) >= 2}
    files, hashes = header.get(keys.Source.FILES), header.get(keys.Source.SHA256)
    weights = {}
    if isinstance(files, list) and isinstance(hashes, list) and len(files) == len(hashes):
        weights = {f: h for f, h in zip(files, hashes) if f.endswith(".safetensors")}
    provenance = Provenance(**{name: header.get(key) for name, key in keys.Source.PROVENANCE.items()
                               if name != "license"})
    names = {n for n in (header.get(K.General.NAME), header.get(K.General.BASENAME), provenance.repo_id) if n}
    name = provenance.repo_id or header.get(K.General.NAME) or path.stem
    return _Base(path, "gguf", name, known_class, spec, config, int(key(K.LLM.BLOCK_COUNT, 0)), shapes, names,
                 provenance, weights_sha256=weights)


# -- checking --------------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    adapter: _Adapter
    base: _Base
    report: CompatibilityReport
    targets: list[tuple[_Pair, str]]  # (pair, GGUF tensor name), in the base's order


def _row_permutation(transform: Transform, shape: tuple[int, ...], config: HFConfig) -> np.ndarray | None:
    """The row order ``transform`` produces on a weight of ``shape``, or None if it is not a pure row permutation.

    The probe holds each element's own index, so the transformed probe says exactly where every element went.
    """
    rows, cols = shape
    probe = np.arange(rows * cols, dtype=np.float64).reshape(rows, cols)
    try:
        got = np.asarray(transform(probe, config))
    except EdgepackError:
        raise
    except Exception:
        return None
    if got.shape != probe.shape:
        return None
    order = got[:, 0] / cols
    perm = order.astype(np.int64)
    if not np.array_equal(order, perm) or not np.array_equal(np.sort(perm), np.arange(rows)):
        return None
    return perm if np.array_equal(got, probe[perm]) else None


def _plan(peft_dir: str | os.PathLike, base: str | os.PathLike, *, strict: bool = False,
          progress: Progress = QUIET) -> _Plan:
    peft_path, _ = _resolve(peft_dir, "adapter", progress)
    adapter = _load_adapter(peft_path)
    base_ = _load_base(base, progress)
    report = CompatibilityReport(
        adapter=str(peft_dir), base=str(base), base_kind=base_.kind, base_name=base_.name,
        architecture=base_.hf_class, gguf_architecture=base_.spec.arch_name, n_layers=base_.n_blocks,
        lora_alpha=adapter.lora_alpha, scaling=adapter.scaling, errors=list(adapter.errors))
    declared = adapter.declared_class
    if declared and base_.hf_class and declared != base_.hf_class:
        report.errors.insert(0, f"architecture mismatch: the adapter was trained on {declared}, the base is "
                                f"{base_.hf_class}")
    elif declared and not base_.hf_class:
        spec = supported_architectures().get(declared)
        if spec is not None and spec != base_.spec.arch_name:
            report.errors.insert(0, f"architecture mismatch: the adapter was trained on {declared} ({spec}), the "
                                    f"base is {base_.spec.arch_name}")

    kinds = {gguf.TENSOR_NAMES[k] for k in LORA_TENSOR_KINDS}
    targets = []
    for pair in adapter.pairs.values():
        if pair.a is None or pair.b is None:
            continue
        layer = _LAYER_INDEX.search("." + pair.module + ".")
        if layer and int(layer.group(1)) >= base_.n_blocks:
            report.errors.append(f"layer count mismatch: the adapter targets layer {layer.group(1)} "
                                 f"({pair.module}), the base has {base_.n_blocks} layers")
            continue
        gguf_name = base_.gguf_name(pair.base_tensor)
        if pair.kind == "lm_head" and (gguf_name is None or gguf_name not in base_.shapes):
            report.errors.append(f"the adapter targets lm_head, but the base has no separate lm_head (its "
                                 "embeddings are tied); hint: retrain without lm_head in target_modules")
            continue
        if gguf_name is None:
            report.errors.append(f"unsupported target module {pair.kind} ({pair.module}): not a weight of a "
                                 f"{base_.hf_class or base_.spec.arch_name} model")
            continue
        kind = re.sub(r"^blk\.\d+\.", "blk.{bid}.", gguf_name.removesuffix(".weight"))
        if kind not in kinds:
            report.errors.append(f"unsupported target module {pair.kind} ({pair.module} -> {gguf_name}): llama.cpp "
                                 "applies LoRA to attention/feed-forward projections and the output head only")
            continue
        shape = base_.shapes.get(gguf_name)
        if shape is None:
            report.errors.append(f"the base has no {gguf_name} for {pair.module}")
            continue
        (out_rows, in_cols), rank = shape, pair.rank
        if pair.a.shape[1] != in_cols or pair.b.shape[0] != out_rows:
            report.errors.append(f"size mismatch on {pair.module}: the adapter's B·A is "
                                 f"{pair.b.shape[0]}x{pair.a.shape[1]}, the base weight is {out_rows}x{in_cols}")
            continue
        targets.append((pair, gguf_name, rank))
    for hf_name, info in adapter.frozen.items():
        gguf_name = base_.gguf_name(hf_name)
        shape = base_.shapes.get(gguf_name) if gguf_name else None
        if shape is not None and tuple(info.shape) != shape:
            report.errors.append(f"size mismatch: the adapter's copy of {hf_name} is {list(info.shape)}, the base's "
                                 f"is {list(shape)} (a resized vocabulary?)")
    order = {name: i for i, name in enumerate(base_.shapes)}
    targets.sort(key=lambda t: (order.get(t[1], 0), t[1]))
    report.target_modules = sorted({p.kind for p, _, _ in targets})
    report.n_pairs = len(targets)
    report.ranks = sorted({r for _, _, r in targets})
    report.errors = _dedupe(report.errors)
    _check_identity(adapter, base_, report, strict)
    return _Plan(adapter, base_, report, [(p, n) for p, n, _ in targets])


def _dedupe(messages: list[str]) -> list[str]:
    """Collapse messages that differ only in a layer number, keeping the first of each with a count."""
    seen: dict[str, list[str]] = {}
    for m in messages:
        seen.setdefault(re.sub(r"\d+", "#", m), []).append(m)
    return [v[0] + (f" (and {len(v) - 1} more like it)" if len(v) > 1 else "") for v in seen.values()]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.rstrip("/").rsplit("/", 1)[-1].lower())


def _check_identity(adapter: _Adapter, base: _Base, report: CompatibilityReport, strict: bool) -> None:
    """Does adapter_config.json's base_model_name_or_path (and revision) name this base? Mismatch: a warning,
    or an error when ``strict``; unverifiable: a warning."""
    declared, revision = adapter.declared_base, adapter.config.get("revision")
    problems = []
    if not declared:
        report.warnings.append("adapter_config.json does not name its base model (base_model_name_or_path); "
                               "cannot check that it was trained on this base")
        return
    local = Path(declared).expanduser()
    repo_id = base.provenance.repo_id if base.provenance else None
    if local.is_dir():
        if base.kind == "hf" and local.resolve() == base.path.resolve():
            report.base_identity = "verified"
        else:
            try:
                declared_hashes = {p.name: sha256_file(p) for p in Checkpoint(local).files}
            except EdgepackError:
                declared_hashes = {}
            base_hashes = base.source_hashes()
            if declared_hashes and base_hashes:
                if sorted(declared_hashes.values()) == sorted(base_hashes.values()):
                    report.base_identity = "verified"
                else:
                    problems.append(f"base mismatch: the adapter was trained on {declared}, whose weights' sha256 "
                                    f"differ from {base.name}'s")
    elif repo_id:
        if declared.lower() == repo_id.lower():
            report.base_identity = "verified"
        else:
            problems.append(f"base mismatch: the adapter was trained on {declared}, the base is {repo_id}")
    if report.base_identity != "verified" and not problems:
        candidates = {_norm(n) for n in base.names | {base.name}}
        if _norm(declared) in candidates:
            report.warnings.append(f"the adapter names its base {declared!r}; the base matches by name only "
                                   "(no repo id or hashes to compare)")
        else:
            problems.append(f"base mismatch: the adapter was trained on {declared!r}, the base is {base.name!r}")
    pinned = base.provenance and (base.provenance.commit_sha or base.provenance.revision)
    if revision and pinned:
        known = {base.provenance.commit_sha, base.provenance.revision} - {None}
        if not any(k == revision or (len(revision) >= 7 and k.startswith(revision)) for k in known):
            problems.append(f"revision mismatch: the adapter was trained on revision {revision}, the base is "
                            f"{base.provenance.commit_sha or base.provenance.revision}")
    elif revision:
        report.warnings.append(f"the adapter names base revision {revision}; the base records no revision to "
                               "compare it with")
    if problems:
        report.base_identity = "mismatch"
        if strict:
            report.errors.extend(problems)
        else:
            report.warnings.extend(p + " (--strict makes this an error)" for p in problems)


def check_compatibility(peft_dir: str | os.PathLike, base: str | os.PathLike, *, strict: bool = False,
                        progress: Progress = QUIET) -> CompatibilityReport:
    """Everything that makes the adapter in ``peft_dir`` unfit for ``base`` (HF folder, repo id or GGUF).

    Never raises for an unfit pair (the report's ``errors`` say why); raises for unreadable inputs.
    """
    return _plan(peft_dir, base, strict=strict, progress=progress).report


def _refuse(report: CompatibilityReport) -> None:
    if report.errors:
        first, _, hint = report.errors[0].partition("; hint: ")
        more = f" (+{len(report.errors) - 1} more problem(s): edgepack adapter check)" if len(report.errors) > 1 else ""
        raise AdapterError(first + more, hint or "is this adapter trained on this base? "
                                                 "(edgepack adapter check PEFT_DIR --base BASE lists every problem)")


# -- convert ---------------------------------------------------------------------------------------------------

def convert_adapter(peft_dir: str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike, *,
                    outtype: str = "f32", strict: bool = False, force: bool = False,
                    progress: Progress = QUIET) -> AdapterResult:
    """Write the PEFT LoRA adapter in ``peft_dir`` as a llama.cpp GGUF adapter for ``base``.

    ``outtype``: f32 (exact) or f16. The pair is checked first; nothing is written if it does not fit.
    """
    started = time.monotonic()
    out = Path(out)
    if outtype not in ADAPTER_OUTTYPES:
        raise UsageError(f"unknown adapter outtype {outtype!r}", f"choose one of {', '.join(ADAPTER_OUTTYPES)}")
    check_output_path(out, force)
    plan = _plan(peft_dir, base, strict=strict, progress=progress)
    _refuse(plan.report)
    adapter, base_ = plan.adapter, plan.base
    out_dtype = np.float32 if outtype == "f32" else np.float16

    base_hashes = base_.source_hashes(progress)
    adapter_hashes = {p.name: sha256_file(p) for p in (adapter.folder / ADAPTER_CONFIG, adapter.weights)}
    if base_.kind == "gguf":
        base_.gguf_sha256 = sha256_file(base_.path)

    perms: dict[tuple, np.ndarray | None] = {}
    tensors = []
    for pair, gguf_name in plan.targets:
        a, b = adapter.read(pair.a), adapter.read(pair.b)
        transform = base_.spec.transform_for(pair.base_tensor)
        if transform is not None:
            shape = base_.shapes[gguf_name]
            key = (id(transform), shape)
            if key not in perms:
                perms[key] = _row_permutation(transform, shape, base_.config)
            if perms[key] is None:
                raise AdapterError(f"the {base_.spec.arch_name} converter reshapes {pair.kind} in a way a LoRA "
                                   "pair cannot follow", "merge the adapter instead: edgepack adapter merge")
            b = b[perms[key]]
        # llama.cpp scales by alpha/rank (rank = the pair's own); fold any other PEFT scaling into lora_b.
        llama_scaling = adapter.lora_alpha / pair.rank if adapter.lora_alpha else 1.0
        if pair.scaling != llama_scaling:
            b = b * np.float32(pair.scaling / llama_scaling)
        tensors.append((gguf_name + ".lora_a", np.ascontiguousarray(a, dtype=out_dtype)))
        tensors.append((gguf_name + ".lora_b", np.ascontiguousarray(b, dtype=out_dtype)))

    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=base_.spec.arch_name)
        _add_adapter_metadata(writer, adapter, base_, adapter_hashes, base_hashes)
        for name, data in tensors:
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return AdapterResult(output=out, architecture=base_.hf_class, gguf_architecture=base_.spec.arch_name,
                         outtype=outtype, n_pairs=len(plan.targets), ranks=plan.report.ranks,
                         lora_alpha=adapter.lora_alpha, size_bytes=out.stat().st_size,
                         seconds=round(time.monotonic() - started, 3), base_name=base_.name,
                         base_sha256=base_hashes, adapter_sha256=adapter_hashes, warnings=plan.report.warnings)


def _add_adapter_metadata(writer: gguf.GGUFWriter, adapter: _Adapter, base: _Base, adapter_hashes: dict[str, str],
                          base_hashes: dict[str, str]) -> None:
    K = gguf.Keys
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(K.Adapter.TYPE, "lora")
    writer.add_float32(K.Adapter.LORA_ALPHA, adapter.lora_alpha)
    writer.add_name(adapter.folder.resolve().name)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, base.name)
    if base.provenance and base.provenance.repo_id:
        writer.add_base_model_repo_url(0, f"https://huggingface.co/{base.provenance.repo_id}")
    writer.add_string(keys.VERSION, __version__)
    if base.hf_class:
        writer.add_string(keys.Base.ARCHITECTURE, base.hf_class)
    writer.add_string(keys.Base.NAME, base.name)
    if base_hashes:  # the same values the converter records as keys.Source.SHA256 in every GGUF of this base
        writer.add_array(keys.Base.FILES, sorted(base_hashes))
        writer.add_array(keys.Base.SHA256, [base_hashes[k] for k in sorted(base_hashes)])
    if base.gguf_sha256:
        writer.add_string(keys.Base.GGUF_SHA256, base.gguf_sha256)
    for key, value in keys.provenance_items(keys.Base.PROVENANCE, base.provenance):
        writer.add_string(key, value)
    if adapter.declared_base:
        writer.add_string(keys.Adapter.DECLARED_BASE, adapter.declared_base)
    writer.add_string(keys.Adapter.SCALING, adapter.scaling)
    writer.add_array(keys.Adapter.FILES, sorted(adapter_hashes))
    writer.add_array(keys.Adapter.SHA256, [adapter_hashes[k] for k in sorted(adapter_hashes)])


# -- merge -----------------------------------------------------------------------------------------------------

def merge_adapter(peft_dir: str | os.PathLike, base_hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  scale: float = 1.0, strict: bool = False, force: bool = False,
                  progress: Progress = QUIET) -> MergeResult:
    """Write ``base_hf_dir`` with the adapter merged in (``W + scale·scaling·B·A``) to the folder ``out_dir``.

    ``scale`` is llama.cpp's lora scale (``--lora-scaled``): 1.0 merges the adapter as trained.
    Weights keep the base's files, tensor names and dtypes (the sum is computed in float32); config,
    tokenizer and other non-weight files are copied, so the result converts like any other model. The folder
    is built beside ``out_dir`` and renamed into place only when complete.
    """
    started = time.monotonic()
    if not math.isfinite(scale):
        raise UsageError(f"--scale must be a finite number, not {scale}", "1.0 merges the adapter as trained")
    out = Path(out_dir)
    text = os.fspath(base_hf_dir)
    if Path(text).is_file():
        raise AdapterError(f"merge needs the base as a Hugging Face folder, not the file {Path(text).name}",
                           "give the folder the GGUF was converted from (or convert the adapter instead)")
    if out.exists() and not (force and out.is_dir()):
        raise OutputError(f"output {out} already exists" + ("" if out.is_dir() else " and is not a folder"),
                          "pass --force to replace it" if out.is_dir() else "choose another -o path")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist", f"create it first: mkdir -p {parent}")
    plan = _plan(peft_dir, base_hf_dir, strict=strict, progress=progress)
    _refuse(plan.report)
    adapter, base = plan.adapter, plan.base
    deltas = {pair.base_tensor: pair for pair, _ in plan.targets}
    checkpoint = base.checkpoint
    merged = 0
    with _atomic_dir(out) as tmp:
        total = sum(info.nbytes for info in checkpoint.tensors.values())
        progress.start(f"merging into {out.name}", total)
        for file in checkpoint.files:
            infos = [i for i in checkpoint.tensors.values() if i.file == file]
            infos.sort(key=lambda i: i.offset)
            with open(tmp / file.name, "wb") as f:
                _write_safetensors_header(f, infos)
                for info in infos:
                    data = checkpoint.read(info.name)
                    pair = deltas.get(info.name)
                    if pair is not None:
                        data = _merged(data, info.dtype, adapter.read(pair.a), adapter.read(pair.b),
                                       scale * pair.scaling)
                        merged += 1
                    f.write(np.ascontiguousarray(data).tobytes())
                    progress.advance(info.nbytes)
        progress.finish()
        copied = []
        for item in sorted(base.path.iterdir()):
            if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and not item.name.startswith("."):
                shutil.copy2(item, tmp / item.name)
                copied.append(item.name)
        record = {"edgepack_version": __version__, "base": base.name, "base_sha256": base.source_hashes(progress),
                  "adapter": str(adapter.folder), "adapter_sha256": {p.name: sha256_file(p) for p in (
                      adapter.folder / ADAPTER_CONFIG, adapter.weights)}, "scaling": adapter.scaling,
                  "lora_alpha": adapter.lora_alpha, "scale": scale, "merged_tensors": sorted(deltas)}
        (tmp / "edgepack-merge.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    files = sorted(p.name for p in out.iterdir())
    return MergeResult(output=out, architecture=base.hf_class, n_merged=merged, n_tensors=len(checkpoint.tensors),
                       files=files, seconds=round(time.monotonic() - started, 3), warnings=plan.report.warnings)


def _merged(weight: np.ndarray, dtype: str, a: np.ndarray, b: np.ndarray, scaling: float) -> np.ndarray:
    """weight + scaling·(B @ A) in float32, returned in the weight's own dtype (BF16 as uint16 bits)."""
    w32 = to_f32(weight, dtype) + (b @ a) * np.float32(scaling)
    if dtype == "BF16":  # round to nearest even, as torch does
        return f32_to_bf16(w32)
    return w32.astype(weight.dtype)


def _write_safetensors_header(f, infos: list[TensorInfo]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for info in infos:
        header[info.name] = {"dtype": info.dtype, "shape": list(info.shape),
                             "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)


@contextlib.contextmanager
def _atomic_dir(out: Path):
    """Build a folder beside ``out`` and rename it into place on success (replacing an old ``out``)."""
    parent = out.parent if str(out.parent) else Path(".")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {parent}: {exc.strerror}", "check the folder's permissions") from exc
    try:
        yield tmp
        for item in tmp.iterdir():
            with open(item, "rb+") as f:
                os.fsync(f.fileno())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            os.replace(out, old / "x")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_merged(peft_dir: str | os.PathLike, base_hf_dir: str | os.PathLike, out: str | os.PathLike, *,
                   strict: bool = False, force: bool = False, provenance: Provenance | None = None,
                   progress: Progress = QUIET, **convert_options) -> ConvertResult:
    """``edgepack convert BASE --merge-lora PEFT_DIR``: merge into a temp folder beside ``out``, convert it,
    remove it. ``convert_options`` go to ``convert`` (outtype, pre_tokenizer, ...)."""
    out = Path(out)
    check_output_path(out, force)
    parent = out.parent if str(out.parent) else Path(".")
    name = f"{Path(os.fspath(base_hf_dir)).resolve().name}-{Path(os.fspath(peft_dir)).resolve().name}"
    with tempfile.TemporaryDirectory(prefix=".edgepack-merge-", dir=parent) as tmp:
        merged = Path(tmp) / name  # the GGUF's general.name comes from this folder's name
        merge_adapter(peft_dir, base_hf_dir, merged, strict=strict, progress=progress)
        return convert(merged, out, force=force, provenance=provenance, progress=progress, **convert_options)
