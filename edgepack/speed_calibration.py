"""The speed calibration of ``edgepack fit``: one file of class factors, fitted on published measurements.

A device profile holds the device's facts (clusters, memory, GPU cores, ISA, each with its source). How fast
llama.cpp runs on a *class* of devices is calibration, and it lives in one file,
``edgepack/data/speed-calibration.toml``, written by ``python -m benchmarks.projection --write-calibration``
from ``benchmarks/data/measurements.csv``. Per device class (apple-cpu, arm-cpu, arm-i8mm-cpu, x86-cpu for the
CPU backend; metal, vulkan, cuda, opencl, hexagon) and quant family or ggml type it holds:

* ``generation``: the efficiency of a GPU/NPU backend (measured tg / bandwidth roofline), and
  ``generation_by_type`` where a type differs;
* ``generation_compute``: the CPU's weights per second per core-GHz (the core-speed bound of generation);
* ``prompt``: GFLOP/s per compute unit (core-GHz for a CPU, GPU cores, or one unit per device for opencl and
  hexagon, whose core counts are not published);
* ``cpu_memory_ceiling``: the share of the spec bandwidth a CPU reaches when its cores keep up;
* ``phone_cpu_stream``: the most GB/s a phone's CPU complex streams, whatever its LPDDR speed grade (a phone's CPU
  efficiency is at most this / its bandwidth).

Each number carries how it was fitted and the per-device values it was fitted on, so a recalibration is one
readable diff. ``device_numbers`` turns a class's factors into one device's numbers (x its compute size); a
profile's own speed tables, measured on that device, override them (``profiles.parse_profile``).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from .errors import ProfileError
from .profile_schema import Sourced

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CALIBRATION_FILE = Path(__file__).resolve().parent / "data" / "speed-calibration.toml"
SCHEMA_VERSION = 1
TABLES = ("generation_by_type", "generation_compute", "prompt")
VALUE_KEYS = {"generation": "efficiency", "generation_by_type": "efficiency",
              "generation_compute": "gweights_per_core_ghz", "prompt": "gflops_per_unit"}


@functools.lru_cache(maxsize=4)
def load(path: str | Path = CALIBRATION_FILE) -> dict:
    """The parsed calibration file, its shape checked (it is shipped data, but a hand edit should fail loudly)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read the speed calibration ({exc})",
                           "restore it: python -m benchmarks.projection --write-calibration") from exc
    if data.get("schema") != SCHEMA_VERSION:
        raise ProfileError(f"{path}:schema: must be {SCHEMA_VERSION}", "rewrite it with benchmarks/projection.py")
    ceiling = data.get("cpu_memory_ceiling", {})
    if not isinstance(ceiling.get("efficiency"), float):
        raise ProfileError(f"{path}:cpu_memory_ceiling.efficiency: missing", "rewrite it with benchmarks/projection.py")
    for cls, numbers in data.get("classes", {}).items():
        for table, entries in numbers.items():
            if table not in VALUE_KEYS:  # unit: words
                continue
            rows = {"": entries} if table == "generation" else entries
            for key, entry in rows.items():
                value = entry.get(VALUE_KEYS.get(table, ""))
                if not isinstance(value, (int, float)) or value <= 0 or not entry.get("how"):
                    where = f"classes.{cls}.{table}" + (f".{key}" if key else "")
                    raise ProfileError(f"{path}:{where}: needs a positive {VALUE_KEYS.get(table, 'number')} and how",
                                       "rewrite it with benchmarks/projection.py")
    return data


def _sourced(entry: dict, table: str, scale: float, path: Path, unit: str) -> Sourced:
    devices = ", ".join(f"{d} {v:g}" for d, v in entry.get("devices", {}).items()) or "see how"
    value = entry[VALUE_KEYS[table]]
    if table == "prompt":  # whole GFLOP/s of this device: the per-unit factor x its compute size
        value, size = float(max(round(value * scale), 1)), f" x {scale:g} {unit}"
    else:
        size = ""
    return Sourced(value, f"{path.name}: {entry['how']}{size}", "estimate", f"class factor fitted on: {devices}")


def device_numbers(cls: str, backend: str, size: float, path: str | Path = CALIBRATION_FILE,
                   phone_bandwidth_gb_s: float | None = None) -> dict:
    """One backend's numbers for a device of calibration class ``cls`` with compute ``size`` (core-GHz of its
    threads, GPU cores, or 1): ``efficiency`` (a Sourced, None without data), ``by_type``, ``rates`` (CPU) and
    ``prompt`` (GFLOP/s = the class's per-unit factor x size; empty when the size is unknown). A phone (its
    bandwidth given) has its CPU efficiency held to what a phone's CPU streams."""
    path = Path(path)
    data = load(path)
    numbers = data.get("classes", {}).get(cls, {})
    unit = numbers.get("unit", "unit")
    if backend == "cpu":
        efficiency = _sourced(data["cpu_memory_ceiling"], "generation", 1.0, path, unit)
        stream = data.get("phone_cpu_stream", {}).get("gb_s")
        if phone_bandwidth_gb_s and stream and stream / phone_bandwidth_gb_s < efficiency.value:
            efficiency = Sourced(round(stream / phone_bandwidth_gb_s, 4),
                                 f"{path.name}: phone_cpu_stream {stream:g} GB/s / this phone's "
                                 f"{phone_bandwidth_gb_s:g} GB/s ({data['phone_cpu_stream']['how']})", "estimate",
                                 "a phone's CPU streams at most what the phones' CPUs in the data did")
    else:
        efficiency = _sourced(numbers["generation"], "generation", 1.0, path, unit) if "generation" in numbers else None
    return {"efficiency": efficiency,
            "by_type": {k: _sourced(v, "generation_by_type", 1.0, path, unit)
                        for k, v in numbers.get("generation_by_type", {}).items()},
            "rates": {k: _sourced(v, "generation_compute", 1.0, path, unit)
                      for k, v in numbers.get("generation_compute", {}).items()},
            "prompt": {k: _sourced(v, "prompt", size, path, unit)
                       for k, v in numbers.get("prompt", {}).items()} if size > 0 else {}}


def _inline(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    return repr(float(value)) if isinstance(value, float) else str(value)


def to_toml(data: dict, header: str) -> str:
    """The calibration file's text: ``header`` as comments, then the tables in a stable order (one line per
    number, so a recalibration's diff shows what moved)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += ["", f"schema = {SCHEMA_VERSION}", f"fitted_on = {_inline(data['fitted_on'])}", "",
              "[cpu_memory_ceiling]"]
    lines += [f"{k} = {_inline(v)}" for k, v in data["cpu_memory_ceiling"].items()]
    lines += ["", "[phone_cpu_stream]"] + [f"{k} = {_inline(v)}" for k, v in data["phone_cpu_stream"].items()]
    for cls, numbers in data["classes"].items():
        lines += ["", f"[classes.{cls}]", f"unit = {_inline(numbers['unit'])}"]
        if "generation" in numbers:
            lines.append(f"generation = {_inline(numbers['generation'])}")
        for table in TABLES:
            if numbers.get(table):
                lines += ["", f"[classes.{cls}.{table}]"]
                lines += [f"{k} = {_inline(v)}" for k, v in numbers[table].items()]
    return "\n".join(lines) + "\n"


__all__ = ["CALIBRATION_FILE", "load", "device_numbers", "to_toml"]
