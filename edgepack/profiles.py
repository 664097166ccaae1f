"""Device profiles: TOML files describing a phone, laptop or board, every number with its source.

A profile is data (``edgepack/data/profiles/*.toml``), validated against the schema below and loaded into a frozen
``Profile``. The rule that keeps the numbers honest: any table that holds a number must also say where
the number comes from (``source``: a URL or document) and what it is (``kind``: ``spec`` -- the vendor's
figure, ``measurement`` -- someone ran something, ``estimate`` -- reasoning, which then needs a ``note``).

Users add their own profiles with ``--profiles DIR_OR_FILE``; a malformed one is rejected with
``file:key: reason`` (``ProfileError``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ProfileError
from .limits import MAX_THREADS
from .quants import QUANT_FAMILIES
from .validate import safe_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Shipped inside the package (package data), so a plain `pip install` has them too.
SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "profiles"
SCHEMA_VERSION = 1

KINDS = ("spec", "measurement", "estimate")
DEVICE_KINDS = ("phone", "tablet", "laptop", "desktop", "sbc", "embedded")
# hexagon: llama.cpp's backend for Qualcomm's Hexagon NPU (ggml-hexagon); opencl: its Adreno GPU backend.
BACKENDS = ("cpu", "metal", "vulkan", "opencl", "cuda", "hexagon")
GPU_BACKENDS = tuple(b for b in BACKENDS if b != "cpu")
PER_DEVICE_BACKENDS = ("opencl", "hexagon")  # calibrated per device: no published core counts (Profile.compute_size)  # backends that hold the offloaded layers' weights
# Prompt processing speed depends on the weight format's kernels (quants.QUANT_FAMILIES): a profile must give
# every family and may add a rate for one ggml type (QUANT_TYPE_KEYS), which then wins over its family's
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
    # the DRAM spec; 64 bounds a typo
    return None if 0 < v <= 64 else "must be in (0, 1] (a measurement: at most 64)"


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


# --- the loaded profile -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sourced:
    value: float
    source: str
    kind: str
    note: str = ""


@dataclass(frozen=True)
class Cluster:
    name: str
    cores: int
    max_ghz: float


@dataclass(frozen=True)
class Profile:
    name: str
    display_name: str
    kind: str
    soc: str
    os: str
    backends: tuple[str, ...]
    default_backend: str
    isa: tuple[str, ...]
    clusters: tuple[Cluster, ...]
    threads: Sourced
    ram_total_gb: Sourced
    ram_usable_gb: Sourced
    bandwidth_gb_s: Sourced
    generation_efficiency: dict[str, Sourced]
    prompt_gflops: dict[str, dict[str, Sourced]]
    runtime_overhead_mb: Sourced
    # quant family -> billions of weights per second per core-GHz the CPU backend can process (empty: no bound)
    cpu_gweights_per_core_ghz: dict[str, Sourced] = field(default_factory=dict)
    # backend -> quant family or type -> generation efficiency, where it differs from the backend's
    generation_efficiency_by_type: dict[str, dict[str, Sourced]] = field(default_factory=dict)
    # backend -> (base ms, ms per layer) of the per-token floor, where the device overrides fit's estimate
    token_floor_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    gpu_name: str = ""
    gpu_cores: int = 0  # 0: no [gpu] table
    storage: str = ""
    notes: str = ""
    path: str = ""
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def usable_bytes(self) -> int:
        return int(self.ram_usable_gb.value * 1e9)

    @property
    def device_class(self) -> str:
        """Which calibration class the CPU backend falls in (see docs/fit.md): apple-cpu, x86-cpu, arm-i8mm-cpu
        (ARM cores with the int8 matrix-multiply extension: llama.cpp repacks Q4_0/Q8_0/Q4_K.. into its i8mm
        kernels, about twice the prompt speed of the dotprod ones) or arm-cpu (dotprod only)."""
        if self.soc.startswith("Apple"):
            return "apple-cpu"
        if any(f in self.isa for f in ("avx2", "avx512", "avx_vnni")):
            return "x86-cpu"
        return "arm-i8mm-cpu" if "i8mm" in self.isa else "arm-cpu"

    def backend_class(self, backend: str) -> str:
        """Calibration class of ``backend`` on this device: the CPU class, or metal / vulkan / opencl / cuda."""
        return self.device_class if backend == "cpu" else backend

    @property
    def n_cores(self) -> int:
        return sum(c.cores for c in self.clusters)

    def core_ghz(self, threads: int | None = None) -> float:
        """Sum of max clocks over the ``threads`` fastest cores (default: the profile's thread count): the CPU
        size prompt speed is scaled by within a device class."""
        n = int(threads or self.threads.value)
        clocks = sorted((c.max_ghz for c in self.clusters for _ in range(c.cores)), reverse=True)
        return sum(clocks[:n])

    def compute_size(self, backend: str) -> float:
        """Core-GHz for the CPU backend, GPU cores for the others (0 when the profile has no [gpu]); the phone
        accelerators (opencl on Adreno, hexagon) count as one unit each: vendors publish no core counts for them, so
        their class factors are per device."""
        if backend == "cpu":
            return self.core_ghz()
        if backend in PER_DEVICE_BACKENDS and not self.gpu_cores:
            return 1.0
        return float(self.gpu_cores)

    def efficiency(self, backend: str, family: str | None = None, key: str | None = None) -> Sourced:
        """Generation efficiency of ``backend``: for the quant type ``key`` or its ``family`` when the profile's
        [generation_by_type.<backend>] gives one, else the backend's."""
        by_type = self.generation_efficiency_by_type.get(backend, {})
        return by_type.get(key or "") or by_type.get(family or "") or self.generation_efficiency[backend]

    def gflops(self, backend: str, family: str, key: str | None = None) -> Sourced:
        """Prompt GFLOP/s of ``backend`` for a quant type ``key`` (e.g. q4_k) when the profile gives one, else for
        its ``family``."""
        rates = self.prompt_gflops[backend]
        return rates.get(key or family) or rates[family]

    def cpu_weights_rate(self, family: str, key: str | None = None) -> Sourced | None:
        """Billions of weights per second per core-GHz for the CPU backend and quant type ``key`` or, without a
        rate for it, ``family`` (None: not given)."""
        rates = self.cpu_gweights_per_core_ghz
        return rates.get(key or family) or rates.get(family)

    def summary(self) -> dict:
        """Plain dict for --json and reports (numbers with their provenance)."""
        return self.raw


def _s(d: dict, key: str) -> Sourced:
    return Sourced(float(d[key]), d["source"], d["kind"], d.get("note", ""))


def parse_profile(data: dict, file: str) -> Profile:
    """Validate ``data`` (a parsed TOML document) and build the ``Profile``."""
    _validate(data, SCHEMA, file)
    where = f"{file}:"
    if data["default_backend"] not in data["backends"]:
        raise ProfileError(f"{where}default_backend: {data['default_backend']!r} is not in backends",
                           "list it in backends")
    generation = data.get("generation", {})
    prompt = data.get("prompt", {})
    for backend in data["backends"]:
        if backend not in generation:
            raise ProfileError(f"{where}generation.{backend}: missing", "every listed backend needs an efficiency")
        missing = [f for f in QUANT_FAMILIES if f not in prompt.get(backend, {})]
        if missing:
            raise ProfileError(f"{where}prompt.{backend}.{missing[0]}: missing",
                               f"give gflops for every quant family: {', '.join(QUANT_FAMILIES)}")
    for backend in (list(generation) + list(prompt) + list(data.get("generation_by_type", {}))
                    + list(data.get("token_floor", {}))):
        if backend not in data["backends"]:
            raise ProfileError(f"{where}generation.{backend}: backend not in backends", "add it or remove the table")
    if data.get("generation_compute", {}).get("cpu") and "cpu" not in data["backends"]:
        raise ProfileError(f"{where}generation_compute.cpu: backend not in backends", "add cpu or remove the table")
    mem = data["memory"]
    if mem["usable"]["gb"] > mem["total"]["gb"]:
        raise ProfileError(f"{where}memory.usable.gb: {mem['usable']['gb']} exceeds memory.total.gb "
                           f"{mem['total']['gb']}", "usable RAM is a part of the total")
    cores = sum(c["cores"] for c in data["cpu"]["clusters"])
    if data["cpu"]["threads"]["value"] > cores:
        raise ProfileError(f"{where}cpu.threads.value: {data['cpu']['threads']['value']} exceeds the {cores} cores",
                           "llama.cpp should not use more threads than cores")
    if mem["bandwidth"]["gb_s"] > 2000:
        raise ProfileError(f"{where}memory.bandwidth.gb_s: {mem['bandwidth']['gb_s']} GB/s is not an edge device",
                           "bandwidth is in GB/s")
    return Profile(
        name=data["name"], display_name=data["display_name"], kind=data["kind"], soc=data["soc"], os=data["os"],
        backends=tuple(data["backends"]), default_backend=data["default_backend"], isa=tuple(data["isa"]),
        clusters=tuple(Cluster(c["name"], c["cores"], float(c["max_ghz"])) for c in data["cpu"]["clusters"]),
        threads=_s(data["cpu"]["threads"], "value"), ram_total_gb=_s(mem["total"], "gb"),
        ram_usable_gb=_s(mem["usable"], "gb"), bandwidth_gb_s=_s(mem["bandwidth"], "gb_s"),
        generation_efficiency={b: _s(v, "efficiency") for b, v in generation.items()},
        prompt_gflops={b: {f: _s(v, "gflops") for f, v in fams.items()} for b, fams in prompt.items()},
        runtime_overhead_mb=_s(data["runtime"]["overhead"], "mb"),
        cpu_gweights_per_core_ghz={f: _s(v, "gweights_per_core_ghz")
                                   for f, v in data.get("generation_compute", {}).get("cpu", {}).items()},
        generation_efficiency_by_type={b: {k: _s(v, "efficiency") for k, v in keys.items()}
                                       for b, keys in data.get("generation_by_type", {}).items()},
        token_floor_ms={b: (float(v["base_ms"]), float(v["per_layer_ms"]))
                        for b, v in data.get("token_floor", {}).items()},
        gpu_name=data.get("gpu", {}).get("name", ""), gpu_cores=int(data.get("gpu", {}).get("cores", 0)),
        storage=data.get("storage", ""), notes=data.get("notes", ""), path=file, raw=data)


def load_profile_file(path: str | Path) -> Profile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})", "check the path") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc})", "fix the syntax") from exc
    profile = parse_profile(data, str(path))
    if profile.name != path.stem:
        raise ProfileError(f"{path}:name: {profile.name!r} does not match the file name {path.stem!r}",
                           f"rename the file to {profile.name}.toml or fix name")
    return profile


def _files(location: Path) -> list[Path]:
    if location.is_dir():
        return sorted(location.glob("*.toml"))
    if location.is_file():
        return [location]
    raise ProfileError(f"{location}: no such profile file or folder", "give a .toml file or a folder of them")


def load_profiles(extra: list[str | Path] | tuple = ()) -> dict[str, Profile]:
    """The shipped profiles plus any from ``extra`` (files or folders); a later one replaces an earlier one."""
    out: dict[str, Profile] = {}
    for location in [SHIPPED_DIR, *map(Path, extra)]:
        for f in _files(location):
            p = load_profile_file(f)
            out[p.name] = p
    return out


def get_profile(name: str, extra: list[str | Path] | tuple = ()) -> Profile:
    """A profile by name, or by path to a .toml file."""
    if name.endswith(".toml") or Path(name).is_file():
        return load_profile_file(name)
    profiles = load_profiles(extra)
    if name not in profiles:
        close = [n for n in profiles if name.lower() in n or n in name.lower()]
        raise ProfileError(f"unknown profile {name!r}",
                           f"did you mean {', '.join(close)}?" if close else "see `edgepack profiles list`")
    return profiles[name]
