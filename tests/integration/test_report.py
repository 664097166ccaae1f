"""edgepack report rendered by headless Chromium: the HTML page and its plots draw (the report's content:
tests/unit/test_report.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgepack.report import write_report
from tests.unit.test_report import results, tiny_results  # noqa: F401  (fixtures the test asks for by name)

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (Debian package `chromium`; "
                    "the Makefile/CI installs it)")
@pytest.mark.parametrize("which", ["results", "tiny_results"])
def test_html_renders_in_headless_chromium_with_plots(which, request, tmp_path):
    out = write_report(request.getfixturevalue(which), tmp_path / "report")
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--window-size=1400,2600", f"--screenshot={shot}", out.html.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000
    keep = Path(__file__).resolve().parents[2] / ".pytest-screens"  # for a person to look at: EDGEPACK_KEEP_SCREENS=1
    if os.environ.get("EDGEPACK_KEEP_SCREENS"):
        keep.mkdir(exist_ok=True)
        shutil.copy(shot, keep / f"report-{which}.png")
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    rgb = img[..., :3]
    # not a blank page: many distinct colours (bars, table shading, text) and coloured pixels from the plots
    colours = np.unique((rgb.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 100
    saturated = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3
    assert saturated.mean() > 0.0005  # bars, dots and the pick star are in colour; a blank page has none
