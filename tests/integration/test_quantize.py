"""edgepack quantize: llama.cpp's quantizer on tiny checkpoints built here (hidden 256, so k-quants apply).

Every offered type is made in one run and loaded and run by llama-cpp-python; sizes follow the bits; the
type table is checked against llama.cpp itself (enum values, and which types its quantizer refuses without an
importance matrix); fallbacks are compared with the tensor types actually in the file; bad inputs give one line.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import blake3
import gguf
import llama_cpp
import pytest

from edgepack.cli import main
from edgepack.convert import convert
from edgepack.errors import OutputError, QuantizeError, UsageError
from edgepack.evaluate import open_llama
from edgepack.ggufheader import SkippedArray, read_header
from edgepack.progress import QUIET
from edgepack.fileio import stat_fingerprint as source_fingerprint
from edgepack.quantize import SIDECAR_SUFFIX, _quantize_one, _settings, quantize
from edgepack.quants import QUANT_TYPES, QuantType, offered_types, quant_type, resolve_types, type_for_bits
from tests.support.quantmodels import bigram_llama, random_llama

OFFERED = [t.name for t in offered_types()]


@pytest.fixture(scope="module")
def f16(tmp_path_factory) -> Path:
    """The bigram model (hidden 256, 2 layers, Llama-2 vocabulary) as F16 GGUF."""
    root = tmp_path_factory.mktemp("q")
    folder = bigram_llama(root / "tiny")
    (root / "src").mkdir()
    return convert(folder, root / "src" / "tiny-F16.gguf", outtype="f16").output


@pytest.fixture(scope="module")
def all_types(f16, tmp_path_factory) -> dict[str, object]:
    """Every offered type, in one quantize() call (one source check)."""
    out = tmp_path_factory.mktemp("all")
    return {r.type: r for r in quantize(f16, OFFERED, out, threads=2)}


@pytest.fixture(scope="module")
def odd_f16(tmp_path_factory) -> Path:
    """A model whose ffn_down rows (352) are not a multiple of 256: k-quants must fall back there."""
    root = tmp_path_factory.mktemp("odd")
    folder = random_llama(root / "odd", intermediate=352)
    return convert(folder, root / "odd-F16.gguf", outtype="f16").output


def refused(capsys, *argv: str, code: int, words: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == code, err
    assert len(err) == 1 and err[0].startswith("error: ") and "(hint: " in err[0], err
    assert words.lower() in err[0].lower(), err[0]
    return err[0]


def run_ok(capsys, *argv: str) -> str:
    main(list(argv))  # returns normally on success (errors exit non-zero)
    captured = capsys.readouterr()
    assert "error:" not in captured.err, captured.err
    return captured.out


def no_outputs(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith((".gguf", ".tmp", SIDECAR_SUFFIX))]


# ------------------------------------------------------------------------------------------------- the table


def test_table_matches_llama_cpp():
    for t in QUANT_TYPES:
        const = "LLAMA_FTYPE_ALL_F32" if t.name == "F32" else f"LLAMA_FTYPE_MOSTLY_{t.name}"
        assert getattr(llama_cpp, const) == t.ftype, t.name
        assert gguf.GGMLQuantizationType[t.base] in gguf.GGML_QUANT_SIZES
    assert quant_type("q4_k").name == "Q4_K_M" and quant_type(" Q8_0 ").name == "Q8_0"
    assert [type_for_bits(b).name for b in (16, 8, 6, 5, 4, 3, 2)] == ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M",
                                                                      "Q3_K_M", "Q2_K"]
    assert [t.name for t in resolve_types(["Q4_K_M,Q8_0", "q4_k_m"], [8, 6])] == ["Q4_K_M", "Q8_0", "Q6_K"]
    with pytest.raises(UsageError):
        type_for_bits(7)


def test_imatrix_types_are_refused_by_llama_cpp_too(f16, tmp_path):
    """The table's "needs an imatrix" is llama.cpp's own rule: its quantizer fails on each of them."""
    needs = [t for t in QUANT_TYPES if t.needs_imatrix]
    assert {t.name for t in needs} >= {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "IQ3_XXS"}
    for t in needs:
        with pytest.raises(QuantizeError, match="importance matrix"):
            quantize(f16, [quant_type(t.name)], tmp_path)
        # Bypass edgepack's table: the quantizer itself must refuse, with a reason we pass on.
        out = tmp_path / f"x-{t.name}.gguf"
        with pytest.raises(QuantizeError, match="imatrix") as info:
            _quantize_one(f16, t, out, _settings(t, None, None, False, False), 2, None, None, False, False,
                          {"source_fingerprint": source_fingerprint(f16), "source_blake3": ""}, 0, QUIET)
        assert "llama.cpp could not quantize" in str(info.value)
        assert no_outputs(tmp_path) == []


# ------------------------------------------------------------------------------------------ every offered type


@pytest.mark.slow
def test_every_offered_type_loads_and_generates(all_types, f16):
    assert set(all_types) == set(OFFERED)
    for name, r in all_types.items():
        qt = quant_type(name)
        assert r.output.name == f"tiny-{name}.gguf" and not r.skipped and r.fallbacks == []
        header = read_header(r.output)
        assert header.get("general.file_type") == qt.ftype
        assert header.get("edgepack.quantize.type") == name
        assert header.get("general.name") == "tiny"  # the source's metadata travels along
        assert r.tensor_types.get(qt.base, 0) >= 1, (name, r.tensor_types)
        assert sum(r.tensor_types.values()) == len(header.tensors) == 21
        sidecar = json.loads(Path(str(r.output) + SIDECAR_SUFFIX).read_text())
        assert sidecar["size_bytes"] == r.size_bytes == r.output.stat().st_size
        with open_llama(r.output, n_ctx=32, n_batch=32, n_threads=1, n_threads_batch=1) as llm:
            out = llm.create_completion("The prince said", max_tokens=3, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1, name
        assert out["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.mark.slow
def test_sizes_follow_bits(all_types):
    size = {name: r.size_bytes for name, r in all_types.items()}
    chains = [["F32", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"],
              ["Q8_0", "Q5_1", "Q5_0", "Q4_0"], ["Q5_1", "Q4_1", "Q4_0"], ["Q5_K_M", "Q5_K_S", "Q4_K_M"],
              ["Q4_K_M", "Q4_K_S", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K"], ["IQ4_NL", "IQ4_XS", "IQ3_M", "IQ3_S"],
              ["TQ2_0", "TQ1_0"], ["Q2_K", "Q1_0"]]
    for chain in chains:
        for bigger, smaller in zip(chain, chain[1:]):
            assert size[bigger] > size[smaller], (bigger, size[bigger], smaller, size[smaller])
    assert all_types["F16"].bpw == all_types["BF16"].bpw  # same data size; the metadata strings differ
    for name, r in all_types.items():  # a mix only ever adds bits to the base type (and F32 norms)
        assert r.bpw >= quant_type(name).bpw - 1e-6, (name, r.bpw)


@pytest.mark.slow
def test_pure_gives_the_table_bits(f16, tmp_path):
    """--pure: every weight in the base type, so bits per weight are the table's (norms add ~0.001)."""
    names = ["Q8_0", "Q6_K", "Q4_0", "Q3_K_S", "Q2_K"]
    results = quantize(f16, names, tmp_path, threads=2, pure=True)
    for r in results:
        qt = quant_type(r.type)
        assert abs(r.bpw - qt.bpw) < 0.01, (r.type, r.bpw, qt.bpw)
        assert set(r.tensor_types) == {qt.base, "F32"}
    sizes = [r.size_bytes for r in results]
    assert sizes == sorted(sizes, reverse=True)


def test_tensor_type_overrides(f16, tmp_path):
    [r] = quantize(f16, ["Q4_K_M"], tmp_path, threads=2, output_tensor_type="Q8_0", token_embedding_type="q8_0")
    types = {t.name: t.type.name for t in read_header(r.output).tensors}
    assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] == "Q4_K"
    with pytest.raises(UsageError, match="unknown tensor type"):
        quantize(f16, ["Q4_K_M"], tmp_path, output_tensor_type="Q7")


# ------------------------------------------------------------------------------------------------- fallbacks


def test_fallbacks_are_reported_as_written(odd_f16, tmp_path, capsys):
    results = {r.type: r for r in quantize(odd_f16, ["Q4_K_M", "Q2_K", "Q8_0"], tmp_path, threads=2)}
    assert results["Q8_0"].fallbacks == []  # 352 is a multiple of Q8_0's 32
    for name in ("Q4_K_M", "Q2_K"):
        r = results[name]
        written = {t.name: t.type.name for t in read_header(r.output).tensors}
        assert sorted(f.tensor for f in r.fallbacks) == ["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]
        for f in r.fallbacks:
            assert f.ncols == 352 and f.wanted != f.used
            assert written[f.tensor] == f.used
            assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[f.wanted]][0] == 256
    assert {(f.wanted, f.used) for f in results["Q2_K"].fallbacks} == {("Q3_K", "Q4_0")}
    # ... and the CLI says so, after the table, also for a re-run that skips the work
    out = run_ok(capsys, "quantize", str(odd_f16), "-t", "Q2_K", "-o", str(tmp_path))
    assert "up to date" in out
    assert "blk.0.ffn_down.weight has rows of 352" in out and "llama.cpp used Q4_0" in out


# ---------------------------------------------------------------------------------------------------- re-runs


def test_rerun_skips_until_source_or_settings_change(f16, tmp_path):
    src = tmp_path / "m-F16.gguf"
    src.write_bytes(f16.read_bytes())
    [first] = quantize(src, ["Q8_0"], tmp_path / "out", threads=2)
    out = first.output
    sidecar = Path(str(out) + SIDECAR_SUFFIX)
    assert out.name == "tiny-Q8_0.gguf" and not first.skipped
    record = json.loads(sidecar.read_text())
    assert record["source_fingerprint"] == source_fingerprint(src) and record["size_bytes"] == out.stat().st_size
    stamp = out.stat().st_mtime_ns
    [again] = quantize(src, ["Q8_0"], tmp_path / "out", threads=2)
    assert again.skipped and out.stat().st_mtime_ns == stamp and again.tensor_types == first.tensor_types

    [pure] = quantize(src, ["Q8_0"], tmp_path / "out", threads=2, pure=True)  # other settings: redone
    assert not pure.skipped

    data = bytearray(src.read_bytes())  # change one weight byte of the source: redone
    data[-3] ^= 0x01
    src.write_bytes(bytes(data))
    [changed] = quantize(src, ["Q8_0"], tmp_path / "out", threads=2, pure=True)
    assert not changed.skipped

    copy = tmp_path / "copy.gguf"  # the same bytes in a new file (new inode and mtime): redone, by design
    copy.write_bytes(src.read_bytes())
    os.replace(copy, src)
    [rewritten] = quantize(src, ["Q8_0"], tmp_path / "out", threads=2, pure=True)
    assert not rewritten.skipped
    assert json.loads(sidecar.read_text())["source_fingerprint"] == source_fingerprint(src)

    Path(str(out) + SIDECAR_SUFFIX).unlink()  # no record of how it was made: redone
    [norecord] = quantize(src, ["Q8_0"], tmp_path / "out", threads=2, pure=True)
    assert not norecord.skipped


def test_hash_source_recognises_an_identical_rewrite(f16, tmp_path, capsys):
    """With hash_source (what convert -q uses; --hash-source on the command line), a source rewritten with the
    same bytes keeps its outputs, and one with a single byte changed does not."""
    src = tmp_path / "m-F16.gguf"
    src.write_bytes(f16.read_bytes())
    [first] = quantize(src, ["Q8_0"], tmp_path / "out", threads=2, hash_source=True)
    record = json.loads(Path(str(first.output) + SIDECAR_SUFFIX).read_text())
    assert record["source_blake3"] == blake3.blake3(src.read_bytes()).hexdigest()
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(src.read_bytes())
    os.replace(copy, src)
    [same] = json.loads(run_ok(capsys, "quantize", str(src), "-t", "Q8_0", "-o", str(tmp_path / "out"),
                               "--hash-source", "--threads", "2", "--json"))
    assert same["skipped"] is True
    data = bytearray(src.read_bytes())
    data[-3] ^= 0x01
    src.write_bytes(bytes(data))
    [changed] = quantize(src, ["Q8_0"], tmp_path / "out", threads=2, hash_source=True)
    assert not changed.skipped


def test_foreign_output_needs_force(f16, tmp_path):
    (tmp_path / "tiny-Q8_0.gguf").write_bytes(f16.read_bytes())  # a GGUF edgepack did not write
    with pytest.raises(OutputError, match="not written by edgepack"):
        quantize(f16, ["Q8_0"], tmp_path)
    [r] = quantize(f16, ["Q8_0"], tmp_path, force=True, threads=2)
    assert r.tensor_types["Q8_0"] == 16


def test_output_never_overwrites_source(f16, tmp_path):
    with pytest.raises(UsageError, match="overwrite the source"):
        quantize(f16, ["F16"], f16.parent)


@pytest.mark.slow
def test_requantize_when_allowed(all_types, tmp_path):
    q8 = all_types["Q8_0"].output
    with pytest.raises(QuantizeError, match="already quantized") as info:
        quantize(q8, ["Q4_K_M"], tmp_path)
    assert "--allow-requantize" in info.value.hint
    [r] = quantize(q8, ["Q4_K_M"], tmp_path, allow_requantize=True, threads=2)
    assert r.tensor_types["Q4_K"] >= 1
    with open_llama(r.output, n_ctx=32, n_threads=1, n_threads_batch=1) as llm:
        assert llm.create_completion("The", max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] >= 1


# ------------------------------------------------------------------------------------------------ bad inputs


def test_not_a_gguf(capsys, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("this is text\n")
    refused(capsys, "quantize", str(bad), "-t", "Q4_K_M", code=8, words="not a GGUF")
    assert no_outputs(tmp_path) == ["model.gguf"]


def test_missing_file(capsys, tmp_path):
    refused(capsys, "quantize", str(tmp_path / "nope.gguf"), "-t", "Q4_K_M", code=8, words="does not exist")


@pytest.mark.parametrize("keep", [100, 5000, None])
def test_truncated_gguf(capsys, f16, tmp_path, keep):
    data = f16.read_bytes()
    bad = tmp_path / "cut-F16.gguf"
    bad.write_bytes(data[:keep] if keep else data[:-4096])
    refused(capsys, "quantize", str(bad), "-t", "Q8_0", code=8, words="truncated")
    assert no_outputs(tmp_path) == ["cut-F16.gguf"]


def test_garbled_header(capsys, f16, tmp_path):
    data = bytearray(f16.read_bytes()[:200_000])
    data[8:16] = (10**12).to_bytes(8, "little")  # absurd tensor count
    bad = tmp_path / "garbled.gguf"
    bad.write_bytes(bytes(data))
    refused(capsys, "quantize", str(bad), "-t", "Q8_0", code=8, words="damaged")


@pytest.mark.slow
def test_quantized_source_to_higher_type(capsys, all_types, tmp_path):
    q4 = all_types["Q4_K_M"].output
    line = refused(capsys, "quantize", str(q4), "-t", "Q8_0", "-o", str(tmp_path), code=9, words="already quantized")
    assert "cannot bring the lost precision back" in line
    line = refused(capsys, "quantize", str(q4), "-t", "Q2_K", "-o", str(tmp_path), code=9, words="already quantized")
    assert "--allow-requantize" in line
    assert no_outputs(tmp_path) == []


def test_unknown_type(capsys, f16, tmp_path):
    line = refused(capsys, "quantize", str(f16), "-t", "Q4_K_M,Q9_X", "-o", str(tmp_path), code=2, words="Q9_X")
    assert "Q4_K_M" in line  # the hint lists what is offered
    assert no_outputs(tmp_path) == []  # nothing made, not even the valid type


def test_imatrix_type_refused_before_any_work(capsys, f16, tmp_path):
    line = refused(capsys, "quantize", str(f16), "-t", "Q8_0", "-t", "IQ2_XXS", "-o", str(tmp_path), code=9,
                   words="importance matrix")
    assert "IQ2_XXS" in line
    assert no_outputs(tmp_path) == []


def test_bad_bits(capsys, f16, tmp_path):
    refused(capsys, "quantize", str(f16), "--bits", "7", "-o", str(tmp_path), code=2, words="7 bits")


def test_vocab_only_source(capsys, tmp_path):
    folder = random_llama(tmp_path / "m")
    vocab = convert(folder, tmp_path / "vocab.gguf", vocab_only=True).output
    refused(capsys, "quantize", str(vocab), "-t", "Q8_0", code=8, words="no weight tensors")


def test_cli_subprocess_one_line(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 5)
    proc = subprocess.run([sys.executable, "-m", "edgepack", "quantize", str(bad), "-t", "Q4_K_M"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 8 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "truncated" in proc.stderr


# -------------------------------------------------------------------------------------------------------- CLI


def test_cli_json_bits_and_table(capsys, f16, tmp_path):
    payload = json.loads(run_ok(capsys, "quantize", str(f16), "--bits", "8", "-t", "Q4_K_M", "-o",
                                str(tmp_path / "d"), "--threads", "2", "--json"))
    assert [r["type"] for r in payload] == ["Q4_K_M", "Q8_0"]
    assert all(Path(r["output"]).exists() and r["bpw"] > 4 for r in payload)
    out = run_ok(capsys, "quantize", str(f16), "--bits", "8", "-o", str(tmp_path / "d"))
    assert "tiny-Q8_0.gguf" in out and "8.50" in out and "up to date" in out
    listing = run_ok(capsys, "quantize", "--list-types")
    assert "IQ2_XXS" in listing and "with an imatrix" in listing


def test_convert_then_quantize(capsys, tmp_path):
    folder = random_llama(tmp_path / "mymodel")
    out_dir = tmp_path / "dist"
    out_dir.mkdir()
    out = run_ok(capsys, "convert", str(folder), "-o", str(out_dir / "mymodel-F16.gguf"), "-q", "Q4_K_M,Q8_0")
    assert sorted(p.name for p in out_dir.glob("*.gguf")) == ["mymodel-Q4_K_M.gguf", "mymodel-Q8_0.gguf"]
    assert "removed the intermediate" in out
    payload = json.loads(run_ok(capsys, "convert", str(folder), "-o", str(out_dir / "mymodel-F16.gguf"), "-q",
                                "Q4_K_M", "--keep", "--json"))
    assert payload["quantize"][0]["skipped"] is True  # same source bytes, same settings
    assert (out_dir / "mymodel-F16.gguf").exists()
    for name in ("mymodel-Q4_K_M.gguf", "mymodel-Q8_0.gguf"):
        with open_llama(out_dir / name, n_ctx=32, n_threads=1, n_threads_batch=1) as llm:
            assert llm.create_completion("The", max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] >= 1
    refused(capsys, "convert", str(folder), "-o", str(tmp_path / "y.gguf"), "-q", "IQ1_S", code=9,
            words="importance matrix")
    assert not (tmp_path / "y.gguf").exists()


# ------------------------------------------------------------------------------------------- the GGUF reader


@pytest.mark.slow
def test_header_reader_agrees_with_gguf_py(f16, all_types):
    for path in (f16, all_types["Q4_K_M"].output):
        header, reader = read_header(path), gguf.GGUFReader(path)
        assert header.data_offset == reader.data_offset
        assert [(t.name, t.shape, t.type, header.data_offset + t.offset, t.n_bytes) for t in header.tensors] == \
               [(t.name, tuple(int(x) for x in t.shape), t.tensor_type, t.data_offset, int(t.n_bytes))
                for t in reader.tensors]
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue
            value = header.kv[key]
            if isinstance(value, SkippedArray):
                assert value.length == len(field.data)
            else:
                expected = field.contents()
                assert value == pytest.approx(expected) if isinstance(expected, float) else value == expected, key


def test_ctypes_params_struct_has_the_fields_we_set():
    params = llama_cpp.llama_model_quantize_default_params()
    fields = {name for name, _ in params._fields_}
    assert {"nthread", "ftype", "output_tensor_type", "token_embedding_type", "pure", "allow_requantize",
            "kv_overrides"} <= fields
    assert ctypes.sizeof(llama_cpp.llama_model_kv_override) >= 4 + 128 + 128
    assert isinstance(QUANT_TYPES[0], QuantType)
