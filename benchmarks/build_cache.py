"""The demo build cold, warm (nothing changed) and with one quant type changed, side by side in one run.

    .venv/bin/python -m benchmarks.build_cache [--workdir /tmp/bc] [--repeats 2]

Prints wall seconds per build and the ratios warm/cold and one-branch/cold, plus how many steps ran. The cold
build is the README's `make demo` build (examples/demo/edgepack.toml); its target is <= 180 s on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from edgepack.config import resolve
from edgepack.pipeline import build

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo" / "edgepack.toml"


def timed(out: Path, **cli) -> tuple[float, int]:
    cfg = resolve(DEMO, cli={"outputs.dir": str(out), **cli}, env={})
    started = time.monotonic()
    result = build(cfg)
    return time.monotonic() - started, len(result.ran)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgepack-build-cache-bench"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = {"cold": [], "warm": [], "one quant changed": []}
    steps = {}
    for i in range(args.repeats):
        out = args.workdir / f"run{i}"
        shutil.rmtree(out, ignore_errors=True)
        for label, kwargs in (("cold", {}), ("warm", {}),
                              ("one quant changed", {"quantize.types": "Q8_0,Q6_K,Q4_K_M,Q4_0,Q3_K_M"})):
            seconds, n = timed(out, **kwargs)
            rows[label].append(seconds)
            steps[label] = n
            print(f"run {i}: {label}: {seconds:.1f} s, {n} steps ran", flush=True)
    cold = statistics.median(rows["cold"])
    print("\n| build | wall s (median) | steps ran | ratio to cold |\n|---|---|---|---|")
    for label, xs in rows.items():
        med = statistics.median(xs)
        print(f"| {label} | {med:.1f} | {steps[label]} | {med / cold:.3f} |")


if __name__ == "__main__":
    main()
