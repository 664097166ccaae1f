"""Gemma-specific structure: what the per-family logits tests in test_families.py cannot show on their own.

* Gemma 3 4B/12B/27B (Gemma3ForConditionalGeneration): the text model converts from every layout its
  checkpoints come in (transformers 4.x names with the Hub's sparse text_config, 5.x names), the vision tower
  and projector are left out and reported, and the logit soft-cap the multimodal class never applies stays out.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import cli
from edgepack.convert import convert
from family_cases import CASES, _merged
from gemma_configs import GEMMA3_4B_IT
from tinymodels import compare, llama_cpp_logits

GEMMA3_MULTIMODAL = next(c for c in CASES if c.name == "gemma3-4b-multimodal")


def _relayout(src, dst, rename, config: dict | None = None) -> None:
    """Copy the checkpoint folder ``src`` to ``dst`` with every tensor renamed by ``rename`` (and config.json
    replaced by ``config`` when given)."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    save_file({rename(n): t for n, t in tensors.items()}, dst / "model.safetensors")
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))


def _tensors(path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def _hub_name(name: str) -> str:
    """transformers 5.x's saved names -> the Hub's gemma-3-4b-it layout (SigLIP under vision_model.)."""
    return name.replace("vision_tower.", "vision_tower.vision_model.", 1)


def _v5_name(name: str) -> str:
    """-> model.language_model.*, model.vision_tower.*, model.multi_modal_projector.* (no lm_head: tied)."""
    for old, new in (("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


@pytest.mark.slow
@pytest.mark.parametrize("built", [GEMMA3_MULTIMODAL], indirect=True, ids=[GEMMA3_MULTIMODAL.name])
def test_gemma3_multimodal_checkpoint_layouts(built, tmp_path):
    """The same weights under the Hub's layout (transformers 4.50 names, a text_config holding only what differs
    from the defaults) and under model.language_model.* give the same GGUF tensors and the same logits."""
    import torch
    import transformers

    case, folder, ids, references = built
    saved = json.loads((folder / "model/config.json").read_text())
    names = list(_tensors_in(folder / "model"))
    assert any(n.startswith("language_model.model.layers.") for n in names)
    # The Hub's config: GEMMA3_4B_IT with the test's sizes, nothing transformers fills in.
    sparse = _merged(GEMMA3_4B_IT, case.overrides)
    sparse["text_config"]["vocab_size"] = saved["text_config"]["vocab_size"]
    assert "num_attention_heads" not in sparse["text_config"] and "head_dim" not in sparse["text_config"]
    _relayout(folder / "model", tmp_path / "hub", _hub_name, sparse)
    _relayout(folder / "model", tmp_path / "v5", _v5_name)

    reference = convert(folder / "model", tmp_path / "saved.gguf", outtype="f32")
    expected = _tensors(tmp_path / "saved.gguf")
    for layout in ("hub", "v5"):
        result = convert(tmp_path / layout, tmp_path / f"{layout}.gguf", outtype="f32")
        assert result.dropped == reference.dropped
        got = _tensors(tmp_path / f"{layout}.gguf")
        assert list(got) == list(expected)
        assert all(np.array_equal(got[n], expected[n]) for n in expected), layout
        # transformers reads this layout as the same model (so it is a real one, not one made up here).
        model = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / layout, dtype=torch.float32)
        with torch.no_grad():
            hf = model(torch.tensor([ids])).logits[0].numpy()
        assert np.array_equal(hf, references["plain"]), layout
    max_abs, top1 = compare(references["f32"], llama_cpp_logits(tmp_path / "hub.gguf", ids))
    assert top1 == 1.0 and max_abs <= 2e-3


def _tensors_in(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "np") as f:
        return list(f.keys())


@pytest.mark.parametrize("built", [GEMMA3_MULTIMODAL], indirect=True, ids=[GEMMA3_MULTIMODAL.name])
def test_gemma3_multimodal_drops_the_vision_parts_and_says_so(built, tmp_path):
    case, folder, ids, references = built
    names = _tensors_in(folder / "model")
    n_vision = sum(n.startswith("vision_tower.") for n in names)
    n_projector = sum(n.startswith("multi_modal_projector.") for n in names)
    assert n_vision and n_projector
    out = tmp_path / "text.gguf"
    result = CliRunner().invoke(cli, ["convert", str(folder / "model"), "-o", str(out), "--outtype", "f16"])
    assert result.exit_code == 0, result.output
    assert (f"note: converted the text model only; not converted: multimodal projector ({n_projector} tensors), "
            f"vision tower ({n_vision} tensors)") in result.output
    reader = gguf.GGUFReader(out)
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("tokenizer.")}
    assert fields["general.architecture"] == "gemma3"
    assert fields["edgepack.source.dropped"] == ["multimodal projector", "vision tower"]
    # transformers' Gemma3ForConditionalGeneration never soft-caps its logits, though text_config names a cap.
    assert json.loads((folder / "model/config.json").read_text())["text_config"]["final_logit_softcapping"] == 30.0
    assert "gemma3.final_logit_softcapping" not in fields
    assert not any("vision" in t.name or "mm_" in t.name for t in reader.tensors)
    as_json = CliRunner().invoke(cli, ["convert", str(folder / "model"), "-o", str(out), "--force", "--json"])
    assert json.loads(as_json.output)["dropped"] == {"multimodal projector": n_projector, "vision tower": n_vision}


def test_gemma3_multimodal_refusals(tmp_path):
    """A text_config llama.cpp's gemma3 graph cannot run is refused with one line, nothing written."""
    from edgepack.convert import supported_architectures
    from edgepack.errors import UnsupportedArchitecture

    assert supported_architectures()["Gemma3ForConditionalGeneration"] == "gemma3"
    for text, message in (({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
                          ({"query_pre_attn_scalar": 100}, "query_pre_attn_scalar 100"),
                          ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "rope scaling type 'yarn'")):
        folder = tmp_path / message.split()[0]
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(_merged(GEMMA3_4B_IT, {"text_config": text})))
        with pytest.raises(UnsupportedArchitecture) as info:
            convert(folder, tmp_path / "out.gguf")
        assert message in str(info.value) and info.value.hint
        assert not (tmp_path / "out.gguf").exists()
