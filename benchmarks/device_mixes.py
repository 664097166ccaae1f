"""The best mix per device (``[quantize] device_mixes``) against the uniform types that fit the same device.

On the demo model with outlier channels (tests/support/quantmodels.outlier_demo; see imatrix_quality.py) and the plain
demo: the imatrix is computed on the built-in calibration set, the uniform types are quantized with it, and the
sensitivity trials are measured once (``mix.measure``, on the first 8,000 characters of the calibration text).
Then, for each uniform type T, a device is made from pixel-8 (ARM with i8mm, where llama.cpp repacks Q8_0/Q4_K/
Q6_K, so a tied embedding of those types is loaded twice) whose usable memory is exactly what fit says T needs
at the build's context (runtime overhead 1 MB): the largest uniform type that fits it is T. The device's mix
(``devicemix.device_mix``) is made for it, and fit is run over all uniform types plus the mix on that device.
KLD against the F16 model is measured on the demo's held-out text (examples/demo/eval.txt). Prints a Markdown
table for benchmarks/RESULTS.md.

    python -m benchmarks.device_mixes [--workdir DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

from tests.support.quantmodels import DEMO, outlier_demo

REPO = Path(__file__).resolve().parents[1]

HELD_OUT = REPO / "examples" / "demo" / "eval.txt"
CANDIDATES = ("Q6_K", "Q4_K", "Q3_K", "IQ3_XXS", "Q2_K")
UNIFORM = ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_S", "Q2_K")
N_CTX = 256  # the demo's training context


def device(work: Path, name: str, usable_bytes: int):
    from edgepack.profiles import SHIPPED_DIR, load_profile_file

    text = (SHIPPED_DIR / "pixel-8.toml").read_text().replace('name = "pixel-8"', f'name = "{name}"')
    text = re.sub(r"usable = \{ gb = [0-9.]+", f"usable = {{ gb = {usable_bytes / 1e9!r}", text)
    text = re.sub(r"overhead = \{ mb = [0-9.]+", "overhead = { mb = 1", text)
    path = work / f"{name}.toml"
    path.write_text(text)
    return load_profile_file(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgepack-bench-device-mixes-"))
    work.mkdir(parents=True, exist_ok=True)

    from edgepack import fit as fit_mod
    from edgepack.calibration import calibration
    from edgepack.convert import convert
    from edgepack.devicemix import BATCH, device_mix
    from edgepack.evaluate import evaluate_many
    from edgepack.imatrix import ensure
    from edgepack.mix import Sensitivity, measure
    from edgepack.quantize import quantize

    print("| model | device usable MB | largest uniform that fits | its KLD | mix MB (file) | mix KLD (measured) "
          "| mix KLD (predicted) | fit's pick | mix |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label in ("demo with outlier channels (sigma 0.7)", "demo"):
        name = "outliers" if label != "demo" else "demo"
        folder = DEMO if name == "demo" else (work / "outliers-model" if (work / "outliers-model").exists()
                                              else outlier_demo(work / "outliers-model"))
        (work / name).mkdir(exist_ok=True)
        f16 = work / name / f"{name}-F16.gguf"
        if not f16.exists():
            convert(folder, f16, outtype="f16")
        imatrix = work / name / f"{name}.imatrix.gguf"
        ensure(f16, "builtin", imatrix, threads=args.threads)
        uniform = quantize(f16, UNIFORM, work / name / "uniform", threads=args.threads, imatrix=imatrix)
        text = next(p for p in calibration("builtin").files if p.suffix != ".jsonl")
        saved = work / name / "sensitivity.json"  # the trials take minutes: kept for a re-run
        if saved.exists():
            sens = Sensitivity.from_dict(json.loads(saved.read_text()))
        else:
            sens = measure(f16, work_dir=work / name, imatrix=imatrix, sensitivity_text=text, candidates=CANDIDATES,
                           sensitivity_chars=8000, threads=args.threads)
            saved.write_text(json.dumps(sens.to_dict()))
        made = {}
        isa = device(work, "probe", 10**9).isa
        for u in uniform[1:]:  # Q8_0's device would get all-Q8_0: nothing to choose
            desc = fit_mod.describe_gguf(u.output)
            needs = fit_mod.memory_needed(desc, N_CTX, BATCH, overhead_bytes=10**6, isa=isa)
            dev = device(work, f"fits-{u.type.lower().replace('_', '-')}", needs.total_bytes)
            made[u.type] = (dev, device_mix(f16, sens, dev, N_CTX, work / name / "mixes", f"MIX-{dev.name}",
                                            imatrix=imatrix, threads=args.threads))
        files = [u.output for u in uniform] + [m.quantized.output for _, m in made.values()]
        measured = {m.model: m for m in evaluate_many(files, f16, text=HELD_OUT, ctx=N_CTX, threads=args.threads)}
        for u in uniform[1:]:
            dev, m = made[u.type]
            variants = []
            for p in [x.output for x in uniform] + [m.quantized.output]:
                desc = fit_mod.describe_gguf(p)
                desc.name = p.stem
                variants.append(fit_mod.Variant(desc, fit_mod.Quality(kld=measured[p].mean_kld)))
            res = fit_mod.fit(variants, [dev], n_ctx=N_CTX)
            fitting = [r.variant for r in res.rows if r.fits]
            largest = next(x for x in uniform if x.output.stem in fitting)
            print(f"| {label} | {dev.usable_bytes / 1e6:.3f} | {largest.type} | "
                  f"{measured[largest.output].mean_kld:.6f} | {m.quantized.size_bytes / 1e6:.3f} | "
                  f"{measured[m.quantized.output].mean_kld:.6f} | {m.plan.predicted_kld:.6f} | "
                  f"{res.picks[dev.name]} | {' '.join(f'{g.group}={g.type}' for g in m.plan.groups)} |", flush=True)


if __name__ == "__main__":
    main()
