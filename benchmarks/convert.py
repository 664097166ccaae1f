"""Convert speed and memory, measured side by side in one run.

Generates a ~0.44B-parameter BF16 Llama checkpoint (numpy, no torch), then for each output type measures
  * convert wall time / plain copy time of the same safetensors bytes (copy + fsync, like convert's output)
  * peak RSS of the converting process / the largest tensor's size
with the source files in the page cache for both. Each convert runs in a fresh subprocess so its peak RSS
(getrusage of the child) is its own. Prints a table; paste it into benchmarks/RESULTS.md.

    python -m benchmarks.convert [--workdir DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.tinymodels import TOKENIZERS, synthetic_llama, tiny_llama_config

REPO = Path(__file__).resolve().parents[1]

CONFIG = tiny_llama_config(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096)
TARGET_CONVERT_OVER_COPY = 5.0

# Peak RSS is read from /proc/self/status VmHWM: getrusage's ru_maxrss survives exec and would report the
# parent's (the generator's) peak.
PEAK_RSS = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024"

DRIVER = r"""
import json, sys, time
from edgepack.convert import convert
started = time.perf_counter()
result = convert(sys.argv[1], sys.argv[2], outtype=sys.argv[3], force=True)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss_bytes": PEAK_RSS,
                  "n_params": result.n_params, "size_bytes": result.size_bytes}))
""".replace("PEAK_RSS", PEAK_RSS)

BASELINE = r"""
import json
import edgepack.convert  # the same imports as the driver, no conversion
print(json.dumps({"peak_rss_bytes": PEAK_RSS}))
""".replace("PEAK_RSS", PEAK_RSS)


def copy_with_fsync(files: list[Path], dst: Path) -> float:
    started = time.perf_counter()
    for f in files:
        target = dst / f.name
        shutil.copyfile(f, target)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())
    return time.perf_counter() - started


def warm(files: list[Path]) -> None:
    for f in files:
        with open(f, "rb") as handle:
            while handle.read(1 << 24):
                pass


def run_python(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="edgepack-bench-", dir=args.workdir))
    try:
        src = synthetic_llama(workdir / "model", CONFIG, dtype="BF16")
        shutil.copy(TOKENIZERS / "llama2-sentencepiece-llama2c/tokenizer.model", src / "tokenizer.model")
        weights = sorted(src.glob("*.safetensors"))
        total_bytes = sum(f.stat().st_size for f in weights)
        header = json.loads(weights[0].read_bytes()[8:8 + int.from_bytes(weights[0].read_bytes()[:8], "little")])
        largest = max((v["data_offsets"][1] - v["data_offsets"][0]) for k, v in header.items() if k != "__metadata__")
        baseline_rss = run_python(BASELINE)["peak_rss_bytes"]
        print(f"checkpoint: {total_bytes / 1e9:.2f} GB BF16 safetensors, largest tensor {largest / 1e6:.1f} MB, "
              f"python+imports baseline RSS {baseline_rss / 1e6:.0f} MB, {args.repeats} repeats (median)")
        rows = []
        for outtype in ("auto", "f16"):
            copies, converts, rss = [], [], []
            for _ in range(args.repeats):
                copy_dir = workdir / "copy"
                copy_dir.mkdir()
                warm(weights)
                copies.append(copy_with_fsync(weights, copy_dir))
                shutil.rmtree(copy_dir)
                warm(weights)
                measured = run_python(DRIVER, str(src), str(workdir / "out.gguf"), outtype)
                converts.append(measured["seconds"])
                rss.append(measured["peak_rss_bytes"])
                n_params = measured["n_params"]
                (workdir / "out.gguf").unlink()
            copy_s, convert_s, peak = statistics.median(copies), statistics.median(converts), max(rss)
            target_rss = 3 * largest + 300e6
            rows.append((outtype, n_params, copy_s, convert_s, convert_s / copy_s, peak, peak / largest, target_rss))
        print(f"{'outtype':8} {'params':>12} {'copy s':>7} {'convert s':>9} {'convert/copy':>12} "
              f"{'peak RSS MB':>11} {'RSS/largest':>11} {'RSS target MB':>13}")
        ok = True
        for outtype, n_params, copy_s, convert_s, ratio, peak, rss_ratio, target_rss in rows:
            print(f"{outtype:8} {n_params:>12,} {copy_s:>7.2f} {convert_s:>9.2f} {ratio:>12.2f} "
                  f"{peak / 1e6:>11.0f} {rss_ratio:>11.2f} {target_rss / 1e6:>13.0f}")
            ok &= ratio <= TARGET_CONVERT_OVER_COPY and peak <= target_rss
        print("targets (convert/copy <= 5, peak RSS <= 3 x largest tensor + 300 MB):", "met" if ok else "NOT met")
        sys.exit(0 if ok else 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
