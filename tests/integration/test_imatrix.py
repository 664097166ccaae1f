"""edgepack imatrix and calibrated quantization, on the trained demo model (examples/demo/model).

- The statistics equal what transformers' float32 forward pass puts into every nn.Linear of the same model on
  the same token chunks (an independent reference: its own code, not llama.cpp's graph).
- The file is llama.cpp's GGUF imatrix (read back with gguf-py), the legacy .dat is read, an imatrix of
  another model is refused in one line.
- Quantizing with it: the IQ types work and generate; the provenance keys llama-quantize writes are there; the
  KL divergence against F16 on held-out text drops for Q2_K and Q3_K_S and does not rise for Q4_K_M.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgepack import imatrix as im
from edgepack.calibration import calibration as load_calibration
from edgepack.calibration import render_chats, text_blocks
from edgepack.errors import ImatrixError, UsageError
from edgepack.cli import main
from edgepack.convert import convert
from edgepack.evaluate import evaluate_many, open_llama
from edgepack.ggufheader import read_header
from edgepack.quantize import quantize
from tests.support.quantmodels import DEMO, corpus, outlier_demo, random_llama
from tests.integration.test_quantize import refused
from tests.support.tinymodels import REPO

HELD_OUT = REPO / "examples" / "demo" / "eval.txt"  # the demo's held-out paragraphs: not in the calibration text
CTX = 64


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imatrix")


@pytest.fixture(scope="module")
def calibration(root) -> Path:
    """~7,000 tokens from the start of War and Peace (the demo's eval text is the book's last 5%)."""
    path = root / "calibration.txt"
    path.write_text(corpus(30_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def f32(root) -> Path:
    return convert(DEMO, root / "demo-F32.gguf", outtype="f32").output


@pytest.fixture(scope="module")
def f16(root) -> Path:
    (root / "src").mkdir()
    return convert(DEMO, root / "src" / "demo-F16.gguf", outtype="f16").output


@pytest.fixture(scope="module")
def demo_imatrix(f32, calibration, root) -> Path:
    out = root / "demo.imatrix.gguf"
    im.compute(f32, calibration, out, ctx=CTX, chunks=3, threads=1)
    return out


# --------------------------------------------------------------------------------------------- the statistics


@pytest.mark.slow
def test_statistics_equal_transformers_linear_inputs(demo_imatrix, f32, calibration):
    """Sum of squared inputs per column of every block weight, vs hooks on transformers' nn.Linear inputs."""
    import torch
    from transformers import AutoModelForCausalLM

    with open_llama(f32, n_ctx=CTX, vocab_only=True) as llm:
        tokens = llm.tokenize(calibration.read_text(encoding="utf-8").encode(), add_bos=True, special=False)
        bos = llm.token_bos()
    chunks = [np.array(tokens[i * CTX:(i + 1) * CTX]) for i in range(3)]
    for c in chunks:
        c[0] = bos

    model = AutoModelForCausalLM.from_pretrained(DEMO, dtype=torch.float32).eval()
    gguf_names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                  "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down"}
    sums: dict[str, np.ndarray] = {}

    def hook(name):
        def record(_module, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1]).numpy()
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
        return record

    for i, layer in enumerate(model.model.layers):
        for hf, short in gguf_names.items():
            layer.get_submodule(hf).register_forward_pre_hook(hook(f"blk.{i}.{short}.weight"))
    with torch.no_grad():
        for c in chunks:
            model(torch.tensor(c[None]))

    got = im.read(demo_imatrix)
    assert sorted(got.entries) == sorted(sums)  # every block weight, nothing else (output.weight is opt-in)
    for name, ref in sums.items():
        e = got.entries[name]
        assert e.counts.tolist() == [3 * CTX], name
        # F16 KV cache in llama.cpp (as llama-imatrix runs): attention outputs differ in the 4th digit.
        np.testing.assert_allclose(e.sums[0], ref, rtol=5e-3, atol=1e-3 * ref.mean(), err_msg=name)


def test_file_is_llama_cpp_gguf_imatrix(demo_imatrix, f32):
    reader = gguf.GGUFReader(demo_imatrix)
    fields = reader.fields
    assert "general.architecture" not in fields
    assert fields["general.type"].contents() == "imatrix"
    assert fields["imatrix.datasets"].contents() == ["calibration.txt"]
    assert fields["imatrix.chunk_count"].contents() == 3 and fields["imatrix.chunk_size"].contents() == CTX
    assert fields["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    tensors = {t.name: t for t in reader.tensors}
    model = {t.name: t for t in read_header(f32).tensors}
    names = sorted(n for n in model if n.startswith("blk.") and len(model[n].shape) == 2)
    assert sorted(tensors) == sorted([f"{n}.in_sum2" for n in names] + [f"{n}.counts" for n in names])
    for n in names:
        sums, counts = tensors[f"{n}.in_sum2"], tensors[f"{n}.counts"]
        assert sums.tensor_type == counts.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(sums.shape) == [model[n].shape[0], 1]  # ggml order: [n_cols, n_mat]
        assert list(counts.shape) == [1, 1] and float(counts.data.reshape(-1)[0]) == 3 * CTX
        assert (sums.data > 0).all()


def test_legacy_dat_is_read(demo_imatrix, tmp_path):
    """The old format stores sum/count * ncall per entry; the importance the quantizer gets is the same."""
    gguf_matrix = im.read(demo_imatrix)
    ncall = 3
    blob = struct.pack("<i", len(gguf_matrix.entries))
    for name, e in gguf_matrix.entries.items():
        values = (e.sums[0] / e.counts[0] * ncall).astype("<f4")
        blob += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, values.size)
        blob += values.tobytes()
    blob += struct.pack("<i", ncall) + struct.pack("<i", 8) + b"wiki.txt"
    dat = tmp_path / "old.dat"
    dat.write_bytes(blob)
    legacy = im.read(dat)
    assert legacy.legacy and legacy.datasets == ["wiki.txt"] and legacy.chunk_count == ncall
    new, old = gguf_matrix.importance(), legacy.importance()
    assert new.keys() == old.keys()
    for name in new:
        np.testing.assert_allclose(old[name], new[name], rtol=1e-6)


def test_memory_stays_bounded_on_long_text():
    """Blocks cut at line ends and chunked as they come: nothing holds the whole token list."""
    text = "".join(f"line {i} of a long calibration text\n" for i in range(20_000))
    blocks = list(text_blocks(text, block_chars=4096))
    assert "".join(blocks) == text and max(map(len, blocks)) < 4096 + 64 and all(b.endswith("\n") for b in blocks)
    chunks = list(im.token_chunks(lambda data, bos, special: list(range(len(data) // 4)),
                                  ((b, False) for b in blocks), 100, bos=7))
    assert all(len(c) == 100 and c[0] == 7 for c in chunks)
    assert len(chunks) == sum(len(b) // 4 for b in blocks) // 100


def test_wrong_model_refused_in_one_line(capsys, demo_imatrix, tmp_path):
    other = convert(random_llama(tmp_path / "other", layers=1), tmp_path / "other-F16.gguf", outtype="f16").output
    refused(capsys, "quantize", str(other), "-t", "Q4_K_M", "--imatrix", str(demo_imatrix), "-o", str(tmp_path),
            code=ImatrixError.exit_code, words="another model")
    assert not list(tmp_path.glob("*Q4_K_M*"))
    refused(capsys, "quantize", str(other), "-t", "Q4_K_M", "--imatrix", str(tmp_path / "nope.gguf"), code=2,
            words="does not exist")
    refused(capsys, "quantize", str(other), "-t", "IQ2_XS", "-o", str(tmp_path), code=9, words="importance matrix")


# ------------------------------------------------------------------------------------------- quantizing with it


@pytest.mark.slow
def test_quantize_with_calibration_loads_and_generates(capsys, f16, calibration, root):
    """The issue's command: computes an imatrix, quantizes IQ3_XXS/Q2_K/Q4_K_M, each output runs."""
    out = root / "cal"
    main(["quantize", str(f16), "-t", "IQ3_XXS", "-t", "Q2_K", "-t", "Q4_K_M", "--calibration", str(calibration),
          "-o", str(out), "--threads", "1", "--json"])
    results = json.loads(capsys.readouterr().out)
    assert [r["type"] for r in results] == ["IQ3_XXS", "Q2_K", "Q4_K_M"]
    imatrix_file = out / "model.imatrix.gguf"
    made = im.read(imatrix_file)
    for r in results:
        header = read_header(r["output"])
        assert header.get("quantize.imatrix.file") == imatrix_file.name == r["imatrix"]
        assert header.get("quantize.imatrix.dataset") == "calibration.txt"
        assert header.get("quantize.imatrix.entries_count") == len(made.entries) == 28
        assert header.get("quantize.imatrix.chunks_count") == made.chunk_count > 0
        assert header.get("edgepack.quantize.imatrix.calibration_sha256") == made.calibration_sha256 \
            == r["calibration_sha256"]
        with open_llama(r["output"], n_ctx=64, n_threads=1, n_threads_batch=1) as llm:
            text = llm("The old prince", max_tokens=8, temperature=0)["choices"][0]["text"]
        assert text.strip(), r["type"]
    assert {"IQ3_XXS", "IQ2_S"} <= {t for t in results[0]["tensor_types"]}  # llama.cpp's IQ3_XXS mix
    # A re-run reuses the imatrix and keeps every output.
    mtime = imatrix_file.stat().st_mtime_ns
    main(["quantize", str(f16), "-t", "IQ3_XXS", "--calibration", str(calibration), "-o", str(out), "--json"])
    assert json.loads(capsys.readouterr().out)[0]["skipped"] and imatrix_file.stat().st_mtime_ns == mtime


def kld_with_and_without(f16: Path, calibration: Path, out: Path, types: list[str]) -> dict[str, tuple]:
    with_im = quantize(f16, types, out / "with", threads=1, calibration=calibration)
    without = quantize(f16, types, out / "without", threads=1)
    measured = evaluate_many([r.output for r in with_im + without], f16, text=HELD_OUT, ctx=256, threads=1)
    n = len(types)
    return {t: (measured[i], measured[n + i]) for i, t in enumerate(types)}


@pytest.mark.slow
def test_imatrix_lowers_kld_on_held_out_text(calibration, root):
    """Mean KLD vs F16 on the demo's held-out text, on the demo with outlier channels: lower with the imatrix
    for Q2_K and Q3_K_S, not higher for Q4_K_M. (On the plain demo, whose activations are nearly even across
    channels, the imatrix changes Q2_K's KLD by less than its noise: benchmarks/RESULTS.md.)"""
    folder = outlier_demo(root / "outliers")
    (root / "outliers-src").mkdir()
    f16 = convert(folder, root / "outliers-src" / "outliers-F16.gguf", outtype="f16").output
    pairs = kld_with_and_without(f16, calibration, root / "kld", ["Q2_K", "Q3_K_S", "Q4_K_M"])
    for t, (w, wo) in pairs.items():
        print(f"{t}: with imatrix {w.mean_kld:.6f} ± {w.mean_kld_err:.6f}, "
              f"without {wo.mean_kld:.6f} ± {wo.mean_kld_err:.6f}")
    kld = {t: (w.mean_kld, wo.mean_kld) for t, (w, wo) in pairs.items()}
    assert kld["Q2_K"][0] < kld["Q2_K"][1] / 2  # measured 0.028 vs 0.067
    assert kld["Q3_K_S"][0] < kld["Q3_K_S"][1]  # 0.0068 vs 0.0076
    assert kld["Q4_K_M"][0] <= kld["Q4_K_M"][1]  # 0.0020 vs 0.0035


def test_tensor_type_overrides(capsys, f16, tmp_path):
    """--tensor-type PATTERN=TYPE as llama-quantize: a regex searched in each name, the first match wins."""
    main(["quantize", str(f16), "-t", "Q4_K_M", "--tensor-type", "attn_v=Q8_0", "--tensor-type",
          r"blk\.0\.ffn_down=Q5_K", "--tensor-type", "ffn_down=Q2_K", "-o", str(tmp_path), "--json"])
    [result] = json.loads(capsys.readouterr().out)
    types = {t.name: t.type.name for t in read_header(result["output"]).tensors}
    assert all(types[f"blk.{i}.attn_v.weight"] == "Q8_0" for i in range(4))
    assert types["blk.0.ffn_down.weight"] == "Q5_K"
    assert all(types[f"blk.{i}.ffn_down.weight"] == "Q2_K" for i in range(1, 4))
    assert types["blk.0.attn_q.weight"] == "Q4_K"  # untouched: the mix's choice
    sidecar = json.loads(Path(result["output"] + ".edgepack.json").read_text())
    assert sidecar["tensor_type_overrides"] == ["attn_v=Q8_0", r"blk\.0\.ffn_down=Q5_K", "ffn_down=Q2_K"]
    refused(capsys, "quantize", str(f16), "-t", "Q4_K_M", "--tensor-type", "attn_vv=Q8_0", "-o", str(tmp_path),
            code=2, words="matches no tensor")
    refused(capsys, "quantize", str(f16), "-t", "Q4_K_M", "--tensor-type", "attn_v", code=2, words="PATTERN=TYPE")
    refused(capsys, "quantize", str(f16), "-t", "Q4_K_M", "--tensor-type", "attn_v=IQ2_XS", code=2,
            words="need an imatrix")


def test_imatrix_command(capsys, f32, calibration, tmp_path):
    out = tmp_path / "x.imatrix.gguf"
    main(["imatrix", str(f32), "--calibration", str(calibration), "-o", str(out), "--ctx", "32", "--chunks", "2",
          "--threads", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["chunks"] == 2 and result["chunk_size"] == 32 and result["entries"] == 28
    made = im.read(out)
    assert made.chunk_count == 2 and made.calibration_sha256 == result["calibration_sha256"]
    assert {e.counts[0] for e in made.entries.values()} == {64}
    refused(capsys, "imatrix", str(f32), "--calibration", str(tmp_path / "none.txt"), code=2, words="does not exist")
    refused(capsys, "imatrix", str(f32), "--calibration", str(calibration), "--ctx", "100000", "-o", str(out),
            code=2, words="training context")
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.")
    refused(capsys, "imatrix", str(f32), "--calibration", str(short), "-o", str(out), code=2,
            words="shorter than one chunk")


def test_builtin_calibration_and_chat_template(f32, tmp_path):
    """The shipped set is readable and mixed; conversations go through the model's own chat template."""
    cal = load_calibration("builtin")
    assert [p.name for p in cal.files] == ["calibration.txt", "calibration-chat.jsonl"]
    text = cal.files[0].read_text(encoding="utf-8")
    for sample in ("CHAPTER I", "def load(path: Path)", "#include <stdio.h>", "Весной", "朝の駅", "السوق"):
        assert sample in text, sample
    template = read_header(f32).get("tokenizer.chat_template")  # the demo's: "{{ role }}: {{ content }}</s>"
    rendered = list(render_chats(cal.files[1], template, bos="<s>", eos="</s>"))
    assert len(rendered) == 12 and rendered[0].startswith("system: You are a helpful assistant.")
    assert "</s>\nuser: How long" in rendered[0]
    plain = list(render_chats(cal.files[1], None))
    assert plain[1].startswith("User: Can you explain what a hash function is")
    # A template that refuses system messages gets them folded into the first user turn.
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
              "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    assert next(render_chats(cal.files[1], strict)).startswith("[user] You are a helpful assistant. Answer briefly.")

    chats = tmp_path / "chats.jsonl"
    chats.write_text(cal.files[1].read_text(encoding="utf-8") * 2, encoding="utf-8")
    made = im.compute(f32, load_calibration(chats), tmp_path / "chat.imatrix.gguf", ctx=64, chunks=2, threads=1)
    assert made.chunks == 2 and im.read(made.output).datasets == ["chats.jsonl"]
    made = im.compute(f32, cal, tmp_path / "builtin.imatrix.gguf", ctx=64, chunks=2, threads=1)
    assert im.read(made.output).datasets == ["edgepack:builtin"] and made.calibration_sha256 == cal.sha256
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(UsageError, match="bad.jsonl:1 is not a conversation"):
        load_calibration(bad)


# ------------------------------------------------------------------------------------------------ target size


@pytest.mark.slow
def test_target_size_mix_fits_and_beats_the_uniform_type(capsys, f16, calibration, root):
    """--target-size set to the size of uniform Q3_K_S (made with the same imatrix): the chosen mix fits it and
    its KLD on held-out text is lower."""
    from edgepack.evaluate import evaluate
    from edgepack.mix import quantize_mix

    out = root / "mix"
    small = root / "mix-calibration.txt"  # ~2,500 tokens: the sensitivity trials read its first 4,000 chars
    small.write_text(calibration.read_text(encoding="utf-8")[:8000], encoding="utf-8")
    [uniform] = quantize(f16, ["Q3_K_S"], out, threads=1, calibration=small)
    uniform_kld = evaluate(uniform.output, f16, text=HELD_OUT, ctx=256, threads=1).mean_kld
    target_mb = uniform.size_bytes / 1e6
    result = quantize_mix(f16, out, target_size_mb=target_mb, calibration=small, eval_text=HELD_OUT,
                          candidates=("Q6_K", "Q4_K", "Q3_K", "Q2_K"), sensitivity_chars=4000, threads=1)
    print(f"uniform Q3_K_S {uniform.size_bytes} B KLD {uniform_kld:.6f}; mix {result.size_bytes} B KLD "
          f"{result.evaluation.mean_kld:.6f} (predicted {result.plan.predicted_kld:.6f}): "
          + ", ".join(f"{g.group}={g.type}" for g in result.plan.groups))
    assert result.fits and result.size_bytes <= uniform.size_bytes == int(target_mb * 1e6)
    assert result.evaluation.mean_kld < uniform_kld
    assert {g.group for g in result.plan.groups} == {"token_embd", "attn_q", "attn_k", "attn_v", "attn_output",
                                                      "ffn_gate", "ffn_up", "ffn_down"}
    types = {t.name: t.type.name for t in read_header(result.quantized.output).tensors}
    for g in result.plan.groups:  # the file holds what the plan chose
        assert types.get(f"blk.0.{g.group}.weight", types.get(f"{g.group}.weight")) == g.type
    refused(capsys, "quantize", str(f16), "--target-size", "0.1", "-o", str(out), code=2, words="no mix fits")
    refused(capsys, "quantize", str(f16), "--target-size", "1", "-t", "Q4_K_M", code=2, words="choose the types")


@pytest.mark.slow
def test_experts_are_collected_per_expert(tokenizer_folders, calibration, tmp_path):
    """MUL_MAT_ID (Qwen3-MoE: 16 experts, 4 per token): each expert's rows count the tokens routed to it, and
    since every expert's gate/up input is the router's input, the sum over experts of in_sum2 equals top-k times
    the router's (ffn_gate_inp) in_sum2 -- two different graph nodes, accumulated by two code paths."""
    from tests.support.family_cases import CASES, case_config
    from tests.support.tinymodels import build_model

    case = next(c for c in CASES if c.name == "qwen3-moe-30b-a3b")
    tok = tokenizer_folders(case.tokenizer)
    config = case_config(case, tok)
    folder = tmp_path / "moe"
    build_model(config, folder)
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    f32 = convert(folder, tmp_path / "moe-F32.gguf", outtype="f32").output
    made = im.read(im.compute(f32, calibration, tmp_path / "moe.imatrix.gguf", ctx=64, chunks=2, threads=1).output)
    n_experts, top_k, tokens = config["num_experts"], config["num_experts_per_tok"], 2 * 64
    for layer in range(config["num_hidden_layers"]):
        router = made.entries[f"blk.{layer}.ffn_gate_inp.weight"]
        assert router.counts.tolist() == [tokens]
        for kind in ("gate", "up", "down"):
            e = made.entries[f"blk.{layer}.ffn_{kind}_exps.weight"]
            assert e.n_mat == n_experts and e.counts.sum() == tokens * top_k
            assert (e.counts > 0).sum() > 1  # the router spreads tokens over several experts
        gate = made.entries[f"blk.{layer}.ffn_gate_exps.weight"]
        np.testing.assert_allclose(gate.sums.sum(0), top_k * router.sums[0], rtol=1e-4)
        np.testing.assert_allclose(made.entries[f"blk.{layer}.ffn_up_exps.weight"].sums, gate.sums, rtol=1e-6)
    im.check_model(made, f32)
    [q] = quantize(f32, ["IQ2_XS"], tmp_path / "q", imatrix=tmp_path / "moe.imatrix.gguf", threads=1)
    assert q.tensor_types.get("IQ2_XS", 0) > 0


def test_partial_imatrix_of_the_same_model_is_accepted_a_mostly_empty_one_refused(demo_imatrix, f32, tmp_path):
    full = im.read(demo_imatrix)
    some = dict(list(full.entries.items())[:20])  # 20 of 28: a few weights without data is not another model
    im.check_model(im.Imatrix(entries=some, datasets=["x"], chunk_count=1, chunk_size=CTX), f32)
    few = dict(list(full.entries.items())[:10])
    with pytest.raises(ImatrixError, match="18 of its weight matrices have no entry"):
        im.check_model(im.Imatrix(entries=few, datasets=["x"], chunk_count=1, chunk_size=CTX), f32)
    resized = {**full.entries, "blk.0.attn_q.weight": im.Entry(np.ones((1, 128)), np.ones(1, np.int64))}
    with pytest.raises(ImatrixError, match="blk.0.attn_q.weight has 128 values, demo-F32.gguf needs 256"):
        im.check_model(im.Imatrix(entries=resized, datasets=["x"], chunk_count=1, chunk_size=CTX), f32)
