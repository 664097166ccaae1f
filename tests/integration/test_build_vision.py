"""`edgepack build` on a vision-language source: every bundle carries the text GGUF of its variant and the
projector (manifest role ``mmproj``), and ``verify`` checks both (hashes, the projector against the model, an image
encoded through libmtmd). A tiny Qwen3-VL (tests.support.vision_cases) built with one quant type and one profile."""

from __future__ import annotations

import json

import gguf
import pytest

from edgepack.bundle import read_manifest, verify_bundle
from edgepack.config import resolve
from edgepack.errors import UnsupportedArchitecture
from edgepack.ggufheader import read_header
from edgepack.pipeline import build
from tests.support.vision_cases import TINY_QWEN_VLM, tiny_qwen_vlm

pytestmark = pytest.mark.slow  # a whole build (convert, quantize, eval, bench, fit, bundle) of a tiny VLM


def _config(tmp_path, source, mmproj: str | None = None):
    """One quant type, one profile, a short eval, no report: the cheapest build that runs every step."""
    toml = tmp_path / "edgepack.toml"
    toml.write_text(f'name = "vlm"\nsource = "{source}"\n[quantize]\ntypes = ["Q8_0"]\n'
                    + (f'mmproj = "{mmproj}"\n' if mmproj else "")
                    + '[profiles]\nnames = ["pixel-8"]\n[constraints]\nctx = 256\n[eval]\ntokens = 256\n'
                    '[outputs]\nreport = false\n')
    return resolve(toml, cli={"outputs.dir": str(tmp_path / "out")}, env={})


@pytest.fixture(scope="module")
def vlm_source(tmp_path_factory, tokenizer_folders):
    root = tmp_path_factory.mktemp("vlm-source")
    return tiny_qwen_vlm("qwen3-vl-2b", root / "model", tokenizer_folders(TINY_QWEN_VLM["qwen3-vl-2b"][2]))


def test_build_ships_and_verifies_the_projector(vlm_source, tmp_path):
    """Default settings (quantize.mmproj = "auto"): the projector is converted once (F16), shipped beside the picked
    variant, counted in the fit, and verified; a second build does no work."""
    result = build(_config(tmp_path, vlm_source))
    [bundle] = [b for b in result.bundles if b.folder is not None]
    manifest = read_manifest(bundle.folder)
    roles = {f["path"]: f["role"] for f in manifest["files"]}
    [projector] = [p for p, role in roles.items() if role == "mmproj"]
    assert list(roles.values()).count("model") == 1
    header = gguf.GGUFReader(bundle.folder / projector)
    assert header.fields["clip.projector_type"].contents() == "qwen3vl_merger"
    assert header.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert manifest["mmproj"]["base"]["file"] == next(p for p, role in roles.items() if role == "model")
    made = result.projector
    assert made is not None and made.sha256 == next(f["sha256"] for f in manifest["files"] if f["path"] == projector)
    # the fit counts it: tensors + the compute buffer libmtmd reserved when the step loaded it
    expected_mb = (read_header(made.path).data_bytes + made.compute_bytes) / 1e6
    assert manifest["fit"]["memory"]["projector_mb"] == pytest.approx(expected_mb, abs=0.01)
    assert json.loads(json.dumps(result.to_json()))["projector"]["projector_type"] == "qwen3vl_merger"
    checked = verify_bundle(bundle.folder)
    assert checked.mmproj == projector and checked.loaded

    again = build(_config(tmp_path, vlm_source))
    assert again.nothing_to_do and {s.step: s.status for s in again.steps}["mmproj"] == "cached"


def test_build_projector_settings(vlm_source, tmp_path):
    """quantize.mmproj = "none" ships the text model alone (and the fit has no projector part); a projector type
    for a text-only source is refused in one line before any work."""
    result = build(_config(tmp_path, vlm_source, mmproj="none"))
    [bundle] = [b for b in result.bundles if b.folder is not None]
    manifest = read_manifest(bundle.folder)
    assert "mmproj" not in {f["role"] for f in manifest["files"]} and "mmproj" not in manifest
    assert "projector_mb" not in manifest["fit"]["memory"] and result.projector is None
    assert verify_bundle(bundle.folder).mmproj is None

    text_only = tmp_path / "text-only"
    text_only.mkdir()
    for f in vlm_source.iterdir():
        (text_only / f.name).symlink_to(f)
    (text_only / "config.json").unlink()
    config = json.loads((vlm_source / "config.json").read_text())
    (text_only / "config.json").write_text(json.dumps({**config, "architectures": ["Qwen3ForCausalLM"]}))
    (tmp_path / "t").mkdir()
    with pytest.raises(UnsupportedArchitecture, match="Qwen3ForCausalLM has no vision projector") as info:
        build(_config(tmp_path / "t", text_only, mmproj="q8_0"))
    assert not (tmp_path / "t" / "out" / ".edgepack-cache" / "convert").exists()  # refused before converting
    assert 'quantize.mmproj = "none"' in info.value.hint
