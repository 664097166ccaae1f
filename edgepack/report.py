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

import numpy as np

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


# An SVG carries a date and ids that matplotlib salts at random unless told otherwise; reports are reproducible
# byte for byte (a bundle ships one), so both are fixed: the date of SOURCE_DATE_EPOCH=0, a constant salt.
SVG_DATE = "1970-01-01T00:00:00+00:00"
SVG_HASHSALT = "edgepack"


def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASHSALT}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": SVG_DATE})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def imatrix_pairs(models: list[dict]) -> list[dict]:
    """The with/without comparison: one row per quant type built both without an importance matrix and with one
    (``[quantize] imatrix = "compare"``). ``models``: the report's bench models, each with ``quant``, ``imatrix``
    (its file name; empty or None without), ``size_bytes`` and ``quality`` (evaluate.Quality's mean_kld, ppl)."""
    pairs: dict[str, dict[str, dict]] = {}
    for m in models:
        if m.get("quant"):
            pairs.setdefault(m["quant"], {})["with" if m.get("imatrix") else "without"] = m
    rows = []
    for quant, pair in pairs.items():
        if len(pair) != 2:
            continue
        row = {"quant": quant, "imatrix": pair["with"]["imatrix"]}
        for side, m in pair.items():
            q = m.get("quality") or {}
            row |= {f"size_mb_{side}": round(m["size_bytes"] / 1e6, 3), f"kld_{side}": q.get("mean_kld"),
                    f"ppl_{side}": q.get("ppl")}
        kld_with, kld_without = row["kld_with"], row["kld_without"]
        row["kld_ratio"] = round(kld_with / kld_without, 3) if kld_with is not None and kld_without else None
        rows.append(row)
    return rows


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _imatrix_plot(plt, rows: list[dict]) -> str:
    """Mean KLD per quant type without and with the importance matrix, side by side (log scale)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = np.arange(len(rows))
    for offset, side, colour in ((-0.2, "without", "#bbbbbb"), (0.2, "with", "#1f77b4")):
        ax.bar(xs + offset, [r[f"kld_{side}"] or 0 for r in rows], width=0.4, color=colour,
               label=f"{side} imatrix")
    ax.set_xticks(xs, [r["quant"] for r in rows], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("KLD vs reference (lower is better)", fontsize=7)
    ax.set_title("With and without the importance matrix", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    svg = _svg(fig)
    plt.close(fig)
    return svg


def _plots(data: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["fit"]["rows"]
    picks = data["fit"]["picks"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    size = {r["variant"]: r["size_mb"] for r in rows}
    out: dict[str, str] = {}

    # 1. quality vs size
    fig, ax = plt.subplots(figsize=(6, 3.6))
    kld = {r["variant"]: r.get("mean_kld") for r in rows}
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
    ax.set_xscale("log")  # a 3 MB demo and an 8 GB model in one readable plot
    ax.set_title("Quality vs size")
    out["quality_vs_size"] = _svg(fig)
    plt.close(fig)

    # 2. per device: quality vs projected generation speed, memory budget visible, pick marked
    out["quality_vs_speed"] = _per_device_grid(plt, rows, profiles, picks, _quality_speed_panel,
                                               "Quality vs projected speed per device (star = pick; red x = over the "
                                               "memory budget)")
    # 3. per device: memory parts of every variant against the device's budget
    out["memory"] = _per_device_grid(plt, rows, profiles, picks, _memory_panel,
                                     "Memory per device: weights, KV cache, compute, runtime (dashed = usable)")
    # 4. where types were built both ways: KLD with and without the importance matrix
    pairs = imatrix_pairs(data.get("bench", {}).get("models", []))
    if pairs:
        out["imatrix"] = _imatrix_plot(plt, pairs)
    return out


def _quality(r: dict, use_kld: bool) -> float:
    return r.get("mean_kld") if use_kld else r["bits_per_weight"]


def _per_device_grid(plt, rows: list[dict], profiles: list[str], picks: dict, panel, title: str) -> str:
    """Small multiples, one panel per device (4 per row), each with its own scale: a 3 MB model on one phone is
    as readable as an 8B model on a laptop."""
    cols = min(4, len(profiles))
    n_rows = (len(profiles) + cols - 1) // cols
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.4 * cols, 2.7 * n_rows), squeeze=False)
    use_kld = all(r.get("mean_kld") is not None for r in rows)
    for ax, p in zip(axes.flat, profiles):
        panel(ax, [r for r in rows if r["profile"] == p], picks.get(p), use_kld)
        ax.set_title(p, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(profiles):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    svg = _svg(fig)
    plt.close(fig)
    return svg


def _quality_speed_panel(ax, rows: list[dict], pick: str | None, use_kld: bool) -> None:
    for r in rows:
        x, y = r["tg_tokens_per_s"], _quality(r, use_kld)
        if r["variant"] == pick:
            ax.scatter([x], [y], marker="*", s=140, color="#2ca02c", edgecolor="black", zorder=3)
        elif r["fits"]:
            ax.scatter([x], [y], s=22, color="#1f77b4", zorder=2)
        else:
            ax.scatter([x], [y], marker="x", s=30, color="#d62728", zorder=2)
        over = "" if r["fits"] else f" (+{r['memory_total_mb'] - r['usable_mb']:.0f} MB)"
        ax.annotate(r["variant"].rsplit("-", 1)[-1] + over, (x, y), fontsize=5.5, xytext=(3, 2),
                    textcoords="offset points")
    ax.set_xlabel("projected tok/s", fontsize=6)
    ax.set_ylabel("KLD (lower is better)" if use_kld else "bits per weight", fontsize=6)
    ax.margins(0.25)


def _memory_panel(ax, rows: list[dict], pick: str | None, use_kld: bool) -> None:
    parts = (("weights_mb", "weights", "#1f77b4"), ("tied_output_copy_mb", "tied copy", "#9ecae1"),
             ("kv_cache_mb", "KV cache", "#ff7f0e"), ("compute_mb", "compute", "#2ca02c"),
             ("output_mb", "logits", "#bcbd22"), ("overhead_mb", "runtime", "#bbbbbb"))
    names = [r["variant"].rsplit("-", 1)[-1] for r in rows]
    for i, r in enumerate(rows):
        left = 0.0
        for key, label, colour in parts:
            v = r["memory"].get(key, 0.0)
            ax.barh(i, v, left=left, color=colour, label=label if i == 0 else None, height=0.6)
            left += v
        star = " *pick*" if r["variant"] == pick else ""
        w = r["memory"].get("weights_mb", 0.0)
        ax.text(left, i, f" {left:.0f} MB (weights {w:.0f} MB){star}" if w >= 10 else
                f" {left:.0f} MB (weights {w:.1f} MB){star}", va="center", fontsize=5.5,
                color="black" if r["fits"] else "#d62728")
    budget = rows[0]["usable_mb"] if rows else 0
    ax.axvline(budget, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), names, fontsize=6)
    ax.set_xlim(0, max([budget] + [r["memory_total_mb"] for r in rows]) * 1.6)
    ax.set_xlabel(f"MB (usable {budget:.0f})", fontsize=6)
    if rows:
        ax.legend(fontsize=4.5, loc="lower right", frameon=False)


def _backend_cell(r: dict) -> str:
    """The row's backend, and the fastest one that fits when that is another (fit's best_backend)."""
    best = r.get("best_backend") or r.get("backend", "")
    be = r.get("backend", "")
    if best and best != be:
        tg = r.get("by_backend", {}).get(best, {}).get("tg_tokens_per_s")
        return f"{be} (fastest: {best}" + (f", {tg:.1f} tok/s)" if tg else ")")
    return be


def _md(data: dict) -> str:
    fit = data["fit"]
    lines = ["# edgepack report", "", f"Context planned for: {fit['n_ctx']} tokens"
             + (f"; min {fit['min_tps']} tok/s" if fit.get("min_tps") else "")
             + (f"; max KLD {fit['max_kld']}" if fit.get("max_kld") else ""), "", "## Pick per device", "",
             "| device | pick | why |", "|---|---|---|"]
    for p, v in fit["picks"].items():
        lines.append(f"| {p} | {v or '**nothing fits**'} | {fit['summary'][p]} |")
    lines += ["", "## Every variant on every device", "",
              "| device | variant | backend | memory MB | usable MB | fits | tg tok/s | pp tok/s | KLD | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in fit["rows"]:
        lines.append(f"| {r['profile']} | {r['variant']} | {_backend_cell(r)} | {r['memory_total_mb']:.0f} | "
                     f"{r['usable_mb']:.0f} | "
                     f"{'yes' if r['fits'] else 'no'} | {r['tg_tokens_per_s']:.1f} | {r['pp_tokens_per_s']:.0f} | "
                     f"{'-' if r.get('mean_kld') is None else format(r.get('mean_kld'), '.4f')} | {r['verdict']} |")
    if "bench" in data:
        b = data["bench"]
        lines += ["", "## Host measurements", "", f"Host: {b['host']['cpu']}, {b['host']['threads_used']} threads, "
                  f"copy bandwidth {b['host']['bandwidth_gb_s']} GB/s", "",
                  "| model | size MB | bpw | load s | pp tok/s (min-max) | tg tok/s (min-max) | peak RSS MB "
                  "| imatrix |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in b["models"]:  # imatrix: the file the variant was quantized with, "-" for none
            lines.append(f"| {m['name']} | {m['size_bytes'] / 1e6:.1f} | {m['bits_per_weight']:.2f} | "
                         f"{m['load_s']['median']:.2f} | {m['pp']['median']:.1f} ({m['pp']['min']:.1f}-{m['pp']['max']:.1f}) | "
                         f"{m['tg']['median']:.1f} ({m['tg']['min']:.1f}-{m['tg']['max']:.1f}) | "
                         f"{m['peak_rss_mb']:.0f} | {m.get('imatrix') or '-'} |")
    lines += _imatrix_md(imatrix_pairs(data.get("bench", {}).get("models", [])))
    lines += ["", "Plots: see report.html (quality vs size; per device, quality vs projected speed with the pick and the "
              "memory budget, and memory by part against the budget).", ""]
    return "\n".join(lines)


_PAIR_COLUMNS = ("type", "size MB without", "size MB with", "KLD without", "KLD with", "with / without",
                 "PPL without", "PPL with")


def _pair_cells(r: dict) -> list[str]:
    return [r["quant"], _num(r["size_mb_without"], ".3f"), _num(r["size_mb_with"], ".3f"),
            _num(r["kld_without"], ".6f"), _num(r["kld_with"], ".6f"), _num(r["kld_ratio"], ".3f"),
            _num(r["ppl_without"], ".3f"), _num(r["ppl_with"], ".3f")]


def _imatrix_md(pairs: list[dict]) -> list[str]:
    if not pairs:
        return []
    lines = ["", "## With and without the importance matrix", "",
             f"Each type built twice from the same model: without an imatrix, and with {pairs[0]['imatrix']}; "
             "quality measured on the same text against the same reference.", "",
             "| " + " | ".join(_PAIR_COLUMNS) + " |", "|" + "---|" * len(_PAIR_COLUMNS)]
    return lines + ["| " + " | ".join(_pair_cells(r)) + " |" for r in pairs]


def _imatrix_html(pairs: list[dict]) -> str:
    if not pairs:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _PAIR_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _pair_cells(r)) + "</tr>" for r in pairs)
    return (f"<h2>With and without the importance matrix</h2>\n<p>Each type built twice from the same model: "
            f"without an imatrix, and with {html.escape(str(pairs[0]['imatrix']))}.</p>\n"
            f"<table><tr>{head}</tr>{body}</table>\n")


def _html(data: dict, plots: dict[str, str], md_text: str) -> str:
    fit = data["fit"]
    pick_rows = "".join(
        f"<tr class='{'pick' if v else 'none'}'><td>{html.escape(p)}</td><td>{html.escape(v or 'nothing fits')}</td>"
        f"<td>{html.escape(fit['summary'][p])}</td></tr>" for p, v in fit["picks"].items())
    rows = "".join(
        f"<tr class='{'pick' if r['verdict'] == 'pick' else ''}'><td>{html.escape(r['profile'])}</td>"
        f"<td>{html.escape(r['variant'])}</td><td>{html.escape(_backend_cell(r))}</td>"
        f"<td>{r['memory_total_mb']:.0f}</td><td>{r['usable_mb']:.0f}</td>"
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
figure svg {{ max-width: 1400px; height: auto; }}
</style></head><body>
<h1>edgepack report</h1>
<p>Context planned for {fit['n_ctx']} tokens.</p>
<h2>Pick per device</h2>
<table><tr><th>device</th><th>pick</th><th>why</th></tr>{pick_rows}</table>
{_imatrix_html(imatrix_pairs(data.get("bench", {}).get("models", [])))}<h2>Plots</h2>
{figs}
<h2>Every variant on every device</h2>
<table><tr><th>device</th><th>variant</th><th>backend</th><th>memory MB</th><th>usable MB</th><th>fits</th><th>tg tok/s</th>
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
