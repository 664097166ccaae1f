"""Device profiles: TOML files describing a phone, laptop or board, every number with its source.

A profile is data (``edgepack/data/profiles/*.toml``), validated against the schema below and loaded into a frozen
``Profile``. The rule that keeps the numbers honest: any table that holds a number must also say where
the number comes from (``source``: a URL or document) and what it is (``kind``: ``spec`` -- the vendor's
figure, ``measurement`` -- someone ran something, ``estimate`` -- reasoning, which then needs a ``note``).

Users add their own profiles with ``--profiles DIR_OR_FILE``; a malformed one is rejected with
``file:key: reason`` (``ProfileError``).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import speed_calibration
from .errors import ProfileError
from .profile_schema import (BACKENDS, GPU_BACKENDS, PER_DEVICE_BACKENDS, QUANT_FAMILIES, QUANT_KEYS, SCHEMA,
                             Sourced, _validate)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Shipped inside the package (package data), so a plain `pip install` has them too.
SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "profiles"
# --- the loaded profile -------------------------------------------------------------------------------

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


def parse_profile(data: dict, file: str, calibration: str | Path = speed_calibration.CALIBRATION_FILE) -> Profile:
    """Validate ``data`` (a parsed TOML document) and build the ``Profile``: its facts, with the speed numbers
    of its class from ``calibration`` under any the profile gives itself."""
    _validate(data, SCHEMA, file)
    where = f"{file}:"
    if data["default_backend"] not in data["backends"]:
        raise ProfileError(f"{where}default_backend: {data['default_backend']!r} is not in backends",
                           "list it in backends")
    generation = data.get("generation", {})
    prompt = data.get("prompt", {})
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
    return _with_calibration(Profile(
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
        storage=data.get("storage", ""), notes=data.get("notes", ""), path=file, raw=data), calibration)


def _with_calibration(profile: Profile, calibration: str | Path) -> Profile:
    """``profile`` with its class's speed numbers from the calibration file (x its compute size) under its own
    tables, which override them (a device's own measurements)."""
    efficiency, by_type, prompt, rates = {}, {}, {}, dict(profile.cpu_gweights_per_core_ghz)
    for backend in profile.backends:
        cls = profile.backend_class(backend)
        numbers = speed_calibration.device_numbers(cls, backend, profile.compute_size(backend), calibration,
                                                   profile.bandwidth_gb_s.value if profile.kind == "phone" else None)
        efficiency[backend] = profile.generation_efficiency.get(backend) or numbers["efficiency"]
        if efficiency[backend] is None:
            raise ProfileError(f"{profile.path}:generation.{backend}: missing",
                               f"the speed calibration has no class {cls}: give its efficiency in the profile")
        if types := numbers["by_type"] | profile.generation_efficiency_by_type.get(backend, {}):
            by_type[backend] = types
        prompt[backend] = numbers["prompt"] | profile.prompt_gflops.get(backend, {})
        missing = [f for f in QUANT_FAMILIES if f not in prompt[backend]]
        if missing:
            raise ProfileError(f"{profile.path}:prompt.{backend}.{missing[0]}: missing",
                               f"the speed calibration has no {cls} rate for it (or the profile no [gpu] cores): "
                               f"give gflops for every quant family: {', '.join(QUANT_FAMILIES)}")
        if backend == "cpu":
            rates = numbers["rates"] | rates
    return dataclasses.replace(profile, generation_efficiency=efficiency, generation_efficiency_by_type=by_type,
                               prompt_gflops=prompt, cpu_gweights_per_core_ghz=rates)


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


__all__ = ["Profile", "Cluster", "Sourced", "SHIPPED_DIR", "BACKENDS", "GPU_BACKENDS", "QUANT_FAMILIES", "QUANT_KEYS",
           "PER_DEVICE_BACKENDS", "parse_profile", "load_profile_file", "load_profiles", "get_profile", "tomllib"]
