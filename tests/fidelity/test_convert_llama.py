"""Llama-family checkpoints (real configs, shrunk; real tokenizers) converted and run in llama.cpp agree with
transformers: F32 max|Δlogit| ≤ 1e-4 with 100% top-1 agreement, F16 ≤ 5e-3."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import gguf
import numpy as np
import pytest

from edgepack.convert import convert
from edgepack.ggufheader import read_header
from tests.support.tinymodels import (TEXTS, build_model, compare, hf_logits, llama_cpp_logits, real_config,
                                      reload_float32, shrink)
from tests.support.tokenizer_cases import CASES

F32_TOLERANCE, F16_TOLERANCE = 1e-4, 5e-3


@dataclass(frozen=True)
class ModelCase:
    name: str
    config: str
    tokenizer: str
    shrink_args: tuple = ()
    dtype: str = "float32"
    shard: bool = False


MODEL_CASES = [
    ModelCase("llama2-mha-spm", "llama2_7b", "llama2-spm", shard=True),
    ModelCase("tinyllama-gqa-spm", "tinyllama_1b_chat_v1.0", "tinyllama-spm", (("heads", 8),)),
    ModelCase("mistral-v01-spm", "mistral_7b", "mistral-v1-spm"),
    ModelCase("mistral-v03-spm", "mistral_7b_v03", "mistral-v3-spm"),
    ModelCase("llama31-rope-scaling-bpe", "llama3_1_8b", "llama3-json"),
    ModelCase("smollm2-tied-phi3-tokenizer", "smollm2_135m", "phi3-json", (("hidden", 384), ("heads", 6))),
    ModelCase("tinyllama-bf16-source", "tinyllama_1b_chat_v1.0", "tinyllama-json", (("heads", 8),), "bfloat16"),
]

PROMPT = (TEXTS / "war-and-peace.txt").read_text(encoding="utf-8")[5000:5400]


def _token_ids(case: ModelCase, folder) -> list[int]:
    tok_case = next(c for c in CASES if c.name == case.tokenizer)
    ids = tok_case.truth_encoder(folder)(PROMPT)[:48]
    return [1 if tok_case.vocab_size < 100000 else 128000] + ids


# One case stays in the fast tier (pytest -m "not slow"); every case runs in the full one.
FAST_CASES = {"llama2-mha-spm"}


@pytest.fixture(scope="module", ids=lambda c: c.name,
                params=[c if c.name in FAST_CASES else pytest.param(c, marks=pytest.mark.slow) for c in MODEL_CASES])
def built(request, tmp_path_factory):
    case: ModelCase = request.param
    folder = tmp_path_factory.mktemp(case.name)
    tok_case = next(c for c in CASES if c.name == case.tokenizer)
    config = shrink(real_config(case.config), vocab_size=tok_case.vocab_size, **dict(case.shrink_args))
    model = build_model(config, folder / "model", dtype=case.dtype)
    if case.shard:
        shutil.rmtree(folder / "model")
        model.save_pretrained(folder / "model", safe_serialization=True, max_shard_size="20MB")
        assert (folder / "model" / "model.safetensors.index.json").is_file()
    tok_case.build(folder / "model")
    ids = _token_ids(case, folder / "model")
    reference = hf_logits(reload_float32(folder / "model"), ids)
    return case, folder, ids, reference


def test_f32_logits_match_transformers(built):
    case, folder, ids, reference = built
    result = convert(folder / "model", folder / "f32.gguf", outtype="f32")
    assert result.outtype == "f32"
    max_abs, top1 = compare(reference, llama_cpp_logits(folder / "f32.gguf", ids))
    print(f"{case.name}: F32 max|Δ|={max_abs:.2e} top1={top1:.0%}")
    assert max_abs <= F32_TOLERANCE
    assert top1 == 1.0


def test_f16_logits_match_transformers(built):
    case, folder, ids, reference = built
    convert(folder / "model", folder / "f16.gguf", outtype="f16")
    max_abs, top1 = compare(reference, llama_cpp_logits(folder / "f16.gguf", ids))
    print(f"{case.name}: F16 max|Δ|={max_abs:.2e} top1={top1:.0%}")
    assert max_abs <= F16_TOLERANCE


def test_auto_outtype_keeps_the_source_16_bit_type(built):
    case, folder, ids, reference = built
    result = convert(folder / "model", folder / "auto.gguf")
    types = {t.type for t in read_header(folder / "auto.gguf").tensors if len(t.shape) > 1}
    if case.dtype == "bfloat16":
        assert result.outtype == "bf16" and types == {gguf.GGMLQuantizationType.BF16}
        # BF16 matmuls round activations to BF16 in ggml; the argmax must still agree nearly everywhere.
        _, top1 = compare(reference, llama_cpp_logits(folder / "auto.gguf", ids))
        assert top1 >= 0.9
    else:
        assert result.outtype == "f16" and types == {gguf.GGMLQuantizationType.F16}


def test_metadata_and_tensors(built):
    case, folder, ids, _ = built
    out = folder / "meta.gguf"
    # Q8_0 (gguf-py's numpy quantizer) on the small vocabularies; the 128k-vocabulary case checks F16 metadata.
    big_vocab = next(c for c in CASES if c.name == case.tokenizer).vocab_size > 100000
    result = convert(folder / "model", out, outtype="f16" if big_vocab else "q8_0")
    header = read_header(out)
    fields = header.kv
    config = json.loads((folder / "model" / "config.json").read_text())
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == (gguf.LlamaFileType.MOSTLY_F16 if big_vocab
                                           else gguf.LlamaFileType.MOSTLY_Q8_0)
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert fields["llama.attention.head_count_kv"] == config["num_key_value_heads"]
    assert fields["general.size_label"]
    assert fields["edgepack.version"]
    hashes = dict(zip(fields["edgepack.source.files"], fields["edgepack.source.sha256"]))
    assert set(result.source_sha256) == set(hashes) and "config.json" in hashes
    names = {t.name for t in header.tensors}
    tied = config.get("tie_word_embeddings", False)
    assert ("output.weight" in names) == (not tied)
    scaling = (config.get("rope_parameters") or config.get("rope_scaling") or {}).get("rope_type")
    assert ("rope_freqs.weight" in names) == (scaling == "llama3")
    # the output loads and runs
    assert np.isfinite(llama_cpp_logits(out, ids[:8])).all()
