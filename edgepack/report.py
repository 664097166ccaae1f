"""``edgepack report``: Markdown + a self-contained HTML page (plots as inline SVG) + the JSON beside them.

Input: a results JSON with ``fit`` (``edgepack fit --json``) and optionally ``bench`` (``edgepack bench
--json``) -- either one file holding both keys, or a bare fit result.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .fileio import atomic_write_text, prepare_output_dir


@dataclass
class ReportResult:
    markdown: Path
    html: Path
    json: Path
    n_plots: int


def load_results(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: cannot read results JSON ({exc})", "give the output of `edgepack fit --json`") from exc
    if "rows" in data and "picks" in data:
        data = {"fit": data}
    if "fit" not in data:
        raise UsageError(f"{path}: no fit results in it", "give the output of `edgepack fit --json` (optionally with a 'bench' key)")
    return data


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _plots(data: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["fit"]["rows"]
    picks = data["fit"]["picks"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    size = {r["variant"]: r["size_mb"] for r in rows}
    out = {}

    # 1. quality vs size
    fig, ax = plt.subplots(figsize=(6, 3.6))
    kld = {r["variant"]: r["kld"] for r in rows}
    if any(v is not None for v in kld.values()):
        xs = [size[v] for v in variants if kld[v] is not None]
        ys = [kld[v] for v in variants if kld[v] is not None]
        ax.set_ylabel("KLD vs reference (lower is better)")
    else:
        bpw = {r["variant"]: r["bits_per_weight"] for r in rows}
        xs, ys = [size[v] for v in variants], [bpw[v] for v in variants]
        ax.set_ylabel("bits per weight (no KLD measured)")
    ax.scatter(xs, ys, color="#1f77b4", s=40)
    labelled = [v for v in variants if (kld[v] is not None) or not any(k is not None for k in kld.values())]
    for v, x, y in zip(labelled, xs, ys):
        ax.annotate(v, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("weights (MB)")
    ax.set_title("Quality vs size")
    out["quality_vs_size"] = _svg(fig)
    plt.close(fig)

    # 2. projected generation tok/s per device per variant (pick highlighted)
    fig, ax = plt.subplots(figsize=(max(6, len(profiles) * 0.7), 3.8))
    width = 0.8 / max(len(variants), 1)
    for i, v in enumerate(variants):
        vals = [next((r["tg_tokens_per_s"] for r in rows if r["profile"] == p and r["variant"] == v), 0) for p in profiles]
        bars = ax.bar([j + i * width for j in range(len(profiles))], vals, width, label=v)
        for j, p in enumerate(profiles):
            if picks.get(p) == v:
                bars[j].set_edgecolor("black")
                bars[j].set_linewidth(2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(profiles))], profiles, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("projected generation tok/s")
    ax.set_yscale("log")
    ax.set_title("Projected generation speed (pick outlined)")
    ax.legend(fontsize=7)
    out["tokens_per_s"] = _svg(fig)
    plt.close(fig)

    # 3. memory bars vs each device's budget
    fig, ax = plt.subplots(figsize=(max(6, len(profiles) * 0.7), 3.8))
    for i, v in enumerate(variants):
        vals = [next((r["memory_total_mb"] for r in rows if r["profile"] == p and r["variant"] == v), 0) for p in profiles]
        colors = ["#2ca02c" if next(r["fits"] for r in rows if r["profile"] == p and r["variant"] == v) else "#d62728"
                  for p in profiles]
        bars = ax.bar([j + i * width for j in range(len(profiles))], vals, width, color=colors,
                      alpha=0.5 + 0.5 * (i + 1) / len(variants))
        for j, p in enumerate(profiles):
            if picks.get(p) == v:
                bars[j].set_edgecolor("black")
                bars[j].set_linewidth(2)
    budgets = [next(r["usable_mb"] for r in rows if r["profile"] == p) for p in profiles]
    for j, b in enumerate(budgets):
        ax.hlines(b, j - width / 2, j + 0.8 - width / 2, colors="black", linestyles="dashed")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(profiles))], profiles, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("memory needed (MB); dashed = usable")
    ax.set_title("Memory vs budget (green fits, red does not; pick outlined)")
    out["memory"] = _svg(fig)
    plt.close(fig)
    return out


def _md(data: dict) -> str:
    fit = data["fit"]
    lines = ["# edgepack report", "", f"Context planned for: {fit['n_ctx']} tokens"
             + (f"; min {fit['min_tps']} tok/s" if fit.get("min_tps") else "")
             + (f"; max KLD {fit['max_kld']}" if fit.get("max_kld") else ""), "", "## Pick per device", "",
             "| device | pick | why |", "|---|---|---|"]
    for p, v in fit["picks"].items():
        lines.append(f"| {p} | {v or '**nothing fits**'} | {fit['summary'][p]} |")
    lines += ["", "## Every variant on every device", "",
              "| device | variant | memory MB | usable MB | fits | tg tok/s | pp tok/s | KLD | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in fit["rows"]:
        lines.append(f"| {r['profile']} | {r['variant']} | {r['memory_total_mb']:.0f} | {r['usable_mb']:.0f} | "
                     f"{'yes' if r['fits'] else 'no'} | {r['tg_tokens_per_s']:.1f} | {r['pp_tokens_per_s']:.0f} | "
                     f"{'-' if r['kld'] is None else format(r['kld'], '.4f')} | {r['verdict']} |")
    if "bench" in data:
        b = data["bench"]
        lines += ["", "## Host measurements", "", f"Host: {b['host']['cpu']}, {b['host']['threads_used']} threads, "
                  f"copy bandwidth {b['host']['bandwidth_gb_s']} GB/s", "",
                  "| model | size MB | bpw | load s | pp tok/s (min-max) | tg tok/s (min-max) | peak RSS MB |",
                  "|---|---|---|---|---|---|---|"]
        for m in b["models"]:
            lines.append(f"| {m['name']} | {m['size_bytes'] / 1e6:.1f} | {m['bits_per_weight']:.2f} | "
                         f"{m['load_s']['median']:.2f} | {m['pp']['median']:.1f} ({m['pp']['min']:.1f}-{m['pp']['max']:.1f}) | "
                         f"{m['tg']['median']:.1f} ({m['tg']['min']:.1f}-{m['tg']['max']:.1f}) | {m['peak_rss_mb']:.0f} |")
    lines += ["", "Plots: see report.html (quality vs size, projected tok/s per device, memory vs budget).", ""]
    return "\n".join(lines)


def _html(data: dict, plots: dict[str, str], md_text: str) -> str:
    fit = data["fit"]
    pick_rows = "".join(
        f"<tr class='{'pick' if v else 'none'}'><td>{html.escape(p)}</td><td>{html.escape(v or 'nothing fits')}</td>"
        f"<td>{html.escape(fit['summary'][p])}</td></tr>" for p, v in fit["picks"].items())
    rows = "".join(
        f"<tr class='{'pick' if r['verdict'] == 'pick' else ''}'><td>{html.escape(r['profile'])}</td>"
        f"<td>{html.escape(r['variant'])}</td><td>{r['memory_total_mb']:.0f}</td><td>{r['usable_mb']:.0f}</td>"
        f"<td>{'yes' if r['fits'] else 'no'}</td><td>{r['tg_tokens_per_s']:.1f}</td><td>{r['pp_tokens_per_s']:.0f}</td>"
        f"<td>{html.escape(r['verdict'])}</td></tr>" for r in fit["rows"])
    figs = "".join(f"<figure>{svg}</figure>" for svg in plots.values())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edgepack report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
tr.pick td {{ background: #d9f2d9; font-weight: bold; }}
tr.none td {{ background: #f8d7d7; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
figure svg {{ max-width: 640px; height: auto; }}
</style></head><body>
<h1>edgepack report</h1>
<p>Context planned for {fit['n_ctx']} tokens.</p>
<h2>Pick per device</h2>
<table><tr><th>device</th><th>pick</th><th>why</th></tr>{pick_rows}</table>
<h2>Plots</h2>
{figs}
<h2>Every variant on every device</h2>
<table><tr><th>device</th><th>variant</th><th>memory MB</th><th>usable MB</th><th>fits</th><th>tg tok/s</th>
<th>pp tok/s</th><th>verdict</th></tr>{rows}</table>
</body></html>
"""


def write_report(results: str | Path | dict, out_dir: str | Path) -> ReportResult:
    """Write report.md, report.html (self-contained) and results.json into ``out_dir``."""
    data = results if isinstance(results, dict) else load_results(results)
    if isinstance(results, dict) and "fit" not in data:
        data = {"fit": data}
    out = prepare_output_dir(out_dir)
    plots = _plots(data)
    md_text = _md(data)
    atomic_write_text(out / "report.md", md_text)
    atomic_write_text(out / "report.html", _html(data, plots, md_text))
    atomic_write_text(out / "results.json", json.dumps(data, indent=2))
    return ReportResult(out / "report.md", out / "report.html", out / "results.json", len(plots))
