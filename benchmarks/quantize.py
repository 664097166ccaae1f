"""edgepack quantize wall time / a direct llama_model_quantize call on the same input, side by side in one run.

Generates a ~0.37B-parameter Llama checkpoint (numpy + safetensors, no torch; hidden 1024, 24 layers, FFN 2816,
Llama-2 vocabulary), converts it to F16 with edgepack.convert, then for Q8_0 and Q4_K_M times, alternately and
``--repeats`` times each:
  * direct: ``llama_cpp.llama_model_quantize`` with ``llama_model_quantize_default_params()`` (nthread, ftype set),
    llama.cpp's log discarded by a no-op callback, output written straight to its final name, then fsync'ed:
    edgepack's outputs are durable when it returns (temp file, fsync, rename), so both are timed until the bytes
    are on disk. The time until llama_model_quantize returned is printed too;
  * edgepack: ``edgepack.quantize.quantize`` into an empty folder (nothing to skip): source checks, the source's
    stat fingerprint, temp file + fsync + rename, reading back the output's header, the sidecar.
The source stays in the page cache for both, and every run starts after an untimed ``sync`` (so the kernel's
write-back of one run's output never lands in the next run's time). Each repeat runs the two back to back (order
alternating), and the judged number is the median over repeats of edgepack/direct within a pair: single runs of the same call vary by
20% or more on a shared 2-core machine, and a pair shares the load of its moment. Also printed: the ratio of the
median wall times and of the median process CPU times (all threads). Paste the table into benchmarks/RESULTS.md.

    python -m benchmarks.quantize [--workdir DIR] [--repeats 7] [--threads N]
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

from tests.support.quantmodels import random_llama

REPO = Path(__file__).resolve().parents[1]

TARGET = 1.05
TYPES = ("Q8_0", "Q4_K_M")


def build_source(workdir: Path, layers: int = 24) -> Path:
    """The benchmark Llama (hidden 1024, FFN 2816, ``layers`` layers) as F16 GGUF, made once per workdir."""
    src = workdir / "bench-F16.gguf"
    if src.exists():
        return src
    from edgepack.convert import convert

    folder = workdir / "bench"
    if not (folder / "model.safetensors").exists():
        print("generating the checkpoint ...", file=sys.stderr)
        random_llama(folder, hidden=1024, layers=layers, intermediate=2816, heads=16, std=0.02, dtype=np.float16)
    print("converting to F16 ...", file=sys.stderr)
    convert(folder, src, outtype="f16")
    return src


def direct(src: Path, out: Path, ftype: int, threads: int) -> tuple[float, float, float]:
    """(wall s until the output is on disk, CPU s, wall s until llama_model_quantize returned)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    started, cpu = time.perf_counter(), time.process_time()
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    returned = time.perf_counter() - started
    fd = os.open(out, os.O_RDONLY)  # the durability edgepack's atomic output has: fsync'ed before it is done
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert status == 0, "direct llama_model_quantize failed"
    return seconds, cpu, returned


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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import llama_cpp

    from edgepack.quants import quant_type

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
            times = {"direct": [], "edgepack": [], "direct-no-fsync": []}
            cpu = {"direct": [], "edgepack": []}
            for rep in range(args.repeats):
                order = ("direct", "edgepack") if rep % 2 == 0 else ("edgepack", "direct")
                for who in order:
                    out_dir = workdir / f"out-{who}"
                    shutil.rmtree(out_dir, ignore_errors=True)
                    out_dir.mkdir()
                    # untimed: write back the previous run's output now, so that no run pays for another's
                    # dirty pages (direct does not fsync its output; edgepack does)
                    os.sync()
                    if who == "direct":
                        llama_cpp.llama_log_set(silent, ctypes.c_void_p(0))
                        wall, cpu_s, returned = direct(src, out_dir / f"bench-{name}.gguf", ftype, args.threads)
                        times["direct-no-fsync"].append(returned)
                    else:
                        wall, cpu_s = with_edgepack(src, out_dir, name, args.threads)
                    times[who].append(wall)
                    cpu[who].append(cpu_s)
                    print(f"  {name} {who:8s} wall {wall:.2f}s cpu {cpu_s:.2f}s", file=sys.stderr)
            d, e = statistics.median(times["direct"]), statistics.median(times["edgepack"])
            # each repeat runs the two back to back, so a pair shares the machine's load of that moment
            paired = statistics.median(b / a for a, b in zip(times["direct"], times["edgepack"]))
            unsynced = statistics.median(b / a for a, b in zip(times["direct-no-fsync"], times["edgepack"]))
            rows.append((name, d, e, paired, e / d,
                         statistics.median(cpu["edgepack"]) / statistics.median(cpu["direct"]), unsynced))
            for who in ("direct", "edgepack"):
                shutil.rmtree(workdir / f"out-{who}", ignore_errors=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    print()
    print(f"| type | direct llama_model_quantize, wall (median s) | edgepack quantize, wall (median s) | "
          f"wall ratio (median of {args.repeats} pairs) | ratio of the medians | CPU-time ratio (medians) | "
          f"wall ratio vs direct without its fsync (median of pairs) | target |")
    print("|---|---|---|---|---|---|---|---|")
    for name, d, e, paired, of_medians, cpu_ratio, unsynced in rows:
        print(f"| {name} | {d:.2f} | {e:.2f} | {paired:.3f} | {of_medians:.3f} | {cpu_ratio:.3f} | {unsynced:.3f} | "
              f"≤ {TARGET} {'met' if paired <= TARGET else 'missed'} (median of pairs) |")


if __name__ == "__main__":
    main()
