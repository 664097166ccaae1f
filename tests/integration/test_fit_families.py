"""`edgepack fit --config` sizes every family convert supports, from the family's own ArchSpec.

For every registered Hugging Face class (and VARIANT_CASES): a tiny checkpoint of its real config structure (the
family's test case in tests/support/family_cases.py, else a real config from tests/fixtures/configs, shrunk) is
written with random weights, converted and quantized to Q4_K_M by llama.cpp. ``describe_config`` on the config alone
must predict every tensor's type and size exactly, and the memory model must agree with the buffers llama.cpp
reports when it loads the file (weights, KV cache, recurrent state, compute; within 10%).
"""

from __future__ import annotations

import json
import shutil

import pytest

from edgepack.convert import convert, supported_architectures
from edgepack.convert.spec import family_of
from edgepack.errors import UnsupportedArchitecture
from edgepack.fit import (compute_buffer_bytes, describe_config, describe_gguf, kv_cache_bytes,
                          recurrent_state_bytes)
from edgepack.quantize import quantize
from tests.support.family_cases import CASES, case_config
from tests.support.tinymodels import CONFIGS, TOKENIZERS, llama_cpp_buffers, real_config, shrink, synthetic_checkpoint

TOKENIZER = TOKENIZERS / "tinyllama-chat-resaved-Dheena731"  # any real vocabulary (32000 tokens) will do
N_CTX, N_BATCH = 1024, 256
LOG_STEP = 0.01 * 2**20  # llama.cpp logs buffer sizes in MiB with two decimals


# Test cases sized on their own beside their class's first case: a structure the class holds only sometimes.
VARIANT_CASES = ("gemma4-26b-a4b",)  # Gemma4ForCausalLM with the MoE block (experts beside the dense MLP)


def tiny_config(hf_class: str) -> dict:
    """The family's test case config (or the case of that name), or a real config of that class shrunk (vocabulary
    32000)."""
    for case in CASES:
        if case.name == hf_class:
            return case_config(case, TOKENIZER)
    for case in CASES:
        real = real_config(case.config) if isinstance(case.config, str) else case.config
        if case.overrides.get("architectures", real["architectures"])[0] == hf_class:  # a case may change the class
            return case_config(case, TOKENIZER)
    for path in sorted(CONFIGS.glob("*.config.json")):
        real = json.loads(path.read_text())
        if (real.get("architectures") or [""])[0] == hf_class:
            return shrink(real, vocab_size=32000)
    if hf_class.endswith("ForConditionalGeneration"):  # a multimodal class: its text class's case as text_config
        arch = supported_architectures()[hf_class]
        for case in CASES:
            real = real_config(case.config) if isinstance(case.config, str) else case.config
            if "text_config" not in real and supported_architectures().get(real["architectures"][0]) == arch:
                return {"architectures": [hf_class], "text_config": case_config(case, TOKENIZER)}
    raise AssertionError(f"no test config for {hf_class}: add a FamilyCase (tests/support/family_cases.py)")


@pytest.fixture(scope="module", params=sorted(supported_architectures()) + list(VARIANT_CASES))
def quantized(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    config = tiny_config(request.param)
    text = config.get("text_config") or config
    text["vocab_size"] = max(int(text.get("vocab_size", 0)), 32000)
    folder = synthetic_checkpoint(root / "hf", config)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    if family_of(config)[0].tokenizer_model == "gemma4":  # Gemma 4's tokenizer.json has no dummy-prefix step
        tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        steps = tokenizer["normalizer"]["normalizers"]
        tokenizer["normalizer"]["normalizers"] = [step for step in steps if step["type"] != "Prepend"]
        (folder / "tokenizer.model").unlink()
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    convert(folder, root / "f16.gguf", outtype="f16")
    [result] = quantize(root / "f16.gguf", ["Q4_K_M"], root / "q", threads=2)
    return config, result.output


@pytest.mark.slow
def test_config_sizes_every_family_as_llama_cpp_quantizes_it(quantized):
    config, path = quantized
    planned, real = describe_config(config, "Q4_K_M"), describe_gguf(path)
    assert planned.architecture == real.architecture
    assert {t.name: (t.shape, t.type, t.size_bytes) for t in planned.tensors} == {
        t.name: (t.shape, t.type, t.size_bytes) for t in real.tensors}
    # the same per-layer description whether fit reads the config or the GGUF (which carries its config)
    assert planned.layer_sizes() == real.layer_sizes()


@pytest.mark.slow
def test_memory_of_every_family_matches_what_llama_cpp_allocates(quantized):
    config, path = quantized
    got = llama_cpp_buffers(path, N_CTX, N_BATCH)
    model = describe_config(config, "Q4_K_M")
    ours = {"model": model.weight_bytes, "kv": kv_cache_bytes(model, N_CTX, N_BATCH),
            "rs": recurrent_state_bytes(model), "compute": compute_buffer_bytes(model, N_CTX, N_BATCH)}
    for part, size in ours.items():
        # 10%, or the log's own rounding (it prints MiB with two decimals) for a tiny buffer
        assert abs(size - got.get(part, 0.0)) <= max(0.10 * got.get(part, 0.0), LOG_STEP / 2), (part, ours, got)


@pytest.mark.slow
def test_fit_cli_sizes_every_family_from_config_json(quantized, tmp_path):
    from click.testing import CliRunner

    from edgepack.cli import cli

    config, _ = quantized
    (tmp_path / "config.json").write_text(json.dumps(config))
    res = CliRunner().invoke(cli, ["fit", "--config", str(tmp_path / "config.json"), "--quant", "Q4_K_M",
                                   "-p", "pixel-8", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)["rows"][0]
    assert row["fits"] and row["memory"]["weights_mb"] > 0


def test_architectures_convert_cannot_handle_are_refused_as_convert_refuses_them():
    olmo = real_config("internlm2")
    with pytest.raises(UnsupportedArchitecture, match="InternLM2ForCausalLM is not supported"):
        describe_config(olmo, "Q4_K_M")
    gemma2 = dict(real_config("gemma2_2b"), attn_logit_softcapping=None)  # a setting the family refuses
    with pytest.raises(UnsupportedArchitecture, match="attn_logit_softcapping"):
        describe_config(gemma2, "Q4_K_M")
