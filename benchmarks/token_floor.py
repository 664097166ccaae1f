"""The per-token floor of llama.cpp's CPU backend on this host: time per generated token of tiny models.

Builds Llamas with random weights small enough that their bytes take no measurable time (hidden 64, FFN 128,
vocabulary 32000 at 2, 8 and 16 layers), converts them with edgepack, and measures tg128 with edgepack bench
(llama-bench's method: llama_decode, repacked weights, warm-up; benchmarks/bench_vs_llama_bench.py checks that it
matches llama-bench). The time the model's bytes take at this host's measured copy bandwidth (mostly the
output matrix) is subtracted; the rest = base + per_layer x layers, fitted by least squares; the fastest of
``--reps`` runs per model is used (a shared machine only ever makes a run slower). These are the CPU numbers of
edgepack.fit.TOKEN_FLOOR.

    python -m benchmarks.token_floor [--threads 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from tests.support.quantmodels import random_llama

LAYERS = (2, 8, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from edgepack.bench import bench_one, measure_bandwidth_gb_s
    from edgepack.convert import convert
    from edgepack.fit import describe_gguf

    bandwidth = measure_bandwidth_gb_s()
    print(f"host copy bandwidth {bandwidth} GB/s")

    seconds = []
    with tempfile.TemporaryDirectory(prefix="edgepack-floor-") as tmp:
        for n in LAYERS:
            folder = Path(tmp) / f"l{n}"
            random_llama(folder, hidden=64, layers=n, intermediate=128, heads=2, std=0.02)
            gguf = Path(tmp) / f"l{n}-F16.gguf"
            convert(folder, gguf, outtype="f16")
            m = bench_one(gguf, n_prompt=64, n_gen=128, reps=args.reps, threads=args.threads)
            stream = describe_gguf(gguf).bytes_read_per_token / (bandwidth * 1e9)
            best = 1 / m.tg.max - stream
            seconds.append(best)
            print(f"{n:3d} layers: tg128 best {m.tg.max:8.1f} tok/s (median {m.tg.median:.1f}) = "
                  f"{1e3 / m.tg.max:.3f} ms/token, of which {1e3 * stream:.3f} ms streaming the weights")
    per_layer, base = np.polyfit(LAYERS, seconds, 1)
    print(f"\nfloor = {1e3 * base:.3f} ms + {1e3 * per_layer:.4f} ms x layers ({args.threads} threads)")


if __name__ == "__main__":
    main()
