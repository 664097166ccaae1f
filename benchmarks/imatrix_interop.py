"""edgepack's imatrix files against llama.cpp's own tools, both ways, on the demo model.

llama-imatrix and llama-quantize are built from the llama-cpp-python source distribution edgepack runs on
(0.3.36: the same llama.cpp commit as the bindings), with the Makefile's portable flags, outside the repository
(the two targets only; --build-dir reuses a build), or taken from --bin DIR (built from that same source). Then,
on the demo model (F16) and 8 chunks of 64 tokens of War and Peace:

1. llama-imatrix (``-c 64 -b 64 --chunks 8 -t 1``: one sequence per batch, as edgepack runs it) and
   ``edgepack.imatrix.compute`` each make an imatrix; every entry's sums and counts are compared (edgepack reads
   llama-imatrix's file with ``imatrix.read``).
2. ``llama-quantize --imatrix EDGEPACK_FILE`` and ``edgepack.quantize.quantize(imatrix=EDGEPACK_FILE)`` quantize
   the same F16 to Q2_K and IQ3_XXS: their tensor data are compared byte for byte (the metadata differs: edgepack
   records its own keys).
3. ``edgepack.quantize.quantize(imatrix=LLAMA_FILE)`` (llama-imatrix's file) against the same with edgepack's
   file: the tensors that came out byte-identical, and both files' mean KLD against the F16 model on the demo's
   held-out text (examples/demo/eval.txt).

    python -m benchmarks.imatrix_interop [--llama-src DIR] [--build-dir DIR | --bin DIR] [--workdir DIR]

Prints a Markdown summary for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.bench_vs_llama_bench import LLAMA_CPP_PYTHON, cache_dir, fetch_sdist, makefile_cmake_args
from tests.support.quantmodels import DEMO, corpus

CTX, CHUNKS = 64, 8
HELD_OUT = Path(__file__).resolve().parents[1] / "examples" / "demo" / "eval.txt"
TYPES = ("Q2_K", "IQ3_XXS")


def build_tools(src: Path, build: Path) -> dict[str, Path]:
    """cmake configure + build of llama-imatrix and llama-quantize only, static, with the Makefile's flags."""
    flags = makefile_cmake_args() + ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
                                     "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF"]
    if not (build / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), *flags], check=True, stdout=subprocess.DEVNULL)
    print("building llama-imatrix and llama-quantize (minutes on 2 cores) ...", file=sys.stderr)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-imatrix", "llama-quantize", "-j",
                    str(os.cpu_count() or 1)], check=True, stdout=subprocess.DEVNULL)
    return {t: build / "bin" / t for t in ("llama-imatrix", "llama-quantize")}


def tensor_bytes(path: Path) -> dict[str, bytes]:
    import gguf

    return {t.name: bytes(t.data.tobytes()) for t in gguf.GGUFReader(path).tensors}


def same_data(a: Path, b: Path) -> tuple[int, int]:
    """(tensors with identical bytes, tensors) of two GGUFs with the same tensor names."""
    da, db = tensor_bytes(a), tensor_bytes(b)
    assert da.keys() == db.keys(), (sorted(da.keys() ^ db.keys()))[:5]
    return sum(da[n] == db[n] for n in da), len(da)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-src", type=Path, help="llama.cpp source (the sdist's vendor/llama.cpp); default: pip download")
    ap.add_argument("--build-dir", type=Path, help="cmake build folder outside the repo (reused; default: a temp folder)")
    ap.add_argument("--bin", type=Path, help="a folder with llama-imatrix and llama-quantize built from that source")
    ap.add_argument("--workdir", type=Path, help="keep the files here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgepack-imatrix-interop-"))
    work = args.workdir or tmp
    work.mkdir(parents=True, exist_ok=True)
    if args.bin:
        tools = {t: args.bin / t for t in ("llama-imatrix", "llama-quantize")}
    else:
        src = args.llama_src or fetch_sdist(cache_dir() / f"sdist-{LLAMA_CPP_PYTHON}")
        tools = build_tools(src, args.build_dir or tmp / "build")

    from edgepack import imatrix as im
    from edgepack.convert import convert
    from edgepack.evaluate import evaluate_many
    from edgepack.quantize import quantize

    f16 = work / "demo-F16.gguf"
    if not f16.exists():
        convert(DEMO, f16, outtype="f16")
    text = work / "calibration.txt"
    text.write_text(corpus(20_000), encoding="utf-8")

    ours, theirs = work / "edgepack.imatrix.gguf", work / "llama.imatrix.gguf"
    im.compute(f16, text, ours, ctx=CTX, chunks=CHUNKS, threads=1)
    subprocess.run([str(tools["llama-imatrix"]), "-m", str(f16), "-f", str(text), "-o", str(theirs), "-c", str(CTX),
                    "-b", str(CTX), "--chunks", str(CHUNKS), "-t", "1", "--no-ppl"],
                   check=True, capture_output=True, text=True)
    a, b = im.read(ours), im.read(theirs)
    im.check_model(b, f16)
    assert a.entries.keys() == b.entries.keys(), sorted(a.entries.keys() ^ b.entries.keys())[:5]
    rel = max(float(np.max(np.abs(a.entries[n].sums - b.entries[n].sums) / np.maximum(np.abs(b.entries[n].sums), 1e-30)))
              for n in a.entries)
    counts_equal = all(np.array_equal(a.entries[n].counts, b.entries[n].counts) for n in a.entries)
    print(f"| imatrix statistics | {len(a.entries)} entries; counts equal: {counts_equal}; max relative difference "
          f"of the sums: {rel:.2e}; chunks {b.chunk_count} x {b.chunk_size} (llama-imatrix) vs {a.chunk_count} x "
          f"{a.chunk_size} (edgepack) |")

    for t in TYPES:
        by_llama = work / f"llama-quantize-{t}.gguf"
        subprocess.run([str(tools["llama-quantize"]), "--imatrix", str(ours), str(f16), str(by_llama), t, "1"],
                       check=True, capture_output=True, text=True)
        [mine] = quantize(f16, [t], work / "edgepack-own", threads=1, imatrix=ours, force=True)
        same, total = same_data(by_llama, mine.output)
        print(f"| {t}: llama-quantize --imatrix (edgepack's file) vs edgepack quantize (same file) | "
              f"{same} of {total} tensors byte-identical |")
        [with_theirs] = quantize(f16, [t], work / "edgepack-llama-file", threads=1, imatrix=theirs, force=True)
        same, total = same_data(with_theirs.output, mine.output)
        k_theirs, k_mine = evaluate_many([with_theirs.output, mine.output], f16, text=HELD_OUT, ctx=256, threads=1)
        print(f"| {t}: edgepack quantize --imatrix (llama-imatrix's file) vs (edgepack's file) | "
              f"{same} of {total} tensors byte-identical; mean KLD on held-out text {k_theirs.mean_kld:.6f} vs "
              f"{k_mine.mean_kld:.6f} (± {k_mine.mean_kld_err:.6f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
