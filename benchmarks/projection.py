"""Validate edgepack's projection against published llama.cpp measurements on real devices.

Each row of benchmarks/data/measurements.csv (device profile, backend, model config, quant, measured pp/tg,
source URL) is projected with the same code as `edgepack fit --config`; the error per device is the median
over its rows, and every device counts once. Targets (issue 7): generation median over devices <= 20%,
worst device <= 35%; prompt median over devices <= 35%.

    python benchmarks/projection.py
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from edgepack.fit import describe_config, project  # noqa: E402
from edgepack.profiles import get_profile  # noqa: E402

CONFIGS = REPO.parent / "shared" / "fixtures" / "configs"


def config(name: str) -> dict:
    if name.startswith("typed:"):
        return json.loads((HERE / "data" / "typed_configs.json").read_text())[name[6:]]
    return json.loads((CONFIGS / f"{name}.config.json").read_text())


def main() -> int:
    rows = list(csv.DictReader((HERE / "data" / "measurements.csv").open()))
    per_device: dict[str, dict[str, list[float]]] = {}
    print(f"{'device':22} {'backend':7} {'model':16} {'quant':7} {'tg meas':>8} {'tg proj':>8} {'err':>6} "
          f"{'pp meas':>8} {'pp proj':>8} {'err':>6}")
    for r in rows:
        profile = get_profile(r["profile"])
        model = describe_config(config(r["config"]), r["quant"], r["model"])
        p = project(model, profile, r["backend"], n_ctx=512)
        d = per_device.setdefault(r["profile"], {"tg": [], "pp": []})
        tg_err = pp_err = None
        if r["tg_tok_s"]:
            tg_err = p.tg_tokens_per_s / float(r["tg_tok_s"]) - 1
            d["tg"].append(abs(tg_err))
        if r["pp_tok_s"]:
            pp_err = p.pp_tokens_per_s / float(r["pp_tok_s"]) - 1
            d["pp"].append(abs(pp_err))
        fmt = lambda x: "-" if x is None else f"{100 * x:+.0f}%"  # noqa: E731
        print(f"{r['profile']:22} {r['backend']:7} {r['model'][:16]:16} {r['quant']:7} {r['tg_tok_s'] or '-':>8} "
              f"{p.tg_tokens_per_s:8.1f} {fmt(tg_err):>6} {r['pp_tok_s'] or '-':>8} {p.pp_tokens_per_s:8.1f} "
              f"{fmt(pp_err):>6}")
    print()
    tg_dev = {k: statistics.median(v["tg"]) for k, v in per_device.items() if v["tg"]}
    pp_dev = {k: statistics.median(v["pp"]) for k, v in per_device.items() if v["pp"]}
    print(f"{'device':22} {'|tg err| median':>16} {'|pp err| median':>16}")
    for k in per_device:
        print(f"{k:22} {100 * tg_dev.get(k, float('nan')):15.0f}% {100 * pp_dev.get(k, float('nan')):15.0f}%")
    tg_med, tg_worst = statistics.median(tg_dev.values()), max(tg_dev.values())
    pp_med = statistics.median(pp_dev.values())
    ok = tg_med <= 0.20 and tg_worst <= 0.35 and pp_med <= 0.35
    print(f"\ngeneration: median over {len(tg_dev)} devices {100 * tg_med:.0f}% (target <= 20%), worst "
          f"{100 * tg_worst:.0f}% (target <= 35%)")
    print(f"prompt: median over {len(pp_dev)} devices {100 * pp_med:.0f}% (target <= 35%)")
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
