"""Validate edgepack's projection against published llama.cpp measurements on real devices.

Each row of benchmarks/data/measurements.csv (device profile, backend, model config, quant, threads, measured
pp/tg tok/s, runtime, source URL) is projected with the code `edgepack fit --config` runs (describe_config +
project). What is calibrated, and how (docs/fit.md has the reasoning):

* generation: tok/s = bandwidth (spec) x efficiency / bytes read per token. On GPU backends the efficiency is
  calibrated per (device class, quant family): the median over devices of each device's median
  measured/roofline ratio. On the CPU backend the cores can be the limit instead of the memory: tok/s =
  min(bandwidth x ceiling / bytes, core-GHz x rate / weights per token), where the ceiling is the best
  measured/roofline ratio any CPU device reached (memory-bound CPUs get there; core-bound ones fall short
  of it) and the rate (billions of weights per second per core-GHz) is calibrated per (class, family) like
  the efficiency. A row without a thread count ran llama-bench's default: every physical core (the
  performance cores on macOS), as common_cpu_get_num_math() decides.
* phones: a phone's CPU complex streams at most about 24 GB/s of its LPDDR bus whatever the speed grade, so a
  phone's CPU memory ceiling is also held to the most GB/s any phone CPU in the training rows streamed
  (phone_cpu_stream; a device kind, visible to the held-out check, not a per-device factor).
* prompt: tok/s = compute size x GFLOP/s per unit / FLOPs per token, where the compute size is a spec of the
  device (core-GHz of the threads used for CPU backends; GPU cores for GPU backends) and GFLOP/s per unit is
  calibrated per (device class, quant family) the same way.

Device classes: apple-cpu, arm-cpu, x86-cpu (CPU backend by SoC/ISA), metal, vulkan, cuda, opencl. A
(class, family) with no data falls back to the class over all families, then (generation only) to all
devices; prompt falls back to classes of the same kind (CPU or GPU), whose compute-size units match.

Two validation schemes are printed, every device counting once (its error is the median over its rows):
* in-sample: factors fitted on all rows, the held-out device included (how well the model can describe
  the data at all);
* leave-one-device-out: for each device, factors fitted on the other devices' rows only, then that device
  projected (what a user gets for a device edgepack has no measurement of -- the honest number).

Targets (issue 17): on phones (in-sample) prompt median <= 25% and generation median <= 15%; held out
(leave-one-device-out, all devices) generation median <= 20%, worst device <= 30%, prompt median <= 35%; the
weights llama.cpp reports (its model buffers: CPU + CPU_REPACK + GPU, tied embeddings included) within 3%.

    python -m benchmarks.projection                    # tables + both schemes; exit 1 if held-out misses
    python -m benchmarks.projection --write-calibration  # write the in-sample class factors into the one
                                                         # calibration file (edgepack/data/speed-calibration.toml)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from edgepack.fit import ModelDesc, describe_config, memory_needed, project, token_floor_s
from edgepack.profiles import PER_DEVICE_BACKENDS, Profile, Sourced, load_profiles
from edgepack.quants import QUANT_FAMILIES, family_of_key as _family_of
from edgepack.speed_calibration import CALIBRATION_FILE, to_toml
from tests.support.tinymodels import CONFIGS  # the fixtures in tests/fixtures

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

DATA = HERE / "data" / "measurements.csv"
GPU_CLASSES = ("metal", "vulkan", "cuda", "opencl", "hexagon")
N_CTX = 512  # pp512 / tg128 runs


def config(name: str) -> dict:
    if name.startswith("typed:"):
        return json.loads((HERE / "data" / "typed_configs.json").read_text())[name[6:]]
    return json.loads((CONFIGS / f"{name}.config.json").read_text())


@dataclasses.dataclass
class Row:
    device: str
    backend: str
    cls: str  # calibration class
    model: ModelDesc
    family: str
    key: str  # the main ggml type (q4_k, q2_k, ...): per-type rates win over the family's
    size: float  # compute size: core-GHz (CPU) or GPU cores
    pp: float | None
    tg: float | None
    tg_roofline: float  # tok/s at efficiency 1
    tg_core_roofline: float  # CPU: tok/s at 1 billion weights/s per core-GHz (0 for GPU backends)
    pp_per_unit: float  # tok/s per GFLOP/s
    source: str
    profile: Profile
    threads: int  # CPU threads the measurement used
    floor_s: float = 0.0  # the per-token floor project() adds (fit.TOKEN_FLOOR): calibration works on the rest
    weights_mib: float | None = None  # llama.cpp's model buffers (CPU + CPU_REPACK + GPU), when published

    @property
    def tg_net(self) -> float:
        """Measured tokens/s with the per-token floor taken out: what bandwidth or cores must explain."""
        return 1.0 / max(1.0 / self.tg - self.floor_s, 0.05 / self.tg)

    @property
    def tg_eff(self) -> float:
        return self.tg_net / self.tg_roofline

    @property
    def tg_core_rate(self) -> float:
        return self.tg_net / self.tg_core_roofline

    @property
    def pp_gflops_per_unit(self) -> float:
        return self.pp / self.pp_per_unit / self.size


def _unit_profile(profile: Profile, backend: str) -> Profile:
    """The profile with efficiency 1, 1 GFLOP/s and no core-speed bound: project() then gives the bandwidth
    roofline and tok/s per GFLOP/s, whatever calibrated numbers the profile holds."""
    one = Sourced(1.0, "unit", "estimate", "validation")
    return dataclasses.replace(profile, generation_efficiency={backend: one}, generation_efficiency_by_type={},
                               prompt_gflops={backend: {f: one for f in QUANT_FAMILIES}}, cpu_gweights_per_core_ghz={})


def load_rows(profiles: dict[str, Profile]) -> list[Row]:
    rows = []
    for r in csv.DictReader(DATA.open()):
        profile = profiles[r["profile"]]
        backend = r["backend"]
        model = describe_config(config(r["config"]), r["quant"], r["model"])
        unit = project(model, _unit_profile(profile, backend), backend, n_ctx=N_CTX, floor=False)
        threads = int(r["threads"]) if r["threads"] else llama_bench_default_threads(profile)
        size = profile.core_ghz(threads) if backend == "cpu" else float(profile.gpu_cores)
        core_roofline = size * 1e9 / model.matmul_params if backend == "cpu" else 0.0
        if backend != "cpu":
            size = profile.compute_size(backend)
        rows.append(Row(r["profile"], backend, profile.backend_class(backend), model, model.quant_family,
                        model.quant_key, size,
                        float(r["pp_tok_s"]) if r["pp_tok_s"] else None,
                        float(r["tg_tok_s"]) if r["tg_tok_s"] else None,
                        unit.tg_tokens_per_s, core_roofline, unit.pp_tokens_per_s, r["source"], profile, threads,
                        token_floor_s(model, backend), float(r["weights_mib"]) if r.get("weights_mib") else None))
    return rows


def llama_bench_default_threads(profile: Profile) -> int:
    """llama-bench's default -t (common_cpu_get_num_math): the physical cores, on macOS the performance cores."""
    if profile.soc.startswith("Apple"):
        return max(profile.clusters, key=lambda c: c.max_ghz).cores
    return sum(c.cores for c in profile.clusters)


# --- calibration ----------------------------------------------------------------------------------------------

def _per_device(rows: list[Row], value) -> dict[str, float]:
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r.device, []).append(value(r))
    return {d: statistics.median(v) for d, v in by.items()}


def _class_family(usable: list[Row], value, cls: str, family: str) -> float | None:
    dev = _per_device([r for r in usable if r.cls == cls and r.family == family], value)
    return statistics.median(dev.values()) if dev else None


def factor(rows: list[Row], kind: str, cls: str, family: str, key: str | None = None) -> tuple[float, str, dict]:
    """Calibrated factor for (class, quant type ``key``) from ``rows``, else (class, family): median over devices of
    each device's median.
    kind: "tg" (efficiency), "core" (CPU: billions of weights/s per core-GHz) or "pp" (GFLOP/s per compute
    unit). Returns (value, how it was obtained, the per-device values it is the median of).

    Fallbacks when the class has no device with this family: the class's other families, each converted by
    the family ratio seen in the other classes of the same kind (CPU or GPU) that have both families (kernel
    speed ratios such as K-quant vs Q4_0 are a property of llama.cpp's kernels more than of one device); then
    the class over all families; then classes of the same kind."""
    if kind == "core":
        # A row within 10% of the memory ceiling was memory-bound: its cores were at least that fast, which
        # says nothing about how fast they are (M2 Pro's F16 CPU row would make F16 cores look 3x slow).
        ceiling = cpu_memory_ceiling(rows)[0]
        usable = [r for r in rows if r.tg is not None and r.tg_core_roofline > 0 and r.tg_eff < 0.9 * ceiling]
        value = lambda r: r.tg_core_rate  # noqa: E731
    else:
        usable = [r for r in rows if (r.tg if kind == "tg" else r.pp) is not None and (kind == "tg" or r.size > 0)]
        value = (lambda r: r.tg_eff) if kind == "tg" else (lambda r: r.pp_gflops_per_unit)
    is_gpu = cls in GPU_CLASSES
    if key is not None and key != family:  # a quant type's own rate (Q2_K is not Q4_K on ARM)
        dev = _per_device([r for r in usable if r.cls == cls and r.key == key], value)
        if dev:
            return statistics.median(dev.values()), f"{cls}/{key} ({len(dev)} devices)", dev
    dev = _per_device([r for r in usable if r.cls == cls and r.family == family], value)
    if dev:
        return statistics.median(dev.values()), f"{cls}/{family} ({len(dev)} devices)", dev
    same_kind = sorted({r.cls for r in usable if (r.cls in GPU_CLASSES) == is_gpu and r.cls != cls})
    converted = []
    for other_fam in sorted({r.family for r in usable if r.cls == cls}):
        ratios = []
        for c in same_kind:
            a, b = _class_family(usable, value, c, other_fam), _class_family(usable, value, c, family)
            if a and b:
                ratios.append(b / a)
        if ratios:
            converted.append(_class_family(usable, value, cls, other_fam) * statistics.median(ratios))
    if converted:
        return statistics.median(converted), f"{cls}/other families x family ratio of other classes", {}
    steps = [(lambda r: r.cls == cls, f"{cls}/all families"),
             (lambda r: (r.cls in GPU_CLASSES) == is_gpu and r.family == family, f"{'gpu' if is_gpu else 'cpu'} classes/{family}"),
             (lambda r: (r.cls in GPU_CLASSES) == is_gpu, f"{'gpu' if is_gpu else 'cpu'} classes")]
    if kind in ("tg", "core"):
        steps += [(lambda r: True, "all devices")]
    for keep, how in steps:
        dev = _per_device([r for r in usable if keep(r)], value)
        if dev:
            return statistics.median(dev.values()), f"{how} ({len(dev)} devices)", dev
    return float("nan"), "no data", {}


def cpu_memory_ceiling(rows: list[Row]) -> tuple[float, str, dict]:
    """The best measured/roofline ratio any CPU device reached (its median over its rows): how much of the
    spec bandwidth a CPU backend gets when the cores are not the limit. Returns (value, how, per-device values)."""
    per_device = _per_device([r for r in rows if r.tg is not None and r.cls not in GPU_CLASSES], lambda r: r.tg_eff)
    best = max(per_device, key=per_device.get)
    return per_device[best], f"the best CPU device ({best}) of {len(per_device)}", per_device


def phone_cpu_stream(rows: list[Row]) -> tuple[float, str, dict]:
    """The most GB/s of weights any phone's CPU backend streamed (each phone: the median over its CPU rows): a
    phone's CPU complex reaches 18-24 GB/s of its 64-bit LPDDR bus whatever the speed grade (Galaxy S23 18 of 67,
    POCO F5 23 of 51, OnePlus 15 24 of 85 GB/s), so the CPU memory ceiling, a share of the spec bandwidth, would let
    a phone with fast memory stream far more than its CPU can. Returns (GB/s, how, per-device GB/s)."""
    per = _per_device([r for r in rows if r.tg is not None and r.cls not in GPU_CLASSES and r.profile.kind == "phone"],
                      lambda r: r.tg_eff * r.profile.bandwidth_gb_s.value)
    best = max(per, key=per.get)
    return per[best], f"the best phone CPU ({best}) of {len(per)}", per


def predict(row: Row, train: list[Row]) -> tuple[float | None, float | None]:
    """(tg, pp) of ``row`` as ``edgepack fit`` projects them: fit.project on the row's profile carrying the
    factors calibrated on ``train`` (what --write-calibration writes for all rows) and the row's thread count."""
    def number(value: float) -> Sourced:
        return Sourced(value, "calibrated on the training rows", "estimate", "validation")

    wants_pp = row.pp is not None and row.size > 0
    per_unit = factor(train, "pp", row.cls, row.family, row.key)[0] if wants_pp else 1.0
    if row.cls in GPU_CLASSES:
        efficiency, rates = factor(train, "tg", row.cls, row.family, row.key)[0], {}
    else:
        efficiency = cpu_memory_ceiling(train)[0]
        if row.profile.kind == "phone":  # a phone's CPU streams at most what the phones' CPUs were seen to
            efficiency = min(efficiency, phone_cpu_stream(train)[0] / row.profile.bandwidth_gb_s.value)
        rate = number(factor(train, "core", row.cls, row.family, row.key)[0])
        rates = {row.family: rate, row.key: rate}
    gflops = number(per_unit * row.size)
    fold = dataclasses.replace(
        row.profile, threads=number(row.threads), generation_efficiency={row.backend: number(efficiency)},
        generation_efficiency_by_type={},
        cpu_gweights_per_core_ghz=rates, prompt_gflops={row.backend: {row.family: gflops, row.key: gflops}})
    projected = project(row.model, fold, row.backend, n_ctx=N_CTX)
    return (projected.tg_tokens_per_s if row.tg is not None else None,
            projected.pp_tokens_per_s if wants_pp else None)


# --- report ---------------------------------------------------------------------------------------------------

def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.0f}%"


def evaluate(rows: list[Row]) -> dict:
    """Per-row errors under both schemes, and per-device medians."""
    out = {"in": {}, "lodo": {}}
    print(f"{'device':20} {'backend':6} {'model':18} {'quant':6} {'tg meas':>8} {'in':>6} {'lodo':>6} "
          f"{'pp meas':>8} {'in':>6} {'lodo':>6}")
    for r in rows:
        others = [x for x in rows if x.device != r.device]
        errs = {}
        for scheme, train in (("in", rows), ("lodo", others)):
            tg, pp = predict(r, train)
            e_tg = tg / r.tg - 1 if tg is not None else None
            e_pp = pp / r.pp - 1 if pp is not None else None
            d = out[scheme].setdefault(r.device, {"tg": [], "pp": []})
            if e_tg is not None:
                d["tg"].append(abs(e_tg))
            if e_pp is not None:
                d["pp"].append(abs(e_pp))
            errs[scheme] = (e_tg, e_pp)
        print(f"{r.device[:20]:20} {r.backend:6} {r.model.name.rsplit('-', 1)[0][:18]:18} {r.model.quant:6} "
              f"{r.tg or '-':>8} {_fmt(errs['in'][0]):>6} {_fmt(errs['lodo'][0]):>6} {r.pp or '-':>8} "
              f"{_fmt(errs['in'][1]):>6} {_fmt(errs['lodo'][1]):>6}")
    return out


TARGETS = {  # issue 17
    "lodo": {"tg_median": 0.20, "tg_worst": 0.30, "pp_median": 0.35},
    "phones": {"tg_median": 0.15, "pp_median": 0.25},
    "weights": 0.03,
}


def _medians(per_device: dict, keep=lambda d: True) -> tuple[dict, dict]:
    tg = {k: statistics.median(v["tg"]) for k, v in per_device.items() if v["tg"] and keep(k)}
    pp = {k: statistics.median(v["pp"]) for k, v in per_device.items() if v["pp"] and keep(k)}
    return tg, pp


def summarize(per_device: dict, label: str, targets: dict | None = None) -> bool:
    """Median and worst over devices (each device = the median of its rows) against ``targets``."""
    tg, pp = _medians(per_device)
    tg_med, tg_worst = statistics.median(tg.values()), max(tg.values())
    pp_med = statistics.median(pp.values())
    ok = targets is None or (tg_med <= targets["tg_median"] and tg_worst <= targets["tg_worst"]
                             and pp_med <= targets["pp_median"])
    goal = "" if targets is None else (f" -> {'targets met' if ok else 'TARGETS NOT MET'} (generation median <= "
                                       f"{targets['tg_median']:.0%}, worst <= {targets['tg_worst']:.0%}; prompt "
                                       f"median <= {targets['pp_median']:.0%})")
    print(f"{label}: generation median over {len(tg)} devices {100 * tg_med:.0f}%, worst {100 * tg_worst:.0f}% "
          f"({max(tg, key=tg.get)}); prompt median over {len(pp)} devices {100 * pp_med:.0f}%, worst "
          f"{100 * max(pp.values()):.0f}% ({max(pp, key=pp.get)}){goal}")
    return ok


def summarize_phones(per_device: dict, rows: list[Row], label: str, targets: dict | None) -> bool:
    """The same over phones only, per device and per row (every phone row once)."""
    phones = {r.device for r in rows if r.profile.kind == "phone"}
    tg, pp = _medians(per_device, lambda d: d in phones)
    tg_rows = [e for d in phones for e in per_device[d]["tg"]]
    pp_rows = [e for d in phones for e in per_device[d]["pp"]]
    tg_med, pp_med = statistics.median(tg.values()), statistics.median(pp.values())
    ok = targets is None or (tg_med <= targets["tg_median"] and pp_med <= targets["pp_median"])
    goal = "" if targets is None else (f" -> {'targets met' if ok else 'TARGETS NOT MET'} (generation median <= "
                                       f"{targets['tg_median']:.0%}, prompt median <= {targets['pp_median']:.0%})")
    print(f"{label}: generation median over {len(tg)} phones {100 * tg_med:.0f}% ({len(tg_rows)} rows: median "
          f"{100 * statistics.median(tg_rows):.0f}%), prompt median over {len(pp)} phones {100 * pp_med:.0f}% "
          f"({len(pp_rows)} rows: median {100 * statistics.median(pp_rows):.0f}%){goal}")
    return ok


def weights_table(rows: list[Row]) -> bool:
    """The weights llama.cpp reported (its model buffers) vs edgepack's memory model on the row's backend and ISA."""
    print(f"\n{'device':14} {'backend':8} {'model':30} {'quant':7} {'tied':5} {'llama.cpp MiB':>13} {'edgepack MiB':>12} "
          f"{'error':>6}")
    worst = 0.0
    for r in rows:
        if r.weights_mib is None:
            continue
        mem = memory_needed(r.model, 2048, backend=r.backend, isa=r.profile.isa)
        ours = mem.loaded_weights_bytes / 2**20
        err = ours / r.weights_mib - 1
        worst = max(worst, abs(err))
        print(f"{r.device[:14]:14} {r.backend:8} {r.model.name.rsplit('-', 1)[0][:30]:30} {r.model.quant:7} "
              f"{'yes' if r.model.tied_embeddings else 'no':5} {r.weights_mib:13.2f} {ours:12.2f} {100 * err:+5.1f}%")
    ok = worst <= TARGETS["weights"]
    print(f"weights: worst {100 * worst:.1f}% (target <= {TARGETS['weights']:.0%}) -> "
          f"{'target met' if ok else 'TARGET NOT MET'}")
    return ok


def device_table(errs: dict, rows: list[Row]) -> None:
    print(f"\n{'device':22} {'classes':18} {'|tg| in':>8} {'|tg| lodo':>10} {'|pp| in':>8} {'|pp| lodo':>10}")
    for d in sorted(errs["in"]):
        def m(scheme, k):
            v = errs[scheme][d][k]
            return f"{100 * statistics.median(v):.0f}%" if v else "-"
        cls = ",".join(sorted({r.cls for r in rows if r.device == d}))
        print(f"{d:22} {cls:18} {m('in', 'tg'):>8} {m('lodo', 'tg'):>10} {m('in', 'pp'):>8} {m('lodo', 'pp'):>10}")


# --- the calibration file -------------------------------------------------------------------------------

UNITS = {"cpu": "core-GHz of the threads used", "gpu": "GPU core", "device": "device (no published core count)"}


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def _entry(value_key: str, value: float, how: str, devices: dict) -> dict:
    entry = {value_key: value, "how": how}
    if devices:  # a fallback through other classes' ratios names no devices of its own
        entry["devices"] = {d: _sig(v) for d, v in sorted(devices.items())}
    return entry


def calibration(rows: list[Row], profiles: dict[str, Profile]) -> dict:
    """The class factors fitted on all ``rows`` (in-sample), per class of the measurements and of every shipped
    profile's backends, as speed_calibration.py reads them: what predict() uses, with the per-device values each
    factor is the median of."""
    ceiling, how, devices = cpu_memory_ceiling(rows)
    classes = sorted({r.cls for r in rows} | {p.backend_class(b) for p in profiles.values() for b in p.backends})
    out = {"fitted_on": f"{DATA.relative_to(REPO)}: {len(rows)} measurements on {len({r.device for r in rows})} devices",
           "cpu_memory_ceiling": _entry("efficiency", round(ceiling, 3), how, devices),
           "phone_cpu_stream": _entry("gb_s", round(phone_cpu_stream(rows)[0], 2), *phone_cpu_stream(rows)[1:]),
           "classes": {}}
    for cls in classes:
        is_gpu = cls in GPU_CLASSES
        unit = "device" if cls in PER_DEVICE_BACKENDS else "gpu" if is_gpu else "cpu"
        numbers: dict = {"unit": UNITS[unit]}
        direct_keys = sorted({r.key for r in rows if r.cls == cls and r.key not in QUANT_FAMILIES})
        if is_gpu:
            eff, how, devices = factor(rows, "tg", cls, "q4_0")
            numbers["generation"] = _entry("efficiency", round(eff, 3), how, devices)
            by_type = {}
            for key in QUANT_FAMILIES + tuple(direct_keys):
                k_eff, k_how, k_dev = factor(rows, "tg", cls, _family_of(key), key)
                if k_how.startswith(f"{cls}/{key} ") and abs(k_eff - eff) >= 0.01 * eff:
                    by_type[key] = _entry("efficiency", round(min(k_eff, 1.0), 3), k_how, k_dev)
            numbers["generation_by_type"] = by_type
        else:
            rates = {}
            for key in QUANT_FAMILIES + tuple(direct_keys):
                rate, how, devices = factor(rows, "core", cls, _family_of(key), key)
                if key in QUANT_FAMILIES or how.startswith(f"{cls}/{key} "):
                    rates[key] = _entry("gweights_per_core_ghz", round(rate, 3), how, devices)
            numbers["generation_compute"] = rates
        prompt = {}
        for key in QUANT_FAMILIES + tuple(direct_keys):
            per_unit, how, devices = factor(rows, "pp", cls, _family_of(key), key)
            if how != "no data" and (key in QUANT_FAMILIES or how.startswith(f"{cls}/{key} ")):
                prompt[key] = _entry("gflops_per_unit", float(f"{per_unit:.6g}"), how, devices)
        numbers["prompt"] = prompt
        out["classes"][cls] = numbers
    return out


CALIBRATION_HEADER = """Speed calibration of edgepack fit: factors per device class and quant family or ggml type.
Written by `python -m benchmarks.projection --write-calibration` from benchmarks/data/measurements.csv: do not
edit by hand, add measurements and rerun it. Device profiles (data/profiles/*.toml) hold facts; a device's
number = its class's factor here (x its compute size for prompt), unless its profile overrides it with its own
measurement. how = the class/type the factor comes from (or the fallback taken); devices = each device's median
value it is the median of. Units: efficiency = measured tg / bandwidth roofline; gweights_per_core_ghz = billions
of weights per second per core-GHz; gflops_per_unit = prompt GFLOP/s per unit (the class's unit); phone_cpu_stream
= the most GB/s a phone's CPU backend streams (its CPU efficiency is at most this / its bandwidth). docs/fit.md."""


def write_calibration(rows: list[Row], profiles: dict[str, Profile]) -> Path:
    from edgepack.fileio import atomic_write_text

    atomic_write_text(CALIBRATION_FILE, to_toml(calibration(rows, profiles), CALIBRATION_HEADER))
    return CALIBRATION_FILE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-calibration", action="store_true",
                    help="write the in-sample class factors into edgepack/data/speed-calibration.toml")
    args = ap.parse_args(argv)
    profiles = load_profiles()
    rows = load_rows(profiles)
    if args.write_calibration:
        print(f"wrote {write_calibration(rows, profiles).relative_to(REPO)}")
        return 0
    print(f"{len(rows)} measurements on {len({r.device for r in rows})} devices ({DATA.relative_to(REPO)}); "
          f"errors are projected / measured - 1\n")
    errs = evaluate(rows)
    device_table(errs, rows)
    print("\ncalibrated factors (in-sample):")
    for cls in sorted({r.cls for r in rows}):
        fams = sorted({r.family for r in rows if r.cls == cls})
        parts = []
        for fam in fams:
            ppf, how, _ = factor(rows, "pp", cls, fam)
            if cls in GPU_CLASSES:
                tg = f"tg eff {factor(rows, 'tg', cls, fam)[0]:.2f}"
            else:
                tg = f"tg {factor(rows, 'core', cls, fam)[0]:.2f} G weights/s per core-GHz"
            parts.append(f"{fam}: {tg}, pp {ppf:.1f} GFLOP/s/unit" + ("" if cls in how else " (fallback)"))
        print(f"  {cls:10} " + "; ".join(parts))
    ceiling, how, _ = cpu_memory_ceiling(rows)
    print(f"  CPU memory ceiling: {ceiling:.2f} of the spec bandwidth ({how})")
    stream, how, _ = phone_cpu_stream(rows)
    print(f"  phone CPU stream: at most {stream:.1f} GB/s of weights ({how})\n")
    ok_w = weights_table(rows)
    print()
    summarize(errs["in"], "in-sample, all devices        ")
    ok_phones = summarize_phones(errs["in"], rows, "in-sample, phones             ", TARGETS["phones"])
    summarize_phones(errs["lodo"], rows, "leave-one-device-out, phones  ", None)
    ok_lodo = summarize(errs["lodo"], "leave-one-device-out, all     ", TARGETS["lodo"])
    return 0 if ok_w and ok_phones and ok_lodo else 1


if __name__ == "__main__":
    sys.exit(main())
