"""The plan of a build with [quantize] imatrix = "compare" and device_mixes = true: which units, which names."""

from __future__ import annotations

from edgepack.config import resolve
from edgepack.pipeline import matrix, plan
from edgepack.pipeline.plan import variant_name


def test_compare_and_device_mixes_make_their_units(tmp_path):
    (tmp_path / "edgepack.toml").write_text(
        'name = "m"\nsource = "./model"\n[quantize]\ntypes = ["Q4_K_M", "IQ2_XS"]\nimatrix = "compare"\n'
        'device_mixes = true\n[profiles]\nnames = ["pixel-8", "raspberry-pi-5-8gb"]\n')
    cfg = resolve(tmp_path / "edgepack.toml", env={})
    units = plan(cfg)
    assert [(u.key, u.kind, u.quant, u.imatrix, u.profile) for u in units] == [
        ("q4_k_m", "variant", "Q4_K_M", False, None),  # without the imatrix
        ("q4_k_m-imatrix", "variant", "Q4_K_M", True, None),  # with it
        ("iq2_xs-imatrix", "variant", "IQ2_XS", True, None),  # needs one: only with
        ("mix-pixel-8", "mix", "MIX-pixel-8", None, "pixel-8"),
        ("mix-raspberry-pi-5-8gb", "mix", "MIX-raspberry-pi-5-8gb", None, "raspberry-pi-5-8gb")]
    assert [variant_name(cfg, u) for u in units] == ["m-Q4_K_M", "m-Q4_K_M-imatrix", "m-IQ2_XS-imatrix",
                                                     "m-MIX-pixel-8", "m-MIX-raspberry-pi-5-8gb"]
    jobs = matrix(cfg)["include"]
    assert jobs[0] == {"key": "q4_k_m", "kind": "variant", "line": "base", "quant": "Q4_K_M", "imatrix": False}
    assert jobs[-1] == {"key": "mix-raspberry-pi-5-8gb", "kind": "mix", "line": "base",
                        "quant": "MIX-raspberry-pi-5-8gb", "profile": "raspberry-pi-5-8gb"}
    # without either, the plan is what it was: one unit per type, no imatrix or profile field
    (tmp_path / "edgepack.toml").write_text('name = "m"\nsource = "./model"\n[quantize]\ntypes = ["Q4_K_M"]\n')
    assert matrix(resolve(tmp_path / "edgepack.toml", env={}))["include"] == [
        {"key": "q4_k_m", "kind": "variant", "line": "base", "quant": "Q4_K_M"}]
