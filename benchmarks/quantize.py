"""edgepack quantize wall time / a direct llama_model_quantize call on the same input, side by side in one run.

Generates a ~0.37B-parameter Llama checkpoint (numpy + safetensors, no torch; hidden 1024, 24 layers, FFN 2816,
Llama-2 vocabulary), converts it to F16 with edgepack.convert, then for Q8_0 and Q4_K_M times, alternately and
``--repeats`` times each:
  * direct: ``llama_cpp.llama_model_quantize`` with ``llama_model_quantize_default_params()`` (nthread, ftype set),
    llama.cpp's log discarded by a no-op callback, output written straight to its final name;
  * edgepack: ``edgepack.quantize.quantize`` into an empty folder (nothing to skip): source checks, sha256 of the
    source, temp file + fsync + rename, reading back the output's header, the sidecar.
The source stays in the page cache for both. Prints medians of wall time and of process CPU time (all threads;
robust when other jobs share the cores) and the ratios; paste the table into benchmarks/RESULTS.md.

    python benchmarks/quantize.py [--workdir DIR] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from quantmodels import random_llama  # noqa: E402

TARGET = 1.05
TYPES = ("Q8_0", "Q4_K_M")


def build_source(workdir: Path) -> Path:
    src = workdir / "bench-F16.gguf"
    if src.exists():
        return src
    from edgepack.convert import convert

    folder = workdir / "bench"
    if not (folder / "model.safetensors").exists():
        print("generating the checkpoint ...", file=sys.stderr)
        random_llama(folder, hidden=1024, layers=24, intermediate=2816, heads=16, std=0.02, dtype=np.float16)
    print("converting to F16 ...", file=sys.stderr)
    convert(folder, src, outtype="f16")
    return src


def direct(src: Path, out: Path, ftype: int, threads: int) -> tuple[float, float]:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    started, cpu = time.perf_counter(), time.process_time()
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert status == 0, "direct llama_model_quantize failed"
    return seconds, cpu


def with_edgepack(src: Path, out_dir: Path, name: str, threads: int) -> tuple[float, float]:
    from edgepack.quantize import quantize

    started, cpu = time.perf_counter(), time.process_time()
    [result] = quantize(src, [name], out_dir, threads=threads)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert not result.skipped
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the generated model here (reused on the next run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import llama_cpp

    from edgepack.quantize import quant_type

    silent = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgepack-bench-quantize-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        src = build_source(workdir)
        with open(src, "rb") as f:  # into the page cache, for both contenders
            while f.read(1 << 24):
                pass
        from edgepack.ggufheader import read_header

        n_params = read_header(src).n_params
        print(f"source {src.name}: {n_params / 1e9:.3f}B params, {src.stat().st_size / 2**20:.0f} MiB; "
              f"{args.threads} threads, {args.repeats} repeats, {os.cpu_count()} cores", file=sys.stderr)
        rows = []
        for name in TYPES:
            ftype = quant_type(name).ftype
            times = {"direct": [], "edgepack": []}
            cpu = {"direct": [], "edgepack": []}
            for rep in range(args.repeats):
                order = ("direct", "edgepack") if rep % 2 == 0 else ("edgepack", "direct")
                for who in order:
                    out_dir = workdir / f"out-{who}"
                    shutil.rmtree(out_dir, ignore_errors=True)
                    out_dir.mkdir()
                    if who == "direct":
                        llama_cpp.llama_log_set(silent, ctypes.c_void_p(0))
                        wall, cpu_s = direct(src, out_dir / f"bench-{name}.gguf", ftype, args.threads)
                    else:
                        wall, cpu_s = with_edgepack(src, out_dir, name, args.threads)
                    times[who].append(wall)
                    cpu[who].append(cpu_s)
                    print(f"  {name} {who:8s} wall {wall:.2f}s cpu {cpu_s:.2f}s", file=sys.stderr)
            d, e = statistics.median(times["direct"]), statistics.median(times["edgepack"])
            rows.append((name, d, e, e / d, min(times["edgepack"]) / min(times["direct"]),
                         statistics.median(cpu["edgepack"]) / statistics.median(cpu["direct"])))
            for who in ("direct", "edgepack"):
                shutil.rmtree(workdir / f"out-{who}", ignore_errors=True)
        from edgepack.fileio import sha256_file

        started, cpu_started = time.perf_counter(), time.process_time()
        sha256_file(src)  # the part of edgepack's work that is not llama.cpp's: hashing the source
        hash_wall, hash_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        if tmp is not None:
            tmp.cleanup()

    print(f"sha256 of the source alone: {hash_wall:.2f} s wall, {hash_cpu:.2f} s CPU\n")
    print(f"| type | direct llama_model_quantize, wall (median s) | edgepack quantize, wall (median s) | "
          f"wall ratio (median) | wall ratio (best of {args.repeats}) | CPU-time ratio (median) | target |")
    print("|---|---|---|---|---|---|---|")
    for name, d, e, ratio, best, cpu_ratio in rows:
        print(f"| {name} | {d:.2f} | {e:.2f} | {ratio:.3f} | {best:.3f} | {cpu_ratio:.3f} | ≤ {TARGET} "
              f"{'met' if ratio <= TARGET else 'missed'} (median wall) |")


if __name__ == "__main__":
    main()
