"""edgepack report: Markdown, self-contained HTML with three plots, rendered by headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.fit import Quality, Variant, describe_config, fit
from edgepack.profiles import get_profile
from edgepack.report import write_report
from tinymodels import real_config

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    cfg = real_config("llama3_2_1b")
    variants = [Variant(describe_config(cfg, q, "llama1b"), Quality(kld=k))
                for q, k in (("Q8_0", 0.001), ("Q4_K_M", 0.02), ("Q4_0", 0.04), ("F16", 0.0))]
    profiles = [get_profile(n) for n in ("pixel-6", "pixel-8", "iphone-15-pro", "raspberry-pi-5-8gb", "macbook-air-m1-8gb")]
    res = fit(variants, profiles, n_ctx=4096, min_tps=10, max_kld=0.03)
    path = tmp_path_factory.mktemp("rep") / "fit.json"
    path.write_text(json.dumps(res.to_dict()))
    return path


def test_report_files(results, tmp_path):
    out = write_report(results, tmp_path / "report")
    md = out.markdown.read_text()
    page = out.html.read_text()
    data = json.loads(out.json.read_text())
    assert "## Pick per device" in md and "pixel-8" in md
    assert page.count("<svg") == 3
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


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (Debian package `chromium`; "
                    "the Makefile/CI installs it)")
def test_html_renders_in_headless_chromium_with_plots(results, tmp_path):
    out = write_report(results, tmp_path / "report")
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--window-size=1400,2000", f"--screenshot={shot}", out.html.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    rgb = img[..., :3]
    # not a blank page: many distinct colours (bars, table shading, text) and coloured pixels from the plots
    colours = np.unique((rgb.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 100
    saturated = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3
    assert saturated.mean() > 0.005
