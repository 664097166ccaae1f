"""The device profile schema: which keys a profile file may hold, their types and checks, and ``Sourced``, a
number with its provenance (the rule that keeps profile numbers honest: every table holding a number also says
where it comes from and what it is). ``profiles.parse_profile`` validates every file against ``SCHEMA``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ProfileError
from .limits import MAX_THREADS
from .quants import QUANT_FAMILIES
from .validate import safe_name

SCHEMA_VERSION = 1

KINDS = ("spec", "measurement", "estimate")
DEVICE_KINDS = ("phone", "tablet", "laptop", "desktop", "sbc", "embedded")
# hexagon: llama.cpp's backend for Qualcomm's Hexagon NPU (ggml-hexagon); opencl: its Adreno GPU backend.
BACKENDS = ("cpu", "metal", "vulkan", "opencl", "cuda", "hexagon")
GPU_BACKENDS = tuple(b for b in BACKENDS if b != "cpu")
PER_DEVICE_BACKENDS = ("opencl", "hexagon")  # one compute unit per device: no published core counts (Profile.compute_size)
# Prompt processing speed depends on the weight format's kernels (quants.QUANT_FAMILIES): a backend has a rate
# for every family and may have one for a ggml type (QUANT_TYPE_KEYS), which then wins over its family's
# (Q2_K and Q3_K, never repacked on ARM, are far slower than the repacked Q4_K).
QUANT_TYPE_KEYS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl",
                   "iq4_xs", "iq3_s", "iq2_s", "iq2_xs", "iq1_s", "f16", "bf16", "f32")
QUANT_KEYS = QUANT_FAMILIES + tuple(k for k in QUANT_TYPE_KEYS if k not in QUANT_FAMILIES)
ISA_FEATURES = ("neon", "dotprod", "i8mm", "sve", "sve2", "sme", "fp16", "avx2", "avx512", "avx512_vnni",
                "avx_vnni", "amx")


# --- schema -----------------------------------------------------------------------------------------
# A field spec is (type, required, check) where check returns an error string or None.

def _positive(v):
    return None if v > 0 else "must be > 0"


def _count_up_to(limit: int):
    """A positive count with a ceiling: fit expands per-core lists, so a profile claiming 10^12 cores must be
    refused by ``validate``, not run out of memory later."""
    def check(v):
        return _positive(v) or (None if v <= limit else f"must be at most {limit:,}")
    return check


def _fraction(v):
    return None if 0 < v <= 1 else "must be in (0, 1]"


def _efficiency(v):
    # above 1 only as a measurement (checked in _validate): a model held in the CPU's caches streams faster than
    # the DRAM spec, by as much as a cache is faster than DRAM (or than a bandwidth measured on a busy host);
    # 1000 bounds a typo
    return None if 0 < v <= 1000 else "must be in (0, 1] (a measurement: at most 1000)"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _profile_name(v: str) -> str | None:
    # The name becomes a bundle folder (bundles/<name>/): one safe file-name component, lower case.
    if not (v and v.replace("-", "").isalnum() and v == v.lower()):
        return "must be lower-case letters, digits and '-'"
    try:
        safe_name(v, "a profile name")
    except ValueError as exc:
        return str(exc)
    return None


def _one_of(options):
    def check(v):
        return None if v in options else f"must be one of {', '.join(options)}"
    return check


def _all_of(options):
    def check(v):
        bad = [x for x in v if x not in options]
        return None if not bad else f"unknown value(s) {', '.join(map(str, bad))}; known: {', '.join(options)}"
    return check


def _sourced(value_key: str, check=_positive, extra: dict | None = None) -> dict:
    """A table holding one number (``value_key``) plus its provenance."""
    spec = {value_key: ((int, float), True, check), "source": (str, True, None), "kind": (str, True, _one_of(KINDS)),
            "note": (str, False, None)}
    spec.update(extra or {})
    return spec


CLUSTER = {"name": (str, True, None), "cores": (int, True, _count_up_to(MAX_THREADS)), "max_ghz": ((int, float), True, _positive),
           "source": (str, True, None), "kind": (str, True, _one_of(KINDS)), "note": (str, False, None)}

SCHEMA: dict = {
    "schema": (int, True, lambda v: None if v == SCHEMA_VERSION else f"must be {SCHEMA_VERSION}"),
    "name": (str, True, _profile_name),
    "display_name": (str, True, None),
    "kind": (str, True, _one_of(DEVICE_KINDS)),
    "soc": (str, True, None),
    "os": (str, True, None),
    "backends": (list, True, _all_of(BACKENDS)),
    "default_backend": (str, True, _one_of(BACKENDS)),
    "isa": (list, True, _all_of(ISA_FEATURES)),
    "storage": (str, False, None),
    "notes": (str, False, None),
    "cpu": {
        "clusters": ([CLUSTER], True, None),
        "threads": _sourced("value"),
    },
    # Optional: the GPU the metal/vulkan/opencl/cuda backends run on. ``cores`` (Apple GPU cores, NVIDIA SMs,
    # AMD CUs) is the compute size the projection scales prompt speed by within a device class.
    "gpu": {"name": (str, True, None), "cores": (int, True, _count_up_to(1 << 20)), "source": (str, True, None),
            "kind": (str, True, _one_of(KINDS)), "note": (str, False, None)},
    "memory": {
        "total": _sourced("gb"),
        "usable": _sourced("gb"),
        # iOS only: the per-app limit with the com.apple.developer.kernel.increased-memory-limit entitlement.
        "usable_with_entitlement": _sourced("gb"),
        "bandwidth": _sourced("gb_s"),
    },
    # The speed tables below are optional overrides: by default a device gets its class's numbers from the one
    # calibration file (speed_calibration.py, edgepack/data/speed-calibration.toml) times its compute size. A
    # device with its own measurements (``edgepack profiles calibrate``) overrides them here, each with its source.
    # Generation efficiency: achieved fraction of the theoretical bandwidth when reading the weights.
    "generation": {b: _sourced("efficiency", _efficiency) for b in BACKENDS},
    # Optional: the efficiency for one quant family or type on a backend, where it differs from the backend's
    # (Adreno's OpenCL kernels stream Q8_0 at about twice the fraction of bandwidth they reach on Q4_0).
    "generation_by_type": {b: {k: _sourced("efficiency", _efficiency) for k in QUANT_KEYS} for b in BACKENDS},
    # Optional: the time every generated token costs whatever the model (graph build, thread barriers or kernel
    # launches, sampling): base + per layer, where this device's measurements say otherwise than fit's estimate.
    "token_floor": {b: _sourced("base_ms", _non_negative, {"per_layer_ms": ((int, float), True, _non_negative)})
                    for b in BACKENDS},
    # CPU generation is also bounded by how fast the cores dequantize and multiply: billions of weights per
    # second per core-GHz of the threads used, per quant family. Optional (no bound without it).
    "generation_compute": {"cpu": {f: _sourced("gweights_per_core_ghz") for f in QUANT_KEYS}},
    # Prompt processing: effective dense GFLOP/s per backend and quant family or type (2 x params FLOPs per token).
    "prompt": {b: {f: _sourced("gflops") for f in QUANT_KEYS} for b in BACKENDS},
    "runtime": {
        "overhead": _sourced("mb"),
    },
}


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return "number"
    return {str: "string", int: "integer", float: "number", list: "list", bool: "boolean"}.get(t, t.__name__)


def _validate(data: dict, schema: dict, file: str, prefix: str = "") -> None:
    for key in data:
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise ProfileError(f"{file}:{prefix}{key}: unknown key", f"known keys here: {known}")
    for key, spec in schema.items():
        where = f"{file}:{prefix}{key}"
        if isinstance(spec, dict):
            if key not in data:
                # per-backend tables are checked against `backends` in parse_profile
                optional = key in ("usable_with_entitlement", "generation", "generation_compute", "prompt", "gpu",
                                   "generation_by_type", "token_floor") or prefix.startswith(
                    ("generation.", "generation_compute.", "prompt.", "generation_by_type.", "token_floor."))
                if not optional:
                    raise ProfileError(f"{where}: missing", f"add a [{prefix}{key}] table")
                continue
            if not isinstance(data[key], dict):
                raise ProfileError(f"{where}: must be a table", f"write [{prefix}{key}]")
            _validate(data[key], spec, file, f"{prefix}{key}.")
            continue
        typ, required, check = spec
        if key not in data:
            if required:
                raise ProfileError(f"{where}: missing", "every number needs value, source and kind"
                                   if key in ("source", "kind") else f"add {key} = ...")
            continue
        value = data[key]
        if isinstance(typ, list):  # list of tables
            if not isinstance(value, list) or not value:
                raise ProfileError(f"{where}: must be a non-empty list of tables", f"write [[{prefix}{key}]] entries")
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    raise ProfileError(f"{where}[{i}]: must be a table", f"write [[{prefix}{key}]]")
                _validate(item, typ[0], file, f"{prefix}{key}[{i}].")
            continue
        if isinstance(value, bool) or not isinstance(value, typ):
            raise ProfileError(f"{where}: must be a {_type_name(typ)}, got {type(value).__name__}",
                               "see edgepack/data/profiles/SCHEMA.md")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProfileError(f"{where}: must be finite", "see edgepack/data/profiles/SCHEMA.md")
        if isinstance(value, str) and key in ("source",) and len(value.strip()) < 8:
            raise ProfileError(f"{where}: too short to identify a source", "give a URL or a document title")
        if check is not None and (err := check(value)):
            raise ProfileError(f"{where}: {err}", "see edgepack/data/profiles/SCHEMA.md")
    if data.get("efficiency", 0) > 1 and data.get("kind") != "measurement":
        raise ProfileError(f"{file}:{prefix}efficiency: must be in (0, 1] unless kind = \"measurement\"",
                           "only a measured model held in the CPU's caches streams faster than the memory's spec")
    if data.get("kind") == "estimate" and "source" in schema and not data.get("note"):
        raise ProfileError(f"{file}:{prefix}kind: an estimate needs a note with the reasoning",
                           "add note = \"...\"")


@dataclass(frozen=True)
class Sourced:
    value: float
    source: str
    kind: str
    note: str = ""
