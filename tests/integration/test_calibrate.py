"""edgepack profiles calibrate: a profile fitted to measurements made on this host, in llama-bench's formats."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.bench import bench_one, host_isa, measure_bandwidth_gb_s
from edgepack.calibrate import calibrate_file, read_results
from edgepack.errors import UsageError
from edgepack.fit import describe_gguf, project, token_floor_s
from edgepack.profiles import SHIPPED_DIR, load_profile_file

pytestmark = pytest.mark.slow  # measures this host with llama.cpp (bench runs of several models)

THREADS = 2


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """Two quant types of a small random Llama, benchmarked here the way llama-bench does (edgepack bench), written
    as llama-bench's -o json records; and a profile describing this host (its cores, measured bandwidth, ISA)."""
    from edgepack.convert import convert
    from edgepack.quantize import quantize
    from tests.support.quantmodels import random_llama

    root = tmp_path_factory.mktemp("calibrate")
    random_llama(root / "hf", hidden=256, layers=2, intermediate=704, heads=4, std=0.02, dtype=np.float16)
    convert(root / "hf", root / "m-F16.gguf", outtype="f16")
    models = {r.type: r.output for r in quantize(root / "m-F16.gguf", ["Q4_0", "Q8_0"], root / "q", threads=THREADS)}
    records = []
    for quant, path in models.items():
        b = bench_one(path, n_prompt=128, n_gen=32, reps=2, threads=THREADS)
        desc = describe_gguf(path)
        common = {"build_commit": "edgepack-bench", "model_filename": str(path), "model_type": f"llama ? {quant}",
                  "model_size": desc.weight_bytes, "model_n_params": desc.n_params, "n_batch": 2048,
                  "n_ubatch": 512, "n_threads": THREADS, "backends": "CPU", "n_gpu_layers": 99, "repack": True}
        records.append(common | {"n_prompt": 128, "n_gen": 0, "avg_ts": b.pp.median, "samples_ts": b.pp.runs})
        records.append(common | {"n_prompt": 0, "n_gen": 32, "avg_ts": b.tg.median, "samples_ts": b.tg.runs})
    results = root / "llama-bench.json"
    results.write_text(json.dumps(records, indent=2))
    # this host as a profile: a shipped x86 profile with this machine's cores, bandwidth and ISA
    text = (SHIPPED_DIR / "x86-laptop-ddr5.toml").read_text().replace('name = "x86-laptop-ddr5"', 'name = "this-host"')
    n = os.cpu_count() or 1
    text = re.sub(r"^clusters = \[\n(?:.*\n)*?\]\n", f'clusters = [\n  {{ name = "host", cores = {n}, max_ghz = 3.0, '
                  'source = "this test machine", kind = "estimate", note = "any clock: calibration absorbs it" },\n]\n',
                  text, flags=re.M)
    text = re.sub(r"^threads = \{.*\}$", f'threads = {{ value = {min(n, 4)}, source = "this test machine", '
                  'kind = "estimate", note = "before calibration" }', text, flags=re.M)
    text = re.sub(r"^bandwidth = \{ gb_s = [0-9.]+", f"bandwidth = {{ gb_s = {measure_bandwidth_gb_s(128, 3)}", text,
                  flags=re.M)
    text = re.sub(r"^isa = .*$", f"isa = {json.dumps(list(host_isa()))}", text, flags=re.M)
    profile = root / "this-host.toml"
    profile.write_text(text)
    return {"root": root, "models": models, "results": results, "records": records, "profile": profile}


@pytest.mark.slow
def test_calibrated_profile_projects_this_host_within_10_percent(measured, tmp_path):
    res = subprocess.run([sys.executable, "-m", "edgepack", "profiles", "calibrate", str(measured["profile"]),
                          "--from", str(measured["results"]), "-o", str(tmp_path), "--name", "my-host"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    calibrated = load_profile_file(tmp_path / "my-host.toml")
    assert calibrated.threads.value == THREADS and calibrated.threads.kind == "measurement"
    before = load_profile_file(measured["profile"])
    by = {(r["model_filename"], r["n_gen"] > 0): r["avg_ts"] for r in measured["records"]}
    for quant, path in measured["models"].items():
        model = describe_gguf(path)
        after_p, before_p = project(model, calibrated, "cpu"), project(model, before, "cpu")
        pp, tg = by[(str(path), False)], by[(str(path), True)]
        assert after_p.pp_tokens_per_s == pytest.approx(pp, rel=0.10), quant
        assert after_p.tg_tokens_per_s == pytest.approx(tg, rel=0.10), quant
        assert model.quant_key in calibrated.prompt_gflops["cpu"]
        # the source of each calibrated number quotes the measurement
        assert f"{Path(path).name} on cpu: pp128" in calibrated.gflops("cpu", model.quant_family, model.quant_key).source
        # and calibration changed something: the uncalibrated class factors are not this host
        assert (abs(before_p.pp_tokens_per_s / pp - 1) > 0.02) or (abs(before_p.tg_tokens_per_s / tg - 1) > 0.02)


@pytest.mark.parametrize("faster", [False, True])
def test_calibration_reproduces_any_speed(measured, tmp_path, faster):
    """Whatever a device measured, the calibrated profile gives it back: a host 20x slower than this one, or one so
    fast that its tiny models generate past the DRAM roofline and the per-token floor estimate (2 tokens per
    floor, at least 30x this host)."""
    floor_s = min(token_floor_s(describe_gguf(p), "cpu") for p in measured["models"].values())
    fastest = max(r["avg_ts"] for r in measured["records"] if r["n_gen"])
    speedup = max(30.0, 2 / floor_s / fastest) if faster else 0.05
    records = [r | {"avg_ts": r["avg_ts"] * speedup} for r in measured["records"]]
    results = tmp_path / "scaled.json"
    results.write_text(json.dumps(records))
    calibrated = load_profile_file(calibrate_file(load_profile_file(measured["profile"]), results, tmp_path,
                                                  name="scaled"))
    by = {(r["model_filename"], r["n_gen"] > 0): r["avg_ts"] for r in records}
    for quant, path in measured["models"].items():
        projected = project(describe_gguf(path), calibrated, "cpu")
        assert projected.pp_tokens_per_s == pytest.approx(by[(str(path), False)], rel=0.01), quant
        assert projected.tg_tokens_per_s == pytest.approx(by[(str(path), True)], rel=0.01), quant
    if faster:  # faster than the floor estimate allows: the device's own floor, kept as a measurement
        assert calibrated.raw["token_floor"]["cpu"]["kind"] == "measurement"
        assert token_floor_s(describe_gguf(measured["models"]["Q4_0"]), "cpu", calibrated) <= 0.801 / fastest / speedup
        assert max(t.value for t in calibrated.generation_efficiency_by_type["cpu"].values()) > 1  # past the DRAM
    else:
        assert "token_floor" not in calibrated.raw


def test_llama_bench_formats_agree(measured, tmp_path):
    """The same results as -o json, -o jsonl and llama-bench's markdown table read the same."""
    from_json = read_results(measured["results"])
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in measured["records"]) + "\n")
    md = tmp_path / "r.md"
    lines = ["| model | size | params | backend | threads | test | t/s |", "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for r in measured["records"]:
        test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        lines.append(f"| {r['model_type']} | 1.00 MiB | 1.00 M | CPU | {r['n_threads']} | {test} | "
                     f"{r['avg_ts']:.2f} ± 0.10 |")
    md.write_text("\n".join(lines) + "\n\nbuild: edgepack-bench\n")
    files = [str(p) for p in measured["models"].values()]
    for other in (read_results(jsonl), read_results(md, files)):
        assert [(m.model, m.backend, m.threads) for m in other] == [(m.model, m.backend, m.threads) for m in from_json]
        for a, b in zip(other, from_json):
            assert a.pp_tokens_per_s == pytest.approx(b.pp_tokens_per_s, abs=0.01)
            assert a.tg_tokens_per_s == pytest.approx(b.tg_tokens_per_s, abs=0.01)
            assert (a.pp_tokens, a.tg_tokens) == (128, 32)
    with pytest.raises(UsageError, match="--model"):
        read_results(md, files[:1])


def test_calibrate_refuses_what_it_cannot_use(measured, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "edgepack", "profiles", "calibrate", *args],
                              capture_output=True, text=True)

    elsewhere = tmp_path / "r.json"
    elsewhere.write_text(json.dumps([r | {"model_filename": "/sdcard/gone-Q4_0.gguf"} for r in measured["records"]]))
    res = run(str(measured["profile"]), "--from", str(elsewhere), "-o", str(tmp_path))
    assert res.returncode == 2 and "gone-Q4_0.gguf not found" in res.stderr and "--models" in res.stderr
    gpu = tmp_path / "g.json"
    gpu.write_text(json.dumps([r | {"backends": "OpenCL"} for r in measured["records"]]))
    res = run(str(measured["profile"]), "--from", str(gpu), "-o", str(tmp_path))
    assert res.returncode == 2 and "opencl" in res.stderr and "Traceback" not in res.stderr
    junk = tmp_path / "junk.txt"
    junk.write_text("not a benchmark\n")
    res = run(str(measured["profile"]), "--from", str(junk), "-o", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
