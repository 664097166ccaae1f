"""Calibrate a device profile from measurements made on that device.

``read_results`` reads what a user measured on their own phone or board: llama-bench's output (``-o json``,
``-o jsonl`` or the default markdown table) or ``edgepack bench --json``. Each result becomes a ``Measurement``
(model file, backend, threads, prompt and/or generation tokens/s). ``calibrate`` turns them into the profile's
own numbers, so that ``edgepack.fit.project`` gives back what was measured:

* prompt: GFLOP/s = measured pp x FLOPs per token, per backend and quant type (``[prompt.<backend>]``);
* generation on the CPU: the measured time per token without the per-token floor is the cores' time, so the
  weights rate per core-GHz of the threads used is set (``[generation_compute.cpu]``); where the profile's memory
  bound would be slower than that, the type's efficiency is set to what the token streamed
  (``[generation_by_type.cpu]``), above 1 for a model that stayed in the CPU's caches;
* generation on GPU/NPU backends: the efficiency (measured / bandwidth roofline), per quant type
  (``[generation_by_type.<backend>]``) and for the backend (the median);
* the per-token floor (``[token_floor.<backend>]``) where fit's estimate would leave less than a fifth of the
  fastest measured token to the weights;
* the thread count the CPU measurements used becomes the profile's ``cpu.threads``.

Quant types that were measured get their own rate, and each measured type's family gets the median of its
types, so an unmeasured type of a measured family moves with it. Every number written is ``kind =
"measurement"`` and its source quotes the measured tokens/s, model, threads and the results file. The model
files must be readable here (their path as recorded, or a file of the same name in ``--models``): the
calibration needs their tensors.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .fit import ModelDesc, describe_gguf, flops_per_token, kv_cache_bytes, token_floor_ms, token_floor_s
from .profiles import BACKENDS, Profile, load_profile_file, parse_profile, tomllib
from .quants import family_of_key

# llama-bench's backend names (its "backends" field / markdown column) -> edgepack's
BACKEND_NAMES = {"cpu": "cpu", "blas": "cpu", "metal": "metal", "blas,metal": "metal", "metal,blas": "metal",
                 "vulkan": "vulkan", "opencl": "opencl", "cuda": "cuda", "htp": "hexagon", "hexagon": "hexagon"}


@dataclass
class Measurement:
    model: str  # file name or path as recorded
    backend: str
    threads: int
    pp_tokens_per_s: float | None = None
    pp_tokens: int = 512
    tg_tokens_per_s: float | None = None
    tg_tokens: int = 128


def _backend(name: str, n_gpu_layers: int | None = None) -> str:
    key = name.strip().lower()
    if key.startswith("htp"):
        key = "htp"
    be = BACKEND_NAMES.get(key)
    if be is None:
        raise UsageError(f"unknown llama-bench backend {name!r}", f"known: {', '.join(sorted(BACKEND_NAMES))}")
    # llama-bench reports the GPU backend even with -ngl 0; then the CPU ran the model
    return "cpu" if n_gpu_layers == 0 else be


def _merge(rows: list[Measurement]) -> list[Measurement]:
    """One Measurement per (model, backend, threads), pp and tg tests combined."""
    out: dict[tuple, Measurement] = {}
    for r in rows:
        m = out.setdefault((r.model, r.backend, r.threads), Measurement(r.model, r.backend, r.threads))
        if r.pp_tokens_per_s is not None:
            m.pp_tokens_per_s, m.pp_tokens = r.pp_tokens_per_s, r.pp_tokens
        if r.tg_tokens_per_s is not None:
            m.tg_tokens_per_s, m.tg_tokens = r.tg_tokens_per_s, r.tg_tokens
    return list(out.values())


def _from_llama_bench_record(rec: dict) -> Measurement:
    try:
        n_prompt, n_gen, ts = int(rec["n_prompt"]), int(rec["n_gen"]), float(rec["avg_ts"])
        model, threads = str(rec["model_filename"]), int(rec["n_threads"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"not a llama-bench result: {exc}", "run llama-bench with -o json or -o jsonl") from exc
    backend = _backend(str(rec.get("backends") or rec.get("backend") or "CPU"), rec.get("n_gpu_layers"))
    if n_gen > 0 and n_prompt == 0:
        return Measurement(model, backend, threads, tg_tokens_per_s=ts, tg_tokens=n_gen)
    if n_prompt > 0 and n_gen == 0:
        return Measurement(model, backend, threads, pp_tokens_per_s=ts, pp_tokens=n_prompt)
    raise UsageError(f"{model}: a combined pp{n_prompt}+tg{n_gen} test cannot calibrate",
                     "run llama-bench's separate pp and tg tests (-p 512 -n 128)")


MD_TEST = re.compile(r"^(pp|tg)(\d+)$")


def _from_markdown(text: str, models: list[str]) -> list[Measurement]:
    """llama-bench's markdown table: | model | size | params | backend | [ngl] | threads | ... | test | t/s |.
    The table names the model by type ("llama 1B Q4_0"), not by file: ``models`` gives the files, in the order of
    the table's distinct model names."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 3:
        raise UsageError("no llama-bench markdown table found", "give llama-bench's output (or use -o json)")
    head = [c.strip().lower() for c in lines[0].strip("|").split("|")]
    need = ("model", "backend", "test", "t/s")
    if any(k not in head for k in need):
        raise UsageError(f"the table lacks {', '.join(k for k in need if k not in head)}",
                         "give llama-bench's own markdown output")
    names: list[str] = []
    rows = []
    for ln in lines[2:]:
        cells = dict(zip(head, (c.strip() for c in ln.strip("|").split("|"))))
        test = MD_TEST.match(cells["test"])
        if not test:
            continue
        if cells["model"] not in names:
            names.append(cells["model"])
        rows.append((cells, test))
    if len(models) != len(names):
        raise UsageError(f"the table has {len(names)} model(s) ({'; '.join(names)}) but {len(models)} --model file(s) "
                         "were given", "name the GGUF of each model, in the table's order, with --model")
    out = []
    for cells, test in rows:
        model = models[names.index(cells["model"])]
        threads = int(cells.get("threads") or 0)
        ngl = int(cells["ngl"]) if cells.get("ngl", "").isdigit() else None
        ts = float(cells["t/s"].split("±")[0])
        kind, n = test.group(1), int(test.group(2))
        m = Measurement(model, _backend(cells["backend"], ngl), threads)
        if kind == "pp":
            m.pp_tokens_per_s, m.pp_tokens = ts, n
        else:
            m.tg_tokens_per_s, m.tg_tokens = ts, n
        out.append(m)
    return out


def read_results(path: str | Path, models: list[str] | tuple = ()) -> list[Measurement]:
    """Measurements from llama-bench JSON / JSONL / markdown or ``edgepack bench --json``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})", "give llama-bench's or edgepack bench's output") from exc
    stripped = text.lstrip()
    if stripped.startswith("|"):
        return _merge(_from_markdown(text, list(models)))
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:  # JSONL: one record per line
            data = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: neither JSON, JSONL nor a markdown table ({exc})",
                             "give llama-bench -o json|jsonl|md output, or edgepack bench --json") from exc
    if isinstance(data, dict) and "models" in data:  # edgepack bench --json
        out = []
        for m in data["models"]:
            threads = int(m.get("threads") or data.get("host", {}).get("threads_used") or 0)
            out.append(Measurement(m["path"], "cpu", threads, m["pp"]["median"], int(m.get("n_prompt", 512)),
                                   m["tg"]["median"], int(m.get("n_gen", 128))))
        return out
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return _merge([_from_llama_bench_record(r) for r in data])
    raise UsageError(f"{path}: no measurements in it", "give llama-bench -o json output or edgepack bench --json")


def _find_model(name: str, search: list[Path]) -> ModelDesc:
    p = Path(name)
    candidates = [p] + [d / p.name for d in search]
    for c in candidates:
        if c.is_file():
            return describe_gguf(c)
    raise UsageError(f"model file {p.name} not found here", "copy it next to the results, or pass --models DIR")


# The per-token floor is an estimate for a backend kind; a tiny model on a fast device can run a token in less time
# than it allows. Then the device's own floor is lowered to this share of its fastest measured token, leaving the
# rest to the weights (one measurement cannot split the two; the share only matters for other model sizes).
FLOOR_SHARE_MAX = 0.8


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits: a written rate reproduces its measurement to 0.05%."""
    return float(f"{x:.{digits}g}")


def calibrate(profile: Profile, measurements: list[Measurement], *, name: str | None = None,
              models_dir: list[str | Path] | tuple = (), results_name: str = "results") -> str:
    """The TOML text of a copy of ``profile`` with overrides, per backend and quant type, that reproduce
    ``measurements`` whatever they are: measured rates are never capped by the profile's roofline (a model held in
    the CPU's caches generates faster than the DRAM allows: its efficiency is then above 1, as measured)."""
    if not measurements:
        raise UsageError("no measurements to calibrate from", "give llama-bench or edgepack bench results")
    search = [Path(d) for d in models_dir]
    for m in measurements:
        if m.backend not in profile.backends:
            raise UsageError(f"{Path(m.model).name}: measured on {m.backend}, which {profile.name} does not list",
                             f"its backends: {', '.join(profile.backends)}; start from a profile that has it")
    cpu_threads = [m.threads for m in measurements if m.backend == "cpu" and m.threads]
    threads = statistics.median_low(cpu_threads) if cpu_threads else int(profile.threads.value)
    if cpu_threads and threads > profile.n_cores:
        raise UsageError(f"measured with {threads} threads, but {profile.name} has {profile.n_cores} cores",
                         "start from a profile of this device")
    core_ghz = profile.core_ghz(threads)
    bandwidth = profile.bandwidth_gb_s.value * 1e9
    models = {m.model: _find_model(m.model, search) for m in measurements}
    floor_scale: dict[str, float] = {}  # backend -> factor on the profile's floor (below 1: lowered)
    for m in measurements:
        if m.tg_tokens_per_s:
            est = token_floor_s(models[m.model], m.backend, profile)
            if est > FLOOR_SHARE_MAX / m.tg_tokens_per_s:
                share = FLOOR_SHARE_MAX / m.tg_tokens_per_s / est
                floor_scale[m.backend] = min(floor_scale.get(m.backend, 1.0), share)
    gflops: dict[tuple[str, str], list[tuple[float, str]]] = {}
    rates: dict[str, list[tuple[float, str]]] = {}
    effs: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for m in measurements:
        model = models[m.model]
        key, be = model.quant_key, m.backend
        what = f"{Path(m.model).name} on {be}"
        if m.pp_tokens_per_s:
            # the profile's CPU GFLOP/s are for its own thread count (set to the measured one below)
            scale = core_ghz / profile.core_ghz(m.threads) if be == "cpu" and m.threads else 1.0
            g = m.pp_tokens_per_s * flops_per_token(model, 256) / 1e9 * scale
            gflops.setdefault((be, key), []).append((g, f"{what}: pp{m.pp_tokens} {m.pp_tokens_per_s:.2f} tok/s"))
        if m.tg_tokens_per_s:
            net_s = 1.0 / m.tg_tokens_per_s - token_floor_s(model, be, profile) * floor_scale.get(be, 1.0)
            bytes_tok = model.bytes_read_per_token + kv_cache_bytes(model, 512, 1) // 2
            streamed = bytes_tok / net_s / bandwidth  # the fraction of the spec bandwidth this token needed
            label = f"{what}: tg{m.tg_tokens} {m.tg_tokens_per_s:.2f} tok/s"
            if be == "cpu":
                used_ghz = profile.core_ghz(m.threads or threads)
                rates.setdefault(key, []).append((model.matmul_params / net_s / 1e9 / used_ghz, label))
                # the cores' rate sets the time; the memory bound must not be slower than what was measured
                if streamed > profile.efficiency("cpu", model.quant_family, key).value:
                    effs.setdefault((be, key), []).append((streamed, label))
            else:
                effs.setdefault((be, key), []).append((streamed, label))
    text = Path(profile.path).read_text(encoding="utf-8")
    new_name = name or f"{profile.name}-calibrated"
    if not re.fullmatch(r"[a-z0-9-]+", new_name):
        raise UsageError(f"profile name {new_name!r}: lower-case letters, digits and '-' only", "e.g. --name my-phone")
    text = re.sub(r'^name = ".*"$', f'name = "{new_name}"', text, count=1, flags=re.M)
    text = re.sub(r'^display_name = "(.*)"$', lambda mm: f'display_name = "{mm.group(1)} (calibrated)"', text,
                  count=1, flags=re.M)
    src = f"edgepack profiles calibrate from {results_name}"

    def put(table: str, k: str, field: str, values: list[tuple[float, str]], note: str) -> None:
        nonlocal text
        value = statistics.median(v for v, _ in values)
        quoted = "; ".join(label for _, label in values)
        text = set_sourced(text, table, k, {field: _sig(value)}, f"{src}: {quoted}", note, kind="measurement")

    for be, scale in sorted(floor_scale.items()):
        base_ms, per_layer_ms = token_floor_ms(be, profile)
        text = set_sourced(text, "token_floor", be, {"base_ms": _sig(base_ms * scale), "per_layer_ms":
                           _sig(per_layer_ms * scale)}, f"{src}: the fastest tg measured on {be}",
                           f"fit's floor estimate x {scale:.3f}: at most {FLOOR_SHARE_MAX:.0%} of the fastest "
                           "measured time per token", kind="measurement")
    for (be, key), vals in sorted(gflops.items()):
        put(f"prompt.{be}", key, "gflops", vals, "measured pp x FLOPs per token")
    for key, vals in sorted(rates.items()):
        put("generation_compute.cpu", key, "gweights_per_core_ghz", vals,
            f"measured tg without the per-token floor x weights per token / core-GHz of {threads} threads")
    for (be, key), vals in sorted(effs.items()):
        put(f"generation_by_type.{be}", key, "efficiency", vals, "measured tg without the per-token floor / "
            "bandwidth roofline" + (" (above 1: the weights stayed in the CPU's caches)" if be == "cpu" else ""))
    # families: the median of their measured types, so an unmeasured type of a measured family follows
    family = family_of_key

    for table, items, field in ((lambda be: f"prompt.{be}", gflops, "gflops"),
                                (lambda be: f"generation_by_type.{be}", effs, "efficiency")):
        by_family: dict[tuple[str, str], list] = {}
        for (be, key), vals in items.items():
            if key != family(key):
                by_family.setdefault((be, family(key)), []).extend(vals)
        for (be, fam), vals in sorted(by_family.items()):
            if (be, fam) not in items:
                put(table(be), fam, field, vals, f"median of the measured {fam} types")
    fam_rates: dict[str, list] = {}
    for key, vals in rates.items():
        if key != family(key):
            fam_rates.setdefault(family(key), []).extend(vals)
    for fam, vals in sorted(fam_rates.items()):
        if fam not in rates:
            put("generation_compute.cpu", fam, "gweights_per_core_ghz", vals, f"median of the measured {fam} types")
    for be in sorted({be for be, _ in effs if be != "cpu"}):
        vals = [v for (b, _), vs in effs.items() if b == be for v in vs]
        put("generation", be, "efficiency", vals, "median over the measured quant types")
    if cpu_threads:
        text = re.sub(r"^threads = \{.*\}$", f'threads = {{ value = {threads}, source = "{src}: the thread count of the '
                      f'CPU measurements", kind = "measurement" }}', text, count=1, flags=re.M)
    # the result must be a valid profile
    parse_profile(tomllib.loads(text), f"{new_name}.toml")
    return text


def calibrate_file(profile: Profile, results: str | Path, out: str | Path | None = None, *, name: str | None = None,
                   models: list[str] | tuple = (), models_dir: list[str | Path] | tuple = ()) -> Path:
    """Read ``results``, calibrate ``profile`` and write ``<name>.toml`` (atomically) into ``out`` (a folder or a
    .toml path; default: the current folder). Returns the written path."""
    from .fileio import atomic_write_text

    measurements = read_results(results, models)
    new_name = name or f"{profile.name}-calibrated"
    if out is not None and str(out).endswith(".toml"):
        new_name = name or Path(out).stem
        path = Path(out)
    else:
        path = Path(out or ".") / f"{new_name}.toml"
    text = calibrate(profile, measurements, name=new_name, models_dir=list(models_dir) + [Path(results).parent],
                     results_name=Path(results).name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    load_profile_file(path)  # name matches file, schema holds
    return path


def set_sourced(text: str, table: str, key: str, values: dict[str, float], source: str, note: str,
                kind: str = "estimate") -> str:
    """Set ``key = { <values>, source, kind, note }`` inside ``[table]`` of a profile's TOML text, keeping
    everything else as written: the line is replaced, or added at the end of the table, or the table is added
    before the first [prompt.*] table (the end of the file without one)."""
    src, note = source.replace('"', "'"), note.replace('"', "'")
    numbers = ", ".join(f"{k} = {v}" for k, v in values.items())
    entry = f'{key} = {{ {numbers}, source = "{src}", kind = "{kind}", note = "{note}" }}\n'
    lines = text.splitlines(keepends=True)
    current, table_end = None, None
    for i, line in enumerate(lines):
        m = re.match(r"^\[([^\]]+)\]\s*$", line)
        if m:
            current = m.group(1)
            continue
        if current == table:
            if re.match(rf"^{re.escape(key)}\s*=\s*\{{", line):
                lines[i] = entry
                return "".join(lines)
            if line.strip():
                table_end = i + 1
    if table_end is not None:
        lines.insert(table_end, entry)
        return "".join(lines)
    first_prompt = next((i for i, line in enumerate(lines) if line.startswith("[prompt")), len(lines))
    if first_prompt == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines[first_prompt:first_prompt] = [f"[{table}]\n", entry, "\n"]
    return "".join(lines)


__all__ = ["Measurement", "read_results", "calibrate", "calibrate_file", "BACKENDS"]
