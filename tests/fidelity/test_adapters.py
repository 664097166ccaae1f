"""PEFT LoRA adapters, converted to GGUF adapters or merged, agree with transformers' PEFT model in llama.cpp.

Tiny seeded bases (real configs shrunk, Llama-2 SentencePiece vocab) and random seeded PEFT adapters of rank 8
and 16 over different target sets and alphas (rsLoRA and rank/alpha patterns included):
* base GGUF (F32) + adapter GGUF through llama-cpp-python's ``lora_path`` at scale 1.0 and 0.5 vs the PEFT
  model with its scaling multiplied by the same factor: max|Δlogit| ≤ 1e-4 (Gemma-2: see GELU_TABLE_FAMILIES);
* the merged folder converted to F32 GGUF vs the PEFT model: ≤ 1e-4;
* in GGUF space, base + (alpha/r)·lora_b·lora_a equals the merged-then-converted weights to 1e-6;
* the same adapter on a Q8_0 base: within Q8_RATIO x the Q8_0 base's own gap, and clearly applied;
* pairs that do not fit are refused with one line before anything is written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.adapters import check_compatibility, convert_adapter, merge_adapter
from edgepack.cli import cli, main
from edgepack.convert import convert
from edgepack.errors import AdapterError
from edgepack.fileio import sha256_file
from edgepack.ggufheader import read_header
from tests.support.tinymodels import (TOKENIZERS, build_model, compare, hf_logits, llama_cpp_logits, real_config,
                                      shrink, synthetic_llama, tiny_llama_config)

F32_TOLERANCE = 1e-4
# ggml's CPU GELU (tanh form, Gemma's GeGLU) looks F32 inputs up in an FP16 table (ggml-cpu/vec.h,
# GGML_GELU_FP16), so a Gemma-2 GGUF differs from transformers by ~4e-3 in F32 before any adapter is involved.
# For those bases the logits bound is 2x the base's own measured gap (measured 2026-11: gap 9.2e-4, with
# adapters 9.1e-4..1.2e-3); the tensor-level test below is exact for every family.
GELU_TABLE_FAMILIES = {"gemma2"}
# Q8_0 base + F32 adapter vs the F32 PEFT model: bounded by Q8_RATIO x what Q8_0 costs the base alone (Q8_0
# base vs HF base, measured in the same run). Measured 2026-11: ratios 0.83-1.25 (max|Δ| 0.023-0.097, the
# larger for Gemma-2, whose Q8_0 base alone is 0.077 off).
Q8_RATIO = 2.0
N_TOKENS = 40
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraCase:
    name: str
    base: str
    r: int
    alpha: float
    targets: tuple[str, ...]
    extra: dict = field(default_factory=dict)  # more LoraConfig arguments


# family -> (real config, shrink overrides). Gemma-2's query_pre_attn_scalar follows the shrunk head_dim (as in
# the real 2B/9B models, where it equals head_dim): llama.cpp scales queries by 1/sqrt(head_dim).
BASES = {"llama": ("llama2_7b", {}), "qwen2": ("qwen2_0_5b", {}), "qwen3": ("qwen3_0.6b", {}),
         "gemma2": ("gemma2_2b", {"query_pre_attn_scalar": 64})}
CASES = [
    LoraCase("llama-attn-r8", "llama", 8, 16, ATTN),
    LoraCase("llama-all-lmhead-rslora-r16", "llama", 16, 4, ATTN + MLP + ("lm_head",), {"use_rslora": True}),
    LoraCase("llama-patterns-r8", "llama", 8, 16, ("q_proj", "v_proj", "down_proj"),
             {"rank_pattern": {"down_proj": 4}, "alpha_pattern": {"q_proj": 32}}),
    LoraCase("qwen2-all-r8", "qwen2", 8, 16, ATTN + MLP),
    LoraCase("qwen3-all-r16", "qwen3", 16, 24, ATTN + MLP),
    LoraCase("gemma2-all-r8", "gemma2", 8, 16, ATTN + MLP),
    LoraCase("gemma2-qv-r16", "gemma2", 16, 32, ("q_proj", "v_proj")),
]


def _spm_tokenizer(folder: Path) -> None:
    shutil.copy(TOKENIZERS / "llama2-sentencepiece-llama2c" / "tokenizer.model", folder / "tokenizer.model")


@pytest.fixture(scope="module")
def token_ids() -> list[int]:
    rng = np.random.default_rng(7)
    return [1] + rng.integers(3, 32000, N_TOKENS - 1).tolist()


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Built lazily, once per family: (folder, torch model, F32 GGUF, Q8_0 GGUF)."""
    built = {}

    def get(family: str):
        if family not in built:
            root = tmp_path_factory.mktemp(family)
            folder = root / f"tiny-{family}"
            name, overrides = BASES[family]
            model = build_model(shrink(real_config(name), vocab_size=32000, **overrides), folder)
            _spm_tokenizer(folder)
            convert(folder, root / "base-F32.gguf", outtype="f32")
            convert(folder, root / "base-Q8_0.gguf", outtype="q8_0")
            built[family] = (folder, model, root / "base-F32.gguf", root / "base-Q8_0.gguf")
        return built[family]

    return get


@pytest.fixture(scope="module")
def tolerance(bases, token_ids):
    """family -> F32 logits bound: 1e-4, or 2x the base's own gap for GELU-table families (measured here)."""
    bounds = {}

    def get(family: str) -> float:
        if family not in bounds:
            bounds[family] = F32_TOLERANCE
            if family in GELU_TABLE_FAMILIES:
                folder, model, f32, _ = bases(family)
                gap, _ = compare(hf_logits(model, token_ids), llama_cpp_logits(f32, token_ids))
                print(f"{family}: base alone, F32 GGUF vs transformers max|Δ|={gap:.2e}")
                bounds[family] = max(F32_TOLERANCE, 2 * gap)
        return bounds[family]

    return get


def make_adapter(model, out: Path, case: LoraCase, seed: int = 0):
    """A seeded PEFT LoRA adapter whose A and B are both random (so it is never a no-op); returns the PEFT model."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=case.r, lora_alpha=case.alpha, target_modules=list(case.targets), lora_dropout=0.0,
                        init_lora_weights=False, **case.extra)
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.05 * torch.randn_like(param))
    peft_model.eval()
    peft_model.save_pretrained(out)
    return peft_model


def peft_logits(peft_model, ids: list[int], scale: float = 1.0) -> np.ndarray:
    """The PEFT model's logits with every LoRA layer's scaling multiplied by ``scale`` (llama.cpp's lora_scale)."""
    import torch

    layers = [m for m in peft_model.modules() if isinstance(getattr(m, "scaling", None), dict) and m.scaling]
    saved = [dict(m.scaling) for m in layers]
    try:
        for m in layers:
            for k in m.scaling:
                m.scaling[k] *= scale
        with torch.no_grad():
            return peft_model(input_ids=torch.tensor([ids])).logits[0].float().numpy()
    finally:
        for m, s in zip(layers, saved):
            m.scaling.clear()
            m.scaling.update(s)


def base_logits(peft_model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad(), peft_model.disable_adapter():
        return peft_model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


_CACHE: dict = {}


def _cached(key, compute):
    if key not in _CACHE:
        _CACHE[key] = compute()
    return _CACHE[key]


def _merged_gguf(case: LoraCase, folder: Path, root: Path) -> Path:
    """The adapter merged into the base folder and converted to F32 GGUF (once per case)."""
    def build():
        result = merge_adapter(root / "lora", folder, root / "merged")
        assert result.n_merged == _n_pairs(case) and "edgepack-merge.json" in result.files
        convert(root / "merged", root / "merged-F32.gguf", outtype="f32")
        return root / "merged-F32.gguf"
    return _cached(("merged", case.name), build)


def _f32_tensors(path: Path):
    """name -> F32 tensor (numpy order) of a model GGUF, read on demand (GGUFReader parses the whole vocab)."""
    header = read_header(path)
    infos = {t.name: t for t in header.tensors}

    def get(name: str) -> np.ndarray:
        t = infos[name]
        assert t.type == gguf.GGMLQuantizationType.F32
        return np.fromfile(path, np.float32, t.n_elements, offset=header.data_offset + t.offset).reshape(t.shape[::-1])
    return get


def _n_pairs(case: LoraCase) -> int:
    """LoRA pairs in the tiny 2-layer models: one per target per layer, one for lm_head."""
    return sum(1 if t == "lm_head" else 2 for t in case.targets)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def adapted(request, bases, tmp_path_factory, token_ids):
    case: LoraCase = request.param
    folder, model, f32, q8 = bases(case.base)
    root = tmp_path_factory.mktemp(case.name)
    peft_model = make_adapter(model, root / "lora", case)
    refs = {s: peft_logits(peft_model, token_ids, s) for s in (1.0, 0.5)}
    refs["base"] = base_logits(peft_model, token_ids)
    peft_model.unload()  # give the shared base model back its plain Linear layers
    yield case, folder, root, f32, q8, refs


@pytest.mark.slow
def test_adapter_gguf_matches_peft(adapted, token_ids, tolerance):
    case, folder, root, f32, _, refs = adapted
    bound = tolerance(case.base)
    result = convert_adapter(root / "lora", folder, root / "lora.gguf")
    assert result.n_pairs == _n_pairs(case)
    effect = float(np.max(np.abs(refs[1.0] - refs["base"])))
    assert effect > 0.05, f"the adapter barely changes the model ({effect:.2e}): the test could not fail"
    for scale in (1.0, 0.5):
        max_abs, top1 = compare(refs[scale], llama_cpp_logits(f32, token_ids, root / "lora.gguf", scale))
        print(f"{case.name} scale {scale}: F32 max|Δ|={max_abs:.2e} top1={top1:.0%} (adapter effect {effect:.2f}, "
              f"bound {bound:.0e})")
        assert max_abs <= bound
        assert top1 == 1.0


@pytest.mark.slow
def test_adapter_from_gguf_base_is_identical(adapted):
    """BASE given as the converted GGUF yields the same adapter tensors as BASE given as the HF folder."""
    case, folder, root, f32, q8, _ = adapted
    from_hf = root / "lora-hf.gguf"
    convert_adapter(root / "lora", folder, from_hf)
    for base in (f32, q8):
        from_gguf = root / f"lora-{base.stem}.gguf"
        result = convert_adapter(root / "lora", base, from_gguf)
        assert result.base_sha256 == {"model.safetensors": sha256_file(folder / "model.safetensors")}
        a, b = gguf.GGUFReader(from_hf), gguf.GGUFReader(from_gguf)
        assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
        for ta, tb in zip(a.tensors, b.tensors):
            assert np.array_equal(ta.data, tb.data), ta.name


@pytest.mark.slow
def test_merged_then_converted_matches_peft(adapted, token_ids, tolerance):
    case, folder, root, _, _, refs = adapted
    _merged_gguf(case, folder, root)
    written = json.loads((root / "merged" / "edgepack-merge.json").read_text())
    assert len(written["merged_tensors"]) == _n_pairs(case)
    assert {"config.json", "tokenizer.model", "model.safetensors"} <= {p.name for p in (root / "merged").iterdir()}
    max_abs, top1 = compare(refs[1.0], llama_cpp_logits(root / "merged-F32.gguf", token_ids))
    print(f"{case.name} merged: F32 max|Δ|={max_abs:.2e} top1={top1:.0%}")
    assert max_abs <= tolerance(case.base)
    assert top1 == 1.0


@pytest.mark.slow
def test_adapter_tensors_reproduce_merged_gguf(adapted):
    """In GGUF space, base + (alpha/r)·lora_b·lora_a equals the merged-then-converted weight: names, layout and
    per-family transforms (e.g. Llama's Q/K row order) are exact, independent of llama.cpp's arithmetic."""
    case, folder, root, f32, _, _ = adapted
    merged_gguf = _merged_gguf(case, folder, root)
    adapter = gguf.GGUFReader(convert_adapter(root / "lora", folder, root / "lora-tensors.gguf").output)
    alpha = adapter.get_field("adapter.lora.alpha").contents()
    lora = {t.name: np.array(t.data) for t in adapter.tensors}
    base, merged = _f32_tensors(f32), _f32_tensors(merged_gguf)
    targets = sorted(n.removesuffix(".lora_a") for n in lora if n.endswith(".lora_a"))
    assert len(targets) == _n_pairs(case)
    worst = 0.0
    for name in targets:
        a, b = lora[name + ".lora_a"], lora[name + ".lora_b"]  # numpy order: (r, in), (out, r)
        w, w_merged = base(name), merged(name)
        rebuilt = w + (alpha / a.shape[0]) * (b @ a)
        worst = max(worst, float(np.max(np.abs(rebuilt - w_merged))))
        assert not np.allclose(w, w_merged, atol=1e-4)  # the delta is there
    print(f"{case.name}: max|base + s·B·A - merged| over {len(targets)} tensors = {worst:.1e}")
    assert worst <= 1e-6


@pytest.mark.slow
def test_adapter_on_q8_0_base_stays_close(adapted, token_ids):
    case, folder, root, _, q8, refs = adapted
    if not (root / "lora.gguf").exists():
        convert_adapter(root / "lora", folder, root / "lora.gguf")
    with_lora, _ = compare(refs[1.0], llama_cpp_logits(q8, token_ids, root / "lora.gguf"))
    base_only = _cached(("q8-base", case.base), lambda: llama_cpp_logits(q8, token_ids))
    quant_noise, _ = compare(refs["base"], base_only)  # what Q8_0 costs the base model alone
    without, _ = compare(refs[1.0], base_only)
    print(f"{case.name} Q8_0 base + adapter vs PEFT: max|Δ|={with_lora:.2e} (Q8_0 base vs HF base: "
          f"{quant_noise:.2e}; Q8_0 base without the adapter vs PEFT: {without:.2e})")
    assert with_lora <= Q8_RATIO * quant_noise
    assert with_lora < without / 3  # the adapter really is applied on the quantized base


# -- metadata, one-step CLI ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_lora(bases, tmp_path_factory):
    """A Llama base and an adapter that names that base folder as its base_model_name_or_path."""
    folder, model, f32, q8 = bases("llama")
    root = tmp_path_factory.mktemp("llama-lora")
    case = LoraCase("llama-meta", "llama", 8, 16, ("q_proj", "k_proj", "v_proj", "up_proj"))
    peft_model = make_adapter(model, root / "lora", case, seed=3)
    ref = peft_logits(peft_model, list(range(1, 30)))
    root.joinpath("ref-0.5.npy").write_bytes(peft_logits(peft_model, list(range(1, 30)), 0.5).tobytes())
    peft_model.unload()
    _edit_config(root / "lora", base_model_name_or_path=str(folder))
    return folder, f32, q8, root, ref


def _edit_config(lora: Path, **changes) -> None:
    path = lora / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_adapter_gguf_metadata_and_provenance(llama_lora, tmp_path):
    folder, f32, _, root, _ = llama_lora
    out = tmp_path / "a.gguf"
    result = convert_adapter(root / "lora", f32, out, strict=True)
    assert result.warnings == []
    reader = gguf.GGUFReader(out)

    def value(key):
        return reader.get_field(key).contents()

    assert value("general.type") == "adapter"
    assert value("adapter.type") == "lora"
    assert value("adapter.lora.alpha") == 16.0
    assert value("general.architecture") == "llama"
    assert value("general.base_model.0.name") == value("edgepack.base.name") == read_header(f32).get("general.name")
    assert value("edgepack.base.files") == ["model.safetensors"]
    assert value("edgepack.base.sha256") == [sha256_file(folder / "model.safetensors")]
    assert value("edgepack.base.gguf_sha256") == sha256_file(f32)
    assert value("edgepack.adapter.files") == ["adapter_config.json", "adapter_model.safetensors"]
    assert value("edgepack.adapter.sha256") == [sha256_file(root / "lora" / n) for n in value("edgepack.adapter.files")]
    names = [t.name for t in reader.tensors]
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_up.weight.lora_b" in names
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # GGUF order: (ne0, ne1)
    assert shapes["blk.0.attn_q.weight.lora_a"] == (256, 8) and shapes["blk.0.attn_q.weight.lora_b"] == (8, 256)
    report = check_compatibility(root / "lora", f32, strict=True)
    assert report.ok and report.base_identity == "verified"  # the named folder's weights hash to the GGUF's source


def test_cli_convert_and_one_step_merge(llama_lora, tmp_path):
    folder, f32, _, root, ref = llama_lora
    runner = CliRunner()
    out = tmp_path / "a.gguf"
    result = runner.invoke(cli, ["adapter", "convert", str(root / "lora"), "--base", str(folder), "-o", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_pairs"] == 8
    max_abs, _ = compare(ref, llama_cpp_logits(f32, list(range(1, 30)), out))
    assert max_abs <= F32_TOLERANCE

    merged = tmp_path / "merged-F32.gguf"
    result = runner.invoke(cli, ["convert", str(folder), "--merge-lora", str(root / "lora"), "-o", str(merged),
                                 "--outtype", "f32", "--json"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the temp merge is gone
    max_abs, top1 = compare(ref, llama_cpp_logits(merged, list(range(1, 30))))
    print(f"one-step convert --merge-lora: F32 max|Δ|={max_abs:.2e}")
    assert max_abs <= F32_TOLERANCE and top1 == 1.0

    result = runner.invoke(cli, ["adapter", "merge", str(root / "lora"), "--base", str(folder), "-o",
                                 str(tmp_path / "half"), "--scale", "0.5", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_merged"] == 8
    convert(tmp_path / "half", tmp_path / "half.gguf", outtype="f32")
    ref_half = np.frombuffer((root / "ref-0.5.npy").read_bytes(), dtype=np.float32).reshape(ref.shape)
    max_abs, _ = compare(ref_half, llama_cpp_logits(tmp_path / "half.gguf", list(range(1, 30))))
    print(f"adapter merge --scale 0.5: F32 max|Δ|={max_abs:.2e}")
    assert max_abs <= F32_TOLERANCE


# -- refusals --------------------------------------------------------------------------------------------------

def _run(args: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()  # drop what building the models printed
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


def test_mismatched_hidden_size_refused_before_writing(llama_lora, tmp_path, capsys):
    _, _, _, root, _ = llama_lora
    other = synthetic_llama(tmp_path / "wide", tiny_llama_config(hidden_size=384, num_attention_heads=6,
                                                                 num_key_value_heads=6))
    _spm_tokenizer(other)
    out = tmp_path / "a.gguf"
    with pytest.raises(AdapterError, match=r"size mismatch on model\.layers\.0\.(self_attn|mlp)\."):
        convert_adapter(root / "lora", other, out)
    assert not out.exists()
    code, err = _run(["adapter", "convert", str(root / "lora"), "--base", str(other), "-o", str(out)], capsys)
    assert code == AdapterError.exit_code
    assert err.count("\n") == 1 and err.startswith("error: size mismatch")
    assert not out.exists() and list(tmp_path.glob(".a.gguf*")) == []
    with pytest.raises(AdapterError, match="size mismatch"):
        merge_adapter(root / "lora", other, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_layer_count_and_architecture_mismatch_refused(llama_lora, bases, tmp_path, capsys):
    _, _, _, root, _ = llama_lora
    one_layer = synthetic_llama(tmp_path / "one", tiny_llama_config(num_hidden_layers=1, num_key_value_heads=4))
    report = check_compatibility(root / "lora", one_layer)
    assert not report.ok and report.errors[0].startswith("layer count mismatch: the adapter targets layer 1")
    qwen_folder, _, qwen_f32, _ = bases("qwen2")
    for base in (qwen_folder, qwen_f32):
        out = tmp_path / "q.gguf"
        code, err = _run(["adapter", "convert", str(root / "lora"), "--base", str(base), "-o", str(out)], capsys)
        assert code == AdapterError.exit_code
        assert err.startswith("error: architecture mismatch: the adapter was trained on LlamaForCausalLM, the base "
                              "is Qwen2ForCausalLM") and err.count("\n") == 1
        assert not out.exists()


def test_base_identity_warns_or_refuses_with_strict(llama_lora, tmp_path, capsys):
    folder, f32, _, root, _ = llama_lora
    lora = tmp_path / "lora"
    shutil.copytree(root / "lora", lora)
    _edit_config(lora, base_model_name_or_path="meta-llama/Llama-2-7b-hf", revision="01c7f73d")
    report = check_compatibility(lora, f32)
    assert report.ok and report.base_identity == "mismatch"
    assert any("trained on 'meta-llama/Llama-2-7b-hf'" in w for w in report.warnings)
    out = tmp_path / "a.gguf"
    assert convert_adapter(lora, folder, out).warnings  # written, with the warning
    out.unlink()
    code, err = _run(["adapter", "convert", str(lora), "--base", str(f32), "-o", str(out), "--strict"], capsys)
    assert code == AdapterError.exit_code and "base mismatch" in err and err.count("\n") == 1
    assert not out.exists()
    # A folder holding other weights, named as the base: the hashes decide.
    impostor = synthetic_llama(tmp_path / "impostor", tiny_llama_config())
    _edit_config(lora, base_model_name_or_path=str(impostor), revision=None)
    report = check_compatibility(lora, f32, strict=True)
    assert not report.ok and "weights' sha256 differ" in report.errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["modules_to_save", "dora", "embedding", "bias"])
def test_adapters_edgepack_cannot_carry_are_refused(what, bases, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    folder, model, f32, _ = bases("llama")
    options = {"modules_to_save": dict(target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"]),
               "dora": dict(target_modules=["q_proj", "v_proj"], use_dora=True),
               "embedding": dict(target_modules=["q_proj", "embed_tokens"]),
               "bias": dict(target_modules=["q_proj"], bias="all")}[what]
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, **options))
    peft_model.save_pretrained(tmp_path / "lora")
    peft_model.unload()
    expected = {"modules_to_save": "trains full embed_tokens/lm_head", "dora": "DoRA", "embedding": "embedding",
                "bias": "trains biases"}[what]
    out = tmp_path / "a.gguf"
    code, err = _run(["adapter", "convert", str(tmp_path / "lora"), "--base", str(f32), "-o", str(out)], capsys)
    assert code == AdapterError.exit_code and expected in err and err.count("\n") == 1, err
    assert not out.exists()
    with pytest.raises(AdapterError, match=expected):
        merge_adapter(tmp_path / "lora", folder, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_lm_head_on_tied_base_is_refused(bases, tmp_path):
    folder, model, f32, _ = bases("gemma2")  # Gemma-2 ties lm_head to the embeddings
    peft_model = make_adapter(model, tmp_path / "lora", LoraCase("x", "gemma2", 8, 8, ("q_proj", "lm_head")))
    peft_model.unload()
    report = check_compatibility(tmp_path / "lora", f32)
    assert not report.ok and any("no separate lm_head" in e for e in report.errors), report.errors


def test_not_an_adapter_folder(tmp_path, capsys):
    code, err = _run(["adapter", "convert", str(tmp_path), "--base", str(tmp_path), "-o", str(tmp_path / "x.gguf")],
                     capsys)
    assert code == AdapterError.exit_code and "no adapter_config.json" in err
