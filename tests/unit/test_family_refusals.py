"""Settings a family's converter cannot reproduce in llama.cpp are refused: one line with a hint, nothing written
(convert reads config.json alone, so no weights, torch or llama.cpp are needed); the registry names every family.
The conversions that succeed are proved in tests/fidelity (test_families*.py, test_gemma.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgepack.cli import cli
from edgepack.convert import convert, supported_architectures
from edgepack.errors import UnsupportedArchitecture
from tests.support.family_cases import _merged
from tests.support.gemma_configs import GEMMA3_4B_IT
from tests.support.tinymodels import real_config, shrink


# --- dense, MoE and Qwen3.5 families (from test_families.py) ---------------------------------------------------

def _config_only(tmp_path, config: dict):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


UNSUPPORTED = [
    ("qwen2_0_5b", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope scaling type 'dynamic'"),
    ("qwen2_0_5b", {"use_sliding_window": True}, "use_sliding_window"),
    ("qwen2_0_5b", {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                                     "beta_fast": 16}}, "beta_fast=16"),
    ("qwen3_0.6b", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                                     "truncate": False}}, "truncate=false"),
    ("phi-3_5", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
    ("qwen3_moe_30b_a3b", {"norm_topk_prob": False}, "norm_topk_prob=false"),
    ("qwen3_moe_30b_a3b", {"mlp_only_layers": [0]}, "dense layers"),
    ("gemma2_2b", {}, "query_pre_attn_scalar 256"),  # shrunk head_dim 64 with the 2B's scalar 256
    ("gemma2_2b", {"query_pre_attn_scalar": 64, "final_logit_softcapping": None}, "final_logit_softcapping"),
    ("gemma3_1b_it", {"query_pre_attn_scalar": 64, "rope_scaling": {"rope_type": "yarn", "factor": 8.0}},
     "rope scaling type 'yarn'"),
    ("gemma_2b", {"hidden_act": "relu"}, "activation 'relu'"),
    ("stablelm-2-zephyr-1_6b", {"qk_layernorm": True}, "qk_layernorm"),
    ("gpt2", {"activation_function": "relu"}, "activation_function 'relu'"),
]


@pytest.mark.parametrize("config_name,overrides,message", UNSUPPORTED, ids=[m for _, _, m in UNSUPPORTED])
def test_unsupported_setting_is_a_clear_error(tmp_path, config_name, overrides, message):
    config = dict(shrink(real_config(config_name)), **overrides)
    folder = _config_only(tmp_path, config)
    with pytest.raises(UnsupportedArchitecture) as info:
        convert(folder, tmp_path / "out.gguf")
    assert message in str(info.value)
    assert info.value.hint
    assert not (tmp_path / "out.gguf").exists()


def test_cli_refuses_unsupported_rope_scaling(tmp_path):
    config = dict(shrink(real_config("qwen3_0.6b")), rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    folder = _config_only(tmp_path, config)
    result = subprocess.run([sys.executable, "-m", "edgepack", "convert", str(folder), "-o", str(tmp_path / "o.gguf")],
                            capture_output=True, text=True)
    assert result.returncode == 4  # UnsupportedArchitecture
    assert "rope scaling type 'dynamic'" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_list_architectures_names_every_family():
    result = CliRunner().invoke(cli, ["convert", "--list-architectures"])
    assert result.exit_code == 0
    expected = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                "Qwen3MoeForCausalLM": "qwen3moe", "Qwen3_5ForCausalLM": "qwen35",
                "Qwen3_5ForConditionalGeneration": "qwen35", "Qwen3_5MoeForCausalLM": "qwen35moe",
                "Qwen3_5MoeForConditionalGeneration": "qwen35moe", "Qwen3VLForConditionalGeneration": "qwen3vl", "GemmaForCausalLM": "gemma",
                "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3", "Phi3ForCausalLM": "phi3",
                "StableLmForCausalLM": "stablelm", "GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama",
                "Lfm2ForCausalLM": "lfm2", "Lfm2MoeForCausalLM": "lfm2moe", "Olmo2ForCausalLM": "olmo2",
                "GraniteForCausalLM": "granite", "GraniteMoeHybridForCausalLM": "granitehybrid",
                "GraniteMoeForCausalLM": "granitemoe", "GraniteMoeSharedForCausalLM": "granitemoe"}
    for hf_class, arch in expected.items():
        assert supported_architectures()[hf_class] == arch
        assert hf_class in result.output and arch in result.output


def test_a_family_is_one_module_and_no_core_edit():
    """Every family registers from its own module in convert/families; the core imports none of them."""
    from pathlib import Path

    import edgepack.convert.families as families

    core_sources = "".join(p.read_text() for p in Path(families.__file__).parents[1].glob("*.py"))
    modules = {p.stem for p in Path(families.__file__).parent.glob("*.py")} - {"__init__"}
    assert {"qwen2", "qwen3", "gemma", "phi3", "stablelm", "gpt2", "llama"} <= modules
    for module in modules:
        assert f"families.{module}" not in core_sources and f"families import {module}" not in core_sources


QWEN35_UNSUPPORTED = [
    ({"layer_types": ["linear_attention"] * 23 + ["sliding_attention"]}, "layer_types 'sliding_attention'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                          "mrope_section": [11, 11, 10]}}, "rope scaling type 'yarn'"),
    ({"linear_value_head_dim": 64}, "linear_key_head_dim 128 != linear_value_head_dim 64"),
    ({"mlp_only_layers": [0]}, "mlp_only_layers"),
]


@pytest.mark.parametrize("overrides,message", QWEN35_UNSUPPORTED, ids=[m for _, m in QWEN35_UNSUPPORTED])
def test_qwen35_unsupported_setting_is_a_clear_error(tmp_path, overrides, message):
    from tests.support.family_cases import text_model

    folder = _config_only(tmp_path, dict(text_model("qwen3_5_0.8b", "Qwen3_5ForCausalLM"), **overrides))
    with pytest.raises(UnsupportedArchitecture) as info:
        convert(folder, tmp_path / "out.gguf")
    assert message in str(info.value) and info.value.hint
    assert not (tmp_path / "out.gguf").exists()


# --- hybrid families: LFM2, OLMo2, Granite (from test_families_hybrid.py) -----------------------------------

HYBRID_UNSUPPORTED = [
    ("lfm2_1.2b", {"full_attn_idxs": None, "layer_types": ["conv", "sliding_attention"]}, "layer type 'sliding_attention'"),
    ("lfm2_1.2b", {"conv_bias": True}, "conv_bias"),
    ("lfm2_1.2b", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
    ("lfm2_8b_a1b", {"layer_types": ["conv", "mamba"]}, "layer type 'mamba'"),
    ("lfm2_8b_a1b", {"layer_types": ["conv", "conv"], "routed_scaling_factor": 2.5}, "routed_scaling_factor 2.5"),
    ("lfm2_8b_a1b", {"layer_types": ["conv", "conv"], "norm_topk_prob": False}, "norm_topk_prob"),
    ("olmo2_7b", {"attention_bias": True}, "attention_bias"),
    ("olmo2_7b", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope scaling type 'dynamic'"),
    ("granite_3.3_2b", {"mlp_bias": True}, "attention_bias/mlp_bias"),
    ("granite_3.3_2b", {"logits_scaling": 0}, "logits_scaling 0"),
    ("granite_4.0_h_tiny", {"layer_types": ["mamba", "mamba2"]}, "layer type 'mamba2'"),
    ("granite_4.0_h_tiny", {"layer_types": ["attention", "attention"]},
     "experts, no Mamba layers and position_embedding_type 'nope'"),
    ("granite_4.0_h_tiny", {"layer_types": ["mamba", "attention"], "mamba_n_heads": 8, "mamba_expand": 4},
     "mamba_expand 4"),
    ("granite_4.0_h_tiny", {"layer_types": ["mamba", "attention"], "mamba_n_heads": 8, "mamba_conv_bias": False},
     "mamba_conv_bias False"),
    ("granite_4.0_h_tiny", {"layer_types": ["mamba", "attention"], "mamba_n_heads": 8,
                            "time_step_limit": [0.001, 0.1]}, "time_step_limit"),
]


@pytest.mark.parametrize("config_name,overrides,message", HYBRID_UNSUPPORTED, ids=[m for _, _, m in HYBRID_UNSUPPORTED])
def test_unsupported_setting_is_refused_and_nothing_written(tmp_path, config_name, overrides, message):
    config = shrink(real_config(config_name), **overrides)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture) as info:
        convert(folder, tmp_path / "out.gguf")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert info.value.hint
    assert list(tmp_path.iterdir()) == [folder]


# --- SmolLM3, Ministral 3, Phi-4 (from test_families_smollm3_ministral_phi4.py) --------------------------------

@pytest.mark.parametrize("no_rope", [
    {"no_rope_layers": [1, 1, 0, 1, 1, 1, 0, 1]},      # NoPE on other layers than every 4th
    {"no_rope_layers": [1] * 8},                        # no NoPE at all
    {"no_rope_layers": None, "no_rope_layer_interval": 3},  # transformers would build every 3rd
    {"no_rope_layers": [1, 1, 1, 0]},                    # fewer flags than layers
], ids=["other-layers", "none", "interval-3", "short-list"])
def test_smollm3_nope_pattern_llama_cpp_does_not_apply_is_refused(tmp_path, no_rope):
    config = dict(shrink(real_config("smollm3_3b"), layers=8), **no_rope)
    config = {k: v for k, v in config.items() if v is not None}
    (tmp_path / "model").mkdir()
    (tmp_path / "model/config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture) as info:
        convert(tmp_path / "model", tmp_path / "out.gguf")
    assert "NoPE" in str(info.value) and "every 4th layer" in info.value.hint
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize("config_name,overrides,message", [
    ("ministral3_8b", {"sliding_window": 4096}, "sliding_window"),
    ("ministral3_8b", {"rope_parameters": {"rope_type": "yarn", "factor": 16.0, "beta_fast": 16.0,
                                           "original_max_position_embeddings": 16384}}, "beta_fast=16"),
    ("ministral3_8b", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                           "llama_4_scaling_beta": 0.1}}, "llama_4_scaling_beta"),
    ("smollm3_3b", {"use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window"),
], ids=["ministral3-sliding", "ministral3-beta", "ministral3-temperature-without-yarn", "smollm3-sliding"])
def test_unsupported_settings_are_refused(tmp_path, config_name, overrides, message):
    config = dict(shrink(real_config(config_name)), **overrides)
    (tmp_path / "model").mkdir()
    (tmp_path / "model/config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture) as info:
        convert(tmp_path / "model", tmp_path / "out.gguf")
    assert message in str(info.value) and info.value.hint
    assert not (tmp_path / "out.gguf").exists()


def test_new_families_are_listed():
    archs = supported_architectures()
    assert archs["SmolLM3ForCausalLM"] == "smollm3"
    assert archs["Ministral3ForCausalLM"] == archs["Mistral3ForConditionalGeneration"] == "mistral3"
    assert archs["Phi3ForCausalLM"] == "phi3"


# --- Gemma 3 multimodal, Gemma 4, Gemma 3n (from test_gemma.py) -----------------------------------------------

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


GEMMA4_REFUSALS = [
    ({"enable_moe_block": True}, "enable_moe_block but no num_experts"),
    ({"hidden_activation": "gelu"}, "activation 'gelu'"),
    ({"use_bidirectional_attention": "all"}, "use_bidirectional_attention 'all'"),
    # 35 layers, 19 shared: layer 15 (local) would be read by the shared global layers
    ({"num_kv_shared_layers": 19}, "shared full_attention layers would read layer 15"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e6},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, "rope type 'yarn'"),
]


@pytest.mark.parametrize("text,message", GEMMA4_REFUSALS, ids=[m for _, m in GEMMA4_REFUSALS])
def test_gemma4_refusals(tmp_path, text, message):
    from edgepack.errors import UnsupportedArchitecture
    from tests.support.gemma_configs import GEMMA4_E2B_IT

    (tmp_path / "config.json").write_text(json.dumps(_merged(GEMMA4_E2B_IT, {"text_config": text})))
    with pytest.raises(UnsupportedArchitecture) as info:
        convert(tmp_path, tmp_path / "out.gguf")
    assert message in str(info.value) and info.value.hint
    assert not (tmp_path / "out.gguf").exists()


GEMMA3N_REFUSALS = [
    ({"laurel_rank": 32}, "laurel_rank 32"),
    ({"hidden_size_per_layer_input": 128}, "hidden_size_per_layer_input 128"),
    ({"altup_num_inputs": 2}, "altup_num_inputs 2"),
    ({"num_kv_shared_layers": 12}, "12 KV-shared layers of 30"),
    ({"activation_sparsity_pattern": [0.9] * 10 + [0.0] * 20}, "activation_sparsity_pattern"),
    ({"final_logit_softcapping": 50.0}, "final_logit_softcapping 50.0"),
    ({"intermediate_size": [8192] * 15 + [4096] * 15}, "per-layer intermediate sizes"),
]


@pytest.mark.parametrize("overrides,message", GEMMA3N_REFUSALS, ids=[m for _, m in GEMMA3N_REFUSALS])
def test_gemma3n_geometry_llama_cpp_hard_codes_is_checked(tmp_path, overrides, message):
    from edgepack.errors import UnsupportedArchitecture
    from tests.support.gemma_configs import GEMMA3N_E2B_TEXT

    (tmp_path / "config.json").write_text(json.dumps(dict(GEMMA3N_E2B_TEXT, **overrides)))
    with pytest.raises(UnsupportedArchitecture) as info:
        convert(tmp_path, tmp_path / "out.gguf")
    assert message in str(info.value) and info.value.hint
    assert not (tmp_path / "out.gguf").exists()
