"""SmolLM3, Ministral 3 and Phi-4-mini: the structural details the logits comparison depends on, shown to matter.

The logits tests in test_families.py hold each family to transformers (F32 ≤ 1e-4, F16 ≤ 5e-3). Here each
family's special structure is checked on its own: the same converted GGUF is compared with transformers
computing *without* that detail (NoPE layers rotated, no query temperature, no YaRN), which must be far off,
so that the logits test fails when the detail is broken. (The settings llama.cpp cannot reproduce are refused:
tests/unit/test_family_refusals.py.)
"""

from __future__ import annotations

import json
import shutil

import gguf
import pytest

from edgepack.convert import convert
from edgepack.convert.families.smollm3 import llama_cpp_rope_layers
from tests.support.family_cases import CASES
from tests.support.tinymodels import compare, hf_logits, llama_cpp_logits, reload_float32

pytestmark = pytest.mark.slow  # each checkpoint built and run three ways with transformers (refusals: tests/unit)

F32_LIMIT = 1e-4  # test_families' F32 tolerance
SMOLLM3, MINISTRAL3, MINISTRAL3_MM, PHI4_MINI = (next(c for c in CASES if c.name == n) for n in (
    "smollm3-3b", "ministral3-8b", "ministral3-3b-multimodal", "phi4-mini"))


def _f32_gguf(folder):
    path = folder / "f32.gguf"
    if not path.exists():
        convert(folder / "model", path, outtype="f32")
    return path


def _kv(path) -> dict:
    reader = gguf.GGUFReader(path)
    big = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.scores")
    return {name: field.contents() for name, field in reader.fields.items() if name not in big}


def _reference_without(folder, tmp_path, change) -> object:
    """transformers' model from the same weights with config.json changed by ``change``."""
    src = tmp_path / "changed"
    shutil.copytree(folder / "model", src)
    config = json.loads((src / "config.json").read_text())
    change(config.get("text_config") or config)
    (src / "config.json").write_text(json.dumps(config))
    return reload_float32(src)


@pytest.mark.parametrize("built", [SMOLLM3], indirect=True, ids=["smollm3"])
def test_smollm3_nope_layers_are_the_ones_llama_cpp_skips(built, tmp_path):
    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())
    n_layers = config["num_hidden_layers"]
    assert config["no_rope_layers"][:n_layers] == llama_cpp_rope_layers(n_layers) == [1, 1, 1, 0, 1, 1, 1, 0]
    got = llama_cpp_logits(_f32_gguf(folder), ids)
    exact = compare(references["f32"], got)
    # transformers with rope on every layer: what a GGUF whose NoPE layers were lost would compute
    all_rope = compare(hf_logits(_reference_without(folder, tmp_path, lambda c: c.update(
        no_rope_layers=[1] * n_layers)), ids), got)
    print(f"smollm3: with NoPE max|Δ|={exact[0]:.2e}; rope on every layer instead: max|Δ|={all_rope[0]:.2e} "
          f"top1={all_rope[1]:.0%}")
    assert exact[0] <= F32_LIMIT and exact[1] == 1.0
    assert all_rope[0] > 10 * F32_LIMIT  # the F32 logits test would fail by far


@pytest.mark.parametrize("built", [MINISTRAL3], indirect=True, ids=["ministral3"])
def test_ministral3_yarn_and_query_temperature_are_carried(built, tmp_path):
    case, folder, ids, references = built
    path = _f32_gguf(folder)
    kv = _kv(path)
    assert kv["general.architecture"] == "mistral3"
    assert kv["mistral3.rope.scaling.type"] == "yarn" and kv["mistral3.rope.scaling.factor"] == 16.0
    assert kv["mistral3.rope.scaling.original_context_length"] == 16 < len(ids)
    assert kv["mistral3.rope.scaling.yarn_log_multiplier"] == 1.0
    assert kv["mistral3.attention.temperature_scale"] == pytest.approx(0.1)
    got = llama_cpp_logits(path, ids)
    exact = compare(references["f32"], got)
    no_temperature = compare(hf_logits(_reference_without(folder, tmp_path / "t", lambda c: c["rope_parameters"].update(
        llama_4_scaling_beta=0.0)), ids), got)
    print(f"ministral3: max|Δ|={exact[0]:.2e}; without the query temperature: {no_temperature[0]:.2e}")
    assert exact[0] <= F32_LIMIT and exact[1] == 1.0
    assert no_temperature[0] > 10 * F32_LIMIT


@pytest.mark.parametrize("built", [MINISTRAL3_MM], indirect=True, ids=["ministral3-multimodal"])
def test_ministral3_multimodal_converts_the_text_model_and_says_what_it_left_out(built):
    case, folder, ids, references = built
    result = convert(folder / "model", folder / "text.gguf", outtype="f32", force=True)
    assert result.gguf_architecture == "mistral3"
    assert set(result.dropped) == {"vision tower", "multimodal projector"}
    kv = _kv(folder / "text.gguf")
    assert sorted(kv["edgepack.source.dropped"]) == ["multimodal projector", "vision tower"]
    names = [t.name for t in gguf.GGUFReader(folder / "text.gguf").tensors]
    assert "output.weight" not in names  # the 3B ties its embeddings


@pytest.mark.parametrize("built", [PHI4_MINI], indirect=True, ids=["phi4-mini"])
def test_phi4_mini_partial_rotary_tied_embeddings_and_o200k(built):
    case, folder, ids, references = built
    path = _f32_gguf(folder)
    kv = _kv(path)
    assert kv["phi3.rope.dimension_count"] == 96  # 0.75 of 128
    assert kv["tokenizer.ggml.pre"] == "granite-embed-multi-97m"  # derived from the o200k regex
    reader = gguf.GGUFReader(path)
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" not in names  # tied
    assert names["rope_factors_long.weight"].shape.tolist() == [48]
