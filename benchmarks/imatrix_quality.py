"""Quality with and without an importance matrix, and a --target-size mix against the uniform type, in one run.

On the trained demo model (examples/demo/model) and on the same model with outlier channels
(tests/support/quantmodels.outlier_demo: the function unchanged, norm gains x s_j and projection columns / s_j,
as trained LLMs' massive activations look): the imatrix is computed on edgepack's built-in calibration set,
every type is quantized with and without it, and the mean KL divergence against the F16 model is measured on
the demo's held-out text (examples/demo/eval.txt, the book's last 5%: in neither the calibration set nor the training).
Then a --target-size mix at the size of uniform Q3_K_S (with the imatrix) is chosen and measured the same way.
Prints Markdown tables for benchmarks/RESULTS.md.

    python -m benchmarks.imatrix_quality [--workdir DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.support.quantmodels import DEMO, outlier_demo

REPO = Path(__file__).resolve().parents[1]

HELD_OUT = REPO / "examples" / "demo" / "eval.txt"
MIX_CANDIDATES = ("Q6_K", "Q4_K", "Q3_K", "IQ3_XXS", "Q2_K")  # a shorter ladder keeps the run to minutes
TYPES = ("Q4_K_M", "Q3_K_S", "Q2_K")
IMATRIX_ONLY = ("IQ3_XXS", "IQ2_XS")


def print_rows(rows, header: bool) -> None:
    if header:
        print("| model | type | size MB (with) | mean KLD without imatrix | mean KLD with imatrix | with / without |")
        print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgepack-bench-imatrix-quality-"))
    work.mkdir(parents=True, exist_ok=True)

    from edgepack.convert import convert
    from edgepack.evaluate import evaluate_many
    from edgepack.mix import quantize_mix
    from edgepack.quantize import quantize

    rows, mixes = [], []
    for label in ("demo", "demo with outlier channels (sigma 0.7)"):
        folder = DEMO if label == "demo" else (work / "outliers" if (work / "outliers").exists()
                                               else outlier_demo(work / "outliers"))
        name = "demo" if label == "demo" else "outliers"
        (work / name).mkdir(exist_ok=True)
        f16 = work / name / f"{name}-F16.gguf"
        if not f16.exists():
            convert(folder, f16, outtype="f16")
        with_im = quantize(f16, TYPES + IMATRIX_ONLY, work / name / "with", threads=args.threads,
                           calibration="builtin")
        without = quantize(f16, TYPES, work / name / "without", threads=args.threads)
        measured = evaluate_many([r.output for r in with_im + without], f16, text=HELD_OUT, ctx=256,
                                 threads=args.threads)
        by_file = {m.model: m for m in measured}
        for t in TYPES + IMATRIX_ONLY:
            w = next(r for r in with_im if r.type == t)
            wo = next((r for r in without if r.type == t), None)
            mw, mwo = by_file[w.output], by_file[wo.output] if wo else None
            rows.append((label, t, f"{w.size_bytes / 1e6:.3f}",
                         f"{mwo.mean_kld:.6f} ± {mwo.mean_kld_err:.6f}" if mwo else "refused (needs one)",
                         f"{mw.mean_kld:.6f} ± {mw.mean_kld_err:.6f}",
                         f"{mw.mean_kld / mwo.mean_kld:.3f}" if mwo else "-"))
        uniform = next(r for r in with_im if r.type == "Q3_K_S")
        print_rows(rows[-len(TYPES + IMATRIX_ONLY):], header=not mixes)
        mix = quantize_mix(f16, work / name / "mix", target_size_mb=uniform.size_bytes / 1e6,
                           calibration="builtin", eval_text=HELD_OUT, candidates=MIX_CANDIDATES,
                           sensitivity_chars=8000, threads=args.threads)
        mixes.append((label, f"{uniform.size_bytes / 1e6:.3f}", f"{by_file[uniform.output].mean_kld:.6f}",
                       f"{mix.size_bytes / 1e6:.3f}", f"{mix.evaluation.mean_kld:.6f}", f"{mix.plan.predicted_kld:.6f}",
                       " ".join(f"{g.group}={g.type}" for g in mix.plan.groups)))

    print()
    print("| model | target MB (uniform Q3_K_S, imatrix) | uniform KLD | mix MB | mix KLD (measured) | mix KLD "
          "(predicted) | mix |")
    print("|---|---|---|---|---|---|---|")
    for r in mixes:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
