"""`edgepack build` with [quantize] imatrix = "compare" and device_mixes = true, on the demo model: every type is
built with and without the importance matrix and the report compares them; each named device gets the mix of
least measured KLD that fits it, which fit then picks where nothing uniform fits; re-runs do nothing; a device
no mix can fit is refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgepack import fit as fit_mod
from edgepack.config import resolve
from edgepack.devicemix import device_budget
from edgepack.errors import UsageError
from edgepack.pipeline import build
from edgepack.profiles import SHIPPED_DIR, load_profile_file

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "demo" / "model"
N_CTX = 256


def _device(folder: Path, name: str, usable_bytes: int) -> Path:
    text = (SHIPPED_DIR / "pixel-8.toml").read_text().replace('name = "pixel-8"', f'name = "{name}"')
    text = re.sub(r"usable = \{ gb = [0-9.]+", f"usable = {{ gb = {usable_bytes / 1e9!r}", text)
    text = re.sub(r"overhead = \{ mb = [0-9.]+", "overhead = { mb = 1", text)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def _config(folder: Path, devices: list[str]):
    (folder / "cal.txt").write_text((ROOT / "examples" / "demo" / "eval.txt").read_text(encoding="utf-8")[:3000],
                                    encoding="utf-8")
    toml = folder / "edgepack.toml"
    toml.write_text(f'name = "demo"\nsource = "{MODEL}"\n'
                    '[quantize]\ntypes = ["Q4_K_M", "Q2_K"]\nimatrix = "compare"\ncalibration = "cal.txt"\n'
                    'device_mixes = true\n'
                    f'[profiles]\nnames = {devices!r}\npaths = ["devices"]\n'.replace("'", '"')
                    + f'[constraints]\nctx = {N_CTX}\n[eval]\ntokens = 512\n[bench]\nthreads = 1\n')
    return resolve(toml, cli={"outputs.dir": str(folder / "out")}, env={})


@pytest.mark.slow
def test_compare_and_device_mixes(tmp_path):
    from edgepack.convert import convert
    from edgepack.quantize import quantize

    (tmp_path / "devices").mkdir()
    (tmp_path / "ref").mkdir()
    # a device that holds uniform Q2_K's weights minus 10%: no uniform type fits it, a mix with IQ types can
    f16 = convert(MODEL, tmp_path / "ref" / "demo-F16.gguf", outtype="f16").output
    [q2] = quantize(f16, ["Q2_K"], tmp_path / "ref", threads=1)
    probe = load_profile_file(_device(tmp_path / "devices", "probe", 10**9))
    others = 10**9 - device_budget(f16, probe, N_CTX).weights_bytes
    (tmp_path / "devices" / "probe.toml").unlink()
    _device(tmp_path / "devices", "tight", others + int(fit_mod.describe_gguf(q2.output).weight_bytes * 0.9))
    _device(tmp_path / "devices", "roomy", 4 * 10**9)
    cfg = _config(tmp_path, ["tight", "roomy"])
    result = build(cfg)
    names = set(result.variants)
    assert {"demo-Q4_K_M", "demo-Q4_K_M-imatrix", "demo-Q2_K", "demo-Q2_K-imatrix", "demo-MIX-tight",
            "demo-MIX-roomy"} == names, names
    assert result.variants["demo-Q2_K"].imatrix is None and result.variants["demo-Q2_K-imatrix"].imatrix is not None
    assert len([s for s in result.ran if s.step == "sensitivity"]) == 1  # once, for both devices
    assert result.picks["base"]["tight"] == "demo-MIX-tight"
    rows = {(r.profile, r.variant): r for r in result.fits.lines["base"].rows}
    assert rows[("tight", "demo-MIX-tight")].fits
    assert not any(rows[("tight", f"demo-{q}")].fits for q in ("Q4_K_M", "Q4_K_M-imatrix", "Q2_K", "Q2_K-imatrix"))
    report = (cfg.output_dir / "report" / "report.md").read_text()
    assert "## With and without the importance matrix" in report
    for q in ("Q4_K_M", "Q2_K"):
        assert re.search(rf"^\| {q} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", report, re.M), report
    assert build(cfg).ran == []  # cached like every step

    _device(tmp_path / "devices", "tiny", others // 2)
    with pytest.raises(UsageError, match="no mix fits tiny") as caught:
        build(_config(tmp_path, ["tight", "tiny"]))
    assert "left for weights on tiny" in caught.value.hint
