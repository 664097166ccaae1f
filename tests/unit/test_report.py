"""edgepack report: Markdown and self-contained HTML with its plots, from fit and bench results (rendered by headless
Chromium: tests/integration/test_report.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.fit import Quality, Variant, describe_config, fit
from edgepack.profiles import get_profile
from edgepack.report import write_report
from tests.support.tinymodels import real_config


PROFILES = ("pixel-6", "pixel-8", "galaxy-s23", "iphone-15-pro", "raspberry-pi-5-8gb", "macbook-air-m1-8gb")


def _fit_json(tmp_path_factory, cfg: dict, name: str, kinds) -> Path:
    variants = [Variant(describe_config(cfg, q, name), Quality(mean_kld=k)) for q, k in kinds]
    res = fit(variants, [get_profile(n) for n in PROFILES], n_ctx=4096, min_tps=10, max_kld=0.03)
    path = tmp_path_factory.mktemp("rep") / "fit.json"
    path.write_text(json.dumps(res.to_dict()))
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A 1.2B model: some variants do not fit the 4 GB phones."""
    return _fit_json(tmp_path_factory, real_config("llama3_2_1b"), "llama1b",
                     (("Q8_0", 0.001), ("Q4_K_M", 0.02), ("Q4_0", 0.04), ("F16", 0.0)))


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    """The demo's size: a ~3 MB model, whose weights are a sliver of any budget."""
    cfg = real_config("llama2_7b") | {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
                                      "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 4096}
    return _fit_json(tmp_path_factory, cfg, "demo", (("Q8_0", 0.002), ("Q4_K_M", 0.03), ("Q4_0", 0.05), ("F16", 0.0)))


def test_report_files(results, tmp_path):
    out = write_report(results, tmp_path / "report")
    md = out.markdown.read_text()
    page = out.html.read_text()
    data = json.loads(out.json.read_text())
    assert "## Pick per device" in md and "pixel-8" in md
    assert page.count("<svg") == 3
    assert "fastest:" in md or "opencl" in page  # the recommended backend is shown where it differs
    assert not any(f'{attr}="{scheme}' in page for attr in ("src", "href", "xlink:href") for scheme in ("http", "//"))
    assert "<script" not in page and "<img" not in page  # nothing to fetch: plots are inline SVG
    assert data["fit"]["picks"]
    assert "class='pick'" in page


def test_report_cli(results, tmp_path):
    res = subprocess.run([sys.executable, "-m", "edgepack", "report", str(results), "-o", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r" / "report.html").is_file()
    bad = subprocess.run([sys.executable, "-m", "edgepack", "report", str(tmp_path / "missing.json")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_charts_are_per_device_with_budget_pick_and_readable_small_models(tiny_results):
    """Per device: quality vs speed (pick starred, over-budget crossed) and memory by part against the budget, on
    each panel's own scale; the 3 MB model's projections stay plausible (the per-token floor) and its weights are
    labelled, not an invisible sliver."""
    out = write_report(tiny_results, Path(tiny_results).parent / "report")
    page = out.html.read_text()
    data = json.loads(out.json.read_text())
    assert page.count("<svg") == 3
    for p in PROFILES:
        assert page.count(f">{p}<") >= 2 or page.count(p) >= 3  # a panel per device in both grids (SVG titles)
    assert "Quality vs projected speed per device" in page and "Memory per device" in page
    assert "(weights 3" in page or "(weights 2" in page or "(weights 1" in page  # the tiny weights, labelled
    assert max(r["tg_tokens_per_s"] for r in data["fit"]["rows"]) < 5_000


def _bench_model(name: str, quant: str, imatrix: str | None, size_bytes: int, kld: float, ppl: float) -> dict:
    timing = {"median": 1.0, "min": 1.0, "max": 1.0}
    return {"name": name, "quant": quant, "imatrix": imatrix, "size_bytes": size_bytes, "bits_per_weight": 4.0,
            "load_s": timing, "pp": timing, "tg": timing, "peak_rss_mb": 10.0,
            "quality": {"mean_kld": kld, "ppl": ppl, "delta_ppl": 0.1, "top1_agreement": 0.9}}


def test_types_built_with_and_without_an_imatrix_are_compared(tiny_results, tmp_path):
    """[quantize] imatrix = "compare": a table (Markdown and HTML) and a plot of KLD/PPL/size per type, with and
    without; a type built one way only (IQ2_XS needs an imatrix) has no row."""
    data = {"fit": json.loads(Path(tiny_results).read_text()),
            "bench": {"host": {"cpu": "test", "threads_used": 1, "bandwidth_gb_s": 1.0}, "reference": None,
                      "models": [_bench_model("demo-Q2_K", "Q2_K", None, 1_372_000, 0.0036, 9.1),
                                 _bench_model("demo-Q2_K-imatrix", "Q2_K", "demo.imatrix.gguf", 1_372_000, 0.0027, 8.9),
                                 _bench_model("demo-Q4_K_M", "Q4_K_M", None, 1_916_000, 0.0003, 8.70),
                                 _bench_model("demo-Q4_K_M-imatrix", "Q4_K_M", "demo.imatrix.gguf", 1_916_000,
                                              0.0002, 8.69),
                                 _bench_model("demo-IQ2_XS-imatrix", "IQ2_XS", "demo.imatrix.gguf", 1_122_000,
                                              0.0052, 9.5)]}}
    out = write_report(data, tmp_path / "report")
    md, page = out.markdown.read_text(), out.html.read_text()
    assert "## With and without the importance matrix" in md and "demo.imatrix.gguf" in md
    assert "| Q2_K | 1.372 | 1.372 | 0.003600 | 0.002700 | 0.750 | 9.100 | 8.900 |" in md
    assert "| Q4_K_M | 1.916 | 1.916 | 0.000300 | 0.000200 | 0.667 | 8.700 | 8.690 |" in md
    assert "| IQ2_XS |" not in md
    assert "<h2>With and without the importance matrix</h2>" in page and "<td>0.750</td>" in page
    assert page.count("<svg") == 4 and "With and without the importance matrix" in page.split("<h2>Plots</h2>")[1]
    without = write_report({**data, "bench": {**data["bench"], "models": data["bench"]["models"][-1:]}},
                           tmp_path / "one-way")
    assert "With and without" not in without.markdown.read_text() and without.html.read_text().count("<svg") == 3
