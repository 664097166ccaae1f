"""Every bad input: one line on stderr (error + hint), a non-zero exit code, and no file left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.tinymodels import TOKENIZERS, popen_for_ctrl_c, synthetic_llama, tiny_llama_config, write_safetensors
from tests.support.tokenizer_cases import CASES


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    folder = synthetic_llama(tmp_path_factory.mktemp("good") / "model", tiny_llama_config())
    shutil.copy(TOKENIZERS / "llama2-sentencepiece-llama2c/tokenizer.model", folder / "tokenizer.model")
    return folder


@pytest.fixture
def model(good_model, tmp_path) -> Path:
    """A fresh copy of the good checkpoint for a test to break."""
    return Path(shutil.copytree(good_model, tmp_path / "model"))


def assert_refused(result: subprocess.CompletedProcess, out_dir: Path, *, code: int, words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got: {result.stderr!r}"
    assert lines[0].startswith("error: ") and "(hint: " in lines[0]
    assert words.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.stderr
    leftovers = [p.name for p in out_dir.iterdir() if p.suffix in (".gguf", ".tmp") or p.name.endswith(".tmp")]
    assert leftovers == [], leftovers


def test_good_model_converts(good_model, tmp_path):
    result = run_cli("convert", str(good_model), "-o", str(tmp_path / "ok.gguf"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_tensors"] == 2 * 9 + 3


def test_missing_config(model, tmp_path):
    (model / "config.json").unlink()
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=3, words="config.json")


@pytest.mark.slow
def test_invalid_config(model, tmp_path):
    (model / "config.json").write_text("{ not json")
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=3, words="valid JSON")


@pytest.mark.slow
def test_config_without_architecture(model, tmp_path):
    (model / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=3, words="architecture")


def test_unsupported_architecture_lists_supported(model, tmp_path):
    (model / "config.json").write_text(json.dumps(tiny_llama_config(architectures=["BertForMaskedLM"])))
    result = run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf"))
    assert_refused(result, tmp_path, code=4, words="BertForMaskedLM")
    assert "LlamaForCausalLM" in result.stderr


@pytest.mark.slow
def test_unsupported_rope_scaling(model, tmp_path):
    config = tiny_llama_config(rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    (model / "config.json").write_text(json.dumps(config))
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=4, words="dynamic")


def test_no_safetensors(model, tmp_path):
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(b"pickle would be here")
    result = run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf"))
    assert_refused(result, tmp_path, code=3, words="no .safetensors")
    assert "pytorch_model.bin" in result.stderr


def test_truncated_safetensors(model, tmp_path):
    path = model / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=3, words="truncated")


def test_garbled_safetensors_header(model, tmp_path):
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=3, words="garbled")


def test_missing_shard(tmp_path):
    folder = synthetic_llama(tmp_path / "sharded", tiny_llama_config(), shards=3)
    shutil.copy(TOKENIZERS / "llama2-sentencepiece-llama2c/tokenizer.model", folder / "tokenizer.model")
    (folder / "model-00002-of-00003.safetensors").unlink()
    assert_refused(run_cli("convert", str(folder), "-o", str(tmp_path / "x.gguf")), tmp_path, code=3, words="shard")


def _rewrite(model: Path, edit) -> None:
    """Rewrite model.safetensors with ``edit(tensors)`` applied (raw F32 arrays)."""
    from safetensors.numpy import load_file

    tensors = {k: ("F32", v) for k, v in load_file(model / "model.safetensors").items()}
    edit(tensors)
    write_safetensors(model / "model.safetensors", tensors)


def test_missing_tensor(model, tmp_path):
    _rewrite(model, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=3,
                   words="model.layers.1.mlp.up_proj.weight is missing")


@pytest.mark.slow
def test_unexpected_shape(model, tmp_path):
    (model / "config.json").write_text(json.dumps(tiny_llama_config(intermediate_size=768)))
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=3, words="shape")


@pytest.mark.slow
def test_unexpected_tensor(model, tmp_path):
    import numpy as np

    _rewrite(model, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": ("F32", np.ones(64, np.float32))}))
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=4,
                   words="q_norm")


def test_unsupported_dtype(model, tmp_path):
    import numpy as np

    def to_int(t):
        name = "model.layers.0.mlp.gate_proj.weight"
        t[name] = ("I32", np.zeros(t[name][1].shape, np.int32))
    _rewrite(model, to_int)
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=3, words="I32")


def test_no_tokenizer(model, tmp_path):
    (model / "tokenizer.model").unlink()
    assert_refused(run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf")), tmp_path, code=5,
                   words="no tokenizer files")


@pytest.mark.slow
def test_unknown_pre_tokenizer_then_override(model, tmp_path):
    (model / "tokenizer.model").unlink()
    case = next(c for c in CASES if c.name == "llama3-json")
    case.build(model)
    data = json.loads((model / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    (model / "tokenizer.json").write_text(json.dumps(data))
    (model / "config.json").write_text(json.dumps(tiny_llama_config(vocab_size=128256)))
    result = run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf"), "--vocab-only")
    assert_refused(result, tmp_path, code=5, words=r"split:\p{L}+|\s+")
    assert "--pre-tokenizer" in result.stderr
    ok = run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf"), "--vocab-only", "--pre-tokenizer", "llama-bpe")
    assert ok.returncode == 0, ok.stderr


def test_output_exists_needs_force(good_model, tmp_path):
    out = tmp_path / "x.gguf"
    out.write_bytes(b"keep me")
    result = run_cli("convert", str(good_model), "-o", str(out))
    assert result.returncode == 6 and "already exists" in result.stderr and "--force" in result.stderr
    assert out.read_bytes() == b"keep me"
    assert run_cli("convert", str(good_model), "-o", str(out), "--force").returncode == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_output_folder_missing_or_unwritable(good_model, tmp_path):
    result = run_cli("convert", str(good_model), "-o", str(tmp_path / "nope" / "x.gguf"))
    assert result.returncode == 6 and "does not exist" in result.stderr
    result = run_cli("convert", str(good_model), "-o", "/proc/edgepack-test.gguf")
    assert result.returncode == 6 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_option_is_one_line(good_model, tmp_path):
    result = run_cli("convert", str(good_model), "--outtype", "q4_k")
    assert result.returncode == 2 and "q4_k" in result.stderr and "Traceback" not in result.stderr


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch, capsys):
    """--debug and EDGEPACK_DEBUG=1 (documented in --help) re-raise the error for its traceback; otherwise one line."""
    from edgepack.cli import main
    from edgepack.errors import BadCheckpoint

    missing = str(tmp_path / "no-such-model")
    monkeypatch.delenv("EDGEPACK_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", missing])
    assert exit_info.value.code == 3 and capsys.readouterr().err.startswith("error: ")
    with pytest.raises(BadCheckpoint):
        main(["--debug", "convert", missing])
    for value, raises in (("1", True), ("true", True), ("0", False)):
        monkeypatch.setenv("EDGEPACK_DEBUG", value)
        with pytest.raises(BadCheckpoint if raises else SystemExit):
            main(["convert", missing])


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """A checkpoint big enough that writing it takes a while (about 200M parameters)."""
    config = tiny_llama_config(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=8,
                               num_key_value_heads=8)
    folder = synthetic_llama(tmp_path_factory.mktemp("big") / "big", config)
    shutil.copy(TOKENIZERS / "llama2-sentencepiece-llama2c/tokenizer.model", folder / "tokenizer.model")
    return folder


def interrupt_mid_write(args: list[str], out_dir: Path, signum: int) -> tuple[int, str]:
    """Run ``edgepack ARGS`` writing into ``out_dir``; send ``signum`` once its temp file has data."""
    proc = popen_for_ctrl_c([sys.executable, "-m", "edgepack", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in out_dir.iterdir()):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signum)
    return proc.wait(timeout=60), proc.stderr.read()


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, last_lines", [(signal.SIGINT, 130, ("interrupted", "aborted")),
                                                      (signal.SIGTERM, 143, ("terminated",))])
def test_ctrl_c_and_sigterm_leave_nothing(big_model, tmp_path, signum, code, last_lines):
    """SIGINT (Ctrl-C) or SIGTERM (`timeout`, CI cancelling a job) in the middle of writing: no output and no temp
    file remain (issue 13, finding 6: SIGTERM used to leave the half-written temp file)."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    returncode, stderr = interrupt_mid_write(["convert", str(big_model), "-o", str(out_dir / "x.gguf"), "--outtype",
                                              "q8_0"], out_dir, signum)
    assert returncode == code, stderr
    assert list(out_dir.iterdir()) == []
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] in last_lines, stderr


@pytest.mark.slow
def test_sigterm_during_quantize_leaves_nothing(big_model, tmp_path):
    """The quantizer runs in C on a worker thread; SIGTERM still reaches the main thread and removes the temp
    file (the issue measured 457 MB left behind)."""
    from edgepack.convert import convert

    src = tmp_path / "big-F16.gguf"
    convert(big_model, src, outtype="f16")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    returncode, stderr = interrupt_mid_write(["quantize", str(src), "-t", "Q4_0", "-o", str(out_dir)], out_dir,
                                             signal.SIGTERM)
    assert returncode == 143, stderr
    assert list(out_dir.iterdir()) == []
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "terminated", stderr
