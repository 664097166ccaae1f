"""Every architecture family converts to a GGUF that llama.cpp runs like transformers runs the original.

Per family (tests/support/family_cases.py: real configs shrunk, real or family-style tokenizers): F32 max|Δlogit|
≤ 1e-4 with 100% top-1 agreement (≤ 2e-3 for the GELU families, whose llama.cpp kernel rounds the activation
through an FP16 table by design), F16 ≤ 5e-3, and llama.cpp's token ids equal Hugging Face tokenizers' ids on
every multilingual conformance text. Unsupported settings are clear errors, never a silently wrong model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import cli
from edgepack.convert import convert
from tests.support.family_cases import CASES, SLIDING_WINDOW, case_config, conformance_texts, hf_encoder
from tests.support.tinymodels import compare, llama_cpp_logits, real_config, shrink

# max|Δlogit| against transformers computing as llama.cpp does by design (see ``built`` in conftest.py).
TOLERANCE = {"f32": 1e-4, "f16": 5e-3}
# GELU families: the FP16 table's steps land differently when inputs differ in their last float32 bits (the
# issue's "≤ 2e-3 where llama.cpp's kernels differ by design"; measured 1.2e-5 to 6.8e-4). F16 as every family.
GELU_TOLERANCE = {"f32": 2e-3, "f16": 5e-3}
# Against transformers as trained: F32 exact but for the GELU table; F16 also carries the rounding of the weights
# and activations to half precision (≈1e-3 of the logits' scale, ~5-10 here).
PLAIN_TOLERANCE = {"f32": 1e-2, "f16": 3e-2}


def _check_logits(built, outtype: str) -> None:
    case, folder, ids, references = built
    path = folder / f"{outtype}.gguf"
    result = convert(folder / "model", path, outtype=outtype)
    assert result.architecture == json.loads((folder / "model/config.json").read_text())["architectures"][0]
    got = llama_cpp_logits(path, ids)
    max_abs, top1 = compare(references[outtype], got)
    plain_abs, plain_top1 = compare(references["plain"], got)
    print(f"{case.name}: {outtype.upper()} max|Δ|={max_abs:.2e} top1={top1:.0%}; against plain transformers "
          f"max|Δ|={plain_abs:.2e} top1={plain_top1:.0%} ({len(ids)} tokens)")
    assert top1 >= case.tolerance.get(f"top1_{outtype}", 1.0)
    if outtype == "f32":
        assert plain_top1 >= case.tolerance.get("plain_top1_f32", 1.0)
    assert max_abs <= case.tolerance.get(outtype, (GELU_TOLERANCE if case.gelu_table else TOLERANCE)[outtype])
    assert plain_abs <= case.tolerance.get(f"plain_{outtype}", PLAIN_TOLERANCE[outtype])


def test_f32_logits_match_transformers(built):
    _check_logits(built, "f32")


def test_f16_logits_match_transformers(built):
    _check_logits(built, "f16")


def _sibling_checkpoint(folder, name: str):
    """folder/name holding the built model's config and tokenizer files, for a checkpoint written another way."""
    out = folder / name
    out.mkdir(exist_ok=True)
    for f in (folder / "model").iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    return out


def _assert_same_tensors(a_path, b_path) -> None:
    a, b = gguf.GGUFReader(a_path), gguf.GGUFReader(b_path)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        assert np.array_equal(x.data, y.data), x.name


GPT2_CASE = next(c for c in CASES if c.name == "gpt2")


@pytest.mark.slow
@pytest.mark.parametrize("built", [GPT2_CASE], indirect=True, ids=["gpt2"])
def test_gpt2_checkpoint_saved_without_the_transformer_prefix(built):
    """openai-community/gpt2 was saved from GPT2Model: tensor names without "transformer.", the causal-mask
    buffers, and no lm_head. Such a checkpoint converts to the same tensors and the same logits."""
    from safetensors.numpy import load_file, save_file

    case, folder, ids, references = built
    bare = _sibling_checkpoint(folder, "bare")
    tensors = load_file(folder / "model" / "model.safetensors")
    renamed = {n.removeprefix("transformer."): t for n, t in tensors.items() if n != "lm_head.weight"}
    assert "wte.weight" in renamed and not any(n.startswith("transformer.") for n in renamed)
    n_pos = renamed["wpe.weight"].shape[0]
    renamed["h.0.attn.bias"] = np.tril(np.ones((n_pos, n_pos), dtype=np.float32))[None, None]  # the mask buffer
    save_file(renamed, bare / "model.safetensors")
    convert(folder / "model", folder / "prefixed.gguf", outtype="f32")
    convert(bare, folder / "bare.gguf", outtype="f32")
    _assert_same_tensors(folder / "prefixed.gguf", folder / "bare.gguf")
    max_abs, top1 = compare(references["f32"], llama_cpp_logits(folder / "bare.gguf", ids))
    assert top1 == 1.0 and max_abs <= (GELU_TOLERANCE if case.gelu_table else TOLERANCE)["f32"]


MOE_CASE = next(c for c in CASES if c.name == "qwen3-moe-30b-a3b")


def _fuse_experts(tensors: dict, n_layers: int, n_expert: int, order) -> dict:
    """transformers 5's in-memory expert layout: experts.gate_up_proj (E, 2F, H) with each expert's gate rows
    before its up rows, experts.down_proj (E, H, F); experts taken in ``order``."""
    out = {n: t for n, t in tensors.items() if ".mlp.experts." not in n}
    for i in range(n_layers):
        p = f"model.layers.{i}.mlp.experts"
        out[f"{p}.gate_up_proj"] = np.stack([np.concatenate([tensors[f"{p}.{e}.gate_proj.weight"],
                                                             tensors[f"{p}.{e}.up_proj.weight"]]) for e in order])
        out[f"{p}.down_proj"] = np.stack([tensors[f"{p}.{e}.down_proj.weight"] for e in order])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("built", [MOE_CASE], indirect=True, ids=["qwen3-moe"])
def test_moe_experts_stack_in_order_from_either_layout(built):
    """Per-expert and pre-fused checkpoints give the same GGUF, whose expert e is HF's expert e; the logits
    comparison catches a broken expert order (experts permuted against the router: far off)."""
    from safetensors.numpy import load_file, save_file

    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())
    n_layers, n_expert = config["num_hidden_layers"], config["num_local_experts"]
    tensors = load_file(folder / "model" / "model.safetensors")
    results = {}
    for label, order in (("fused", range(n_expert)), ("permuted", [1, 0] + list(range(2, n_expert)))):
        src = _sibling_checkpoint(folder, label)
        save_file(_fuse_experts(tensors, n_layers, n_expert, order), src / "model.safetensors")
        convert(src, folder / f"{label}.gguf", outtype="f32")
        results[label] = compare(references["f32"], llama_cpp_logits(folder / f"{label}.gguf", ids))
    convert(folder / "model", folder / "per-expert.gguf", outtype="f32")
    _assert_same_tensors(folder / "per-expert.gguf", folder / "fused.gguf")
    stacked = {t.name: t.data for t in gguf.GGUFReader(folder / "per-expert.gguf").tensors}
    for e in range(n_expert):
        for gguf_part, hf_part in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            assert np.array_equal(stacked[f"blk.1.ffn_{gguf_part}_exps.weight"][e],
                                  tensors[f"model.layers.1.mlp.experts.{e}.{hf_part}.weight"])
    print(f"qwen3-moe: fused layout max|Δ|={results['fused'][0]:.2e}; experts 0/1 swapped: "
          f"max|Δ|={results['permuted'][0]:.2e} top1={results['permuted'][1]:.0%}")
    max_abs, top1 = results["fused"]
    assert top1 == 1.0 and max_abs <= TOLERANCE["f32"]
    assert results["permuted"][0] > 1e-2, results["permuted"]


def _arch_kv(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.")}


def test_sliding_windows_are_shorter_than_the_test_sequence(built):
    """A window the test sequence never reaches would prove nothing about sliding-window attention."""
    case, folder, ids = built[:3]
    saved = json.loads((folder / "model/config.json").read_text())
    config = saved.get("text_config") or saved
    if case.name.startswith(("gemma2", "gemma3")):
        assert config["sliding_window"] == SLIDING_WINDOW < len(ids)
        if not (folder / "f32.gguf").exists():
            convert(folder / "model", folder / "f32.gguf", outtype="f32")
        kv = _arch_kv(folder / "f32.gguf")
        arch = kv["general.architecture"]
        assert kv[f"{arch}.attention.sliding_window"] == SLIDING_WINDOW
        pattern = kv[f"{arch}.attention.sliding_window_pattern"]
        assert pattern == [t == "sliding_attention" for t in config["layer_types"]]
        assert any(pattern) and not all(pattern)  # local and global layers both exercised


def _vocab_folder(tokenizer: str, tokenizer_folders, tmp_path):
    """The tokenizer's files with the config.json of the first case that uses it."""
    case = next(c for c in CASES if c.tokenizer == tokenizer)
    folder = tmp_path / "vocab"
    folder.mkdir()
    tok = tokenizer_folders(tokenizer)
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "config.json").write_text(json.dumps(case_config(case, tok)))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", sorted({c.tokenizer for c in CASES}))
def test_token_ids_match_hf_tokenizers(tokenizer, tokenizer_folders, tmp_path):
    import llama_cpp

    folder = _vocab_folder(tokenizer, tokenizer_folders, tmp_path)
    convert(folder, tmp_path / "vocab.gguf", vocab_only=True)
    llm = llama_cpp.Llama(str(tmp_path / "vocab.gguf"), vocab_only=True, verbose=False)
    truth = hf_encoder(folder)
    texts = conformance_texts()
    mismatched = [t for t in texts if llm.tokenize(t.encode(), add_bos=False, special=False) != truth(t)]
    print(f"{tokenizer}: {len(texts) - len(mismatched)}/{len(texts)} texts with identical ids")
    assert not mismatched, f"first mismatch: {mismatched[0]!r}"


def _moe_peak_rss_growth(folder, tok, n_expert: int) -> int:
    """Peak RSS growth (bytes) of converting a 1-layer Qwen3-MoE with ``n_expert`` experts of 512 x 512, in a fresh
    process whose libraries are loaded before measuring."""
    from tests.support.tinymodels import write_safetensors

    from edgepack.convert.families.qwen3moe import QWEN3MOE
    from edgepack.convert.spec import HFConfig

    config = dict(shrink(real_config("qwen3_moe_30b_a3b"), hidden=512, layers=1, vocab_size=1536),
                  num_experts=n_expert, moe_intermediate_size=512)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    hf = HFConfig(config)
    shapes = {}
    for name, e in QWEN3MOE.tensors(hf).items():
        if e.forms:  # the experts, one tensor each as save_pretrained writes them
            shapes.update({p.name: p.source_shape for p in e.forms[0]})
        elif not e.optional:
            shapes[name] = e.shape
    rng = np.random.default_rng(0)
    write_safetensors(folder / "model.safetensors",
                      {n: ("F32", rng.standard_normal(s, dtype=np.float32) * 0.02) for n, s in shapes.items()})
    script = ("import json, sys; from edgepack.convert import convert, floats; floats._ggml_cpu()\n"
              "kb = lambda key: int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1])\n"
              "convert(sys.argv[1], sys.argv[2] + '.vocab', vocab_only=True)\n"
              "before = kb('VmRSS'); convert(sys.argv[1], sys.argv[2], outtype='f16')\n"
              "print(json.dumps({'growth_bytes': (kb('VmHWM') - before) * 1024}))")
    out = subprocess.run([sys.executable, "-c", script, str(folder), str(folder / "moe.gguf")], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_bytes"]


@pytest.mark.slow
def test_stacked_experts_are_streamed_not_held(tmp_path, tokenizer_folders):
    """Peak RSS does not grow with the number of experts: they are read and written one at a time, never gathered
    into the stacked tensor first (which would add 48 MB of source floats per tensor from 16 to 64 experts)."""
    tok = tokenizer_folders("qwen2-trained")
    small, large = (_moe_peak_rss_growth(tmp_path / f"e{n}", tok, n) for n in (16, 64))
    stack_growth = (64 - 16) * 512 * 512 * 4
    print(f"peak RSS growth: 16 experts {small / 2**20:.1f} MB, 64 experts {large / 2**20:.1f} MB "
          f"(stacked tensors {stack_growth / 2**20:.0f} MB larger)")
    assert large - small < stack_growth / 6


QWEN35_CASE = next(c for c in CASES if c.name == "qwen3.5-0.8b")


def _chunked_logits(path, ids: list[int], chunk: int) -> np.ndarray:
    """llama.cpp's logits with the prompt fed ``chunk`` tokens at a time: each chunk starts from the convolution
    and delta-rule state the previous one left (F32 caches)."""
    from edgepack.evaluate import open_llama

    with open_llama(path, n_ctx=64, logits_all=True, n_threads=2, n_batch=chunk, n_ubatch=chunk, type_k=0,
                    type_v=0) as llm:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _convert_with(monkeypatch, hf_class: str, src, out, **changes) -> None:
    """Convert with the family spec altered (a deliberately broken converter, to show the tests catch it)."""
    import dataclasses

    from edgepack.convert import spec as spec_module

    broken = dataclasses.replace(spec_module.spec_for(hf_class), **changes)
    with monkeypatch.context() as m:
        m.setitem(spec_module._REGISTRY, hf_class, broken)
        convert(src, out, outtype="f32")


@pytest.mark.slow
@pytest.mark.parametrize("built", [QWEN35_CASE], indirect=True, ids=["qwen3.5"])
def test_qwen35_state_and_value_heads(built, monkeypatch):
    """The linear-attention state carries across llama.cpp's batches (the prompt fed 5 tokens at a time gives the
    same logits), and the converter's layout work is what makes the logits match: value heads left in HF's
    grouped order, or the convolution taps reversed, are far off."""
    from edgepack.convert.families import qwen35

    case, folder, ids, references = built
    path = folder / "state.gguf"
    convert(folder / "model", path, outtype="f32")
    chunked = compare(references["f32"], _chunked_logits(path, ids, 5))
    assert chunked[1] == 1.0 and chunked[0] <= TOLERANCE["f32"], chunked

    hf_class = "Qwen3_5ForCausalLM"
    with monkeypatch.context() as m:  # value heads left in HF's grouped order
        m.setattr(qwen35, "tile_value_heads", lambda x, config, head_size, axis=0: x)
        convert(folder / "model", folder / "grouped.gguf", outtype="f32")
    reversed_taps = dict(qwen35.TRANSFORMS)
    reversed_taps[r"linear_attn\.(in_proj_qkv|conv1d)\.weight$"] = lambda w, c: (
        qwen35._qkv_rows(w, c)[..., ::-1].copy() if w.ndim == 3 else qwen35._qkv_rows(w, c))
    _convert_with(monkeypatch, hf_class, folder / "model", folder / "taps.gguf", transforms=reversed_taps)
    broken = {name: compare(references["f32"], llama_cpp_logits(folder / f"{name}.gguf", ids))
              for name in ("grouped", "taps")}
    print(f"qwen3.5: fed 5 tokens at a time max|Δ|={chunked[0]:.2e}; value heads grouped max|Δ|="
          f"{broken['grouped'][0]:.2e}; conv taps reversed max|Δ|={broken['taps'][0]:.2e}")
    assert all(max_abs > 1e-2 for max_abs, _ in broken.values()), broken


@pytest.mark.slow
@pytest.mark.parametrize("built", [QWEN35_CASE], indirect=True, ids=["qwen3.5"])
def test_qwen35_hub_layout_with_mtp_and_vision_converts_the_same(built):
    """Hub checkpoints are Qwen3_5ForConditionalGeneration with the text model under model.language_model., a
    vision tower under model.visual. and the MTP block under mtp. (transformers 5 saves no MTP block): the same
    GGUF comes out, and the result names what was left out."""
    from safetensors.numpy import load_file, save_file

    case, folder, ids, _ = built
    hub = _sibling_checkpoint(folder, "hub")
    text = json.loads((folder / "model/config.json").read_text())
    (hub / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3_5ForConditionalGeneration"], "model_type": "qwen3_5",
        "tie_word_embeddings": text["tie_word_embeddings"], "text_config": dict(text, model_type="qwen3_5_text")}))
    tensors = {("model.language_model." + n.removeprefix("model.")) if n.startswith("model.") else n: t
               for n, t in load_file(folder / "model" / "model.safetensors").items()}
    hidden = text["hidden_size"]
    rng = np.random.default_rng(0)
    extra = {"model.visual.blocks.0.attn.qkv.weight": (96, 32), "model.visual.merger.linear_fc2.weight": (hidden, 64),
             "mtp.fc.weight": (hidden, 2 * hidden), "mtp.norm.weight": (hidden,),
             "mtp.pre_fc_norm_embedding.weight": (hidden,), "mtp.pre_fc_norm_hidden.weight": (hidden,),
             "mtp.layers.0.self_attn.q_proj.weight": (hidden, hidden), "mtp.layers.0.mlp.up_proj.weight": (64, hidden)}
    tensors.update({n: rng.standard_normal(s).astype(np.float32) for n, s in extra.items()})
    save_file(tensors, hub / "model.safetensors")
    result = convert(hub, folder / "hub.gguf", outtype="f32")
    assert result.dropped == {"MTP block (multi-token prediction)": 6, "vision tower": 2}
    convert(folder / "model", folder / "text.gguf", outtype="f32")
    _assert_same_tensors(folder / "text.gguf", folder / "hub.gguf")
    runner = CliRunner().invoke(cli, ["convert", str(hub), "-o", str(folder / "cli.gguf"), "--outtype", "f32"])
    assert runner.exit_code == 0 and "MTP block" in runner.output, runner.output


@pytest.mark.slow
def test_qwen35_pre_tokenizer_is_detected_and_matters(tokenizer_folders, tmp_path):
    """Qwen3.5's split keeps combining marks inside words: detected as llama.cpp's qwen35, and on Devanagari and
    Thai Qwen2's split (qwen2) would give other ids."""
    import llama_cpp

    folder = _vocab_folder("qwen35-trained", tokenizer_folders, tmp_path)
    truth = hf_encoder(folder)
    texts = [t for t in conformance_texts() if any(unicodedata.category(c).startswith("M") for c in t)]
    mismatched = {}
    for pre in (None, "qwen2"):
        out = tmp_path / f"{pre}.gguf"
        convert(folder, out, vocab_only=True, pre_tokenizer=pre)
        if pre is None:
            assert gguf.GGUFReader(out).fields["tokenizer.ggml.pre"].contents() == "qwen35"
        llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
        mismatched[pre] = sum(llm.tokenize(t.encode(), add_bos=False, special=False) != truth(t) for t in texts)
        llm.close()
    assert mismatched[None] == 0 and mismatched["qwen2"] > 0, mismatched
