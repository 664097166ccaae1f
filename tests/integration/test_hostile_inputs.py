"""GGUFs that pass the header check but make llama.cpp abort the process, and other inputs that crashed a command.

Each damaged file is a real GGUF (gguf-py's writer) made from the converted demo model with one key changed; before
``edgepack.loadcheck`` every one of them killed quantize, eval and verify with SIGABRT (checked here: llama.cpp
itself still aborts on them, in a child process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from edgepack import isolate, limits
from edgepack.config import resolve
from edgepack.convert import convert
from edgepack.errors import BadGGUF, ConfigError, OutputError, UsageError
from edgepack.ggufheader import read_header
from edgepack.loadcheck import check_loadable, probe

REPO = Path(__file__).resolve().parents[2]
VT = gguf.GGUFValueType


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "demo-F32.gguf"
    convert(REPO / "examples/demo/model", out, outtype="f32")
    return out


def rewrite(src: Path, dst: Path, changes: dict | None = None, alignment: int | None = None) -> Path:
    """``src`` copied to ``dst`` with keys replaced ({key: (value, type[, item type])}) and an optional alignment."""
    changes = changes or {}
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=None)
    if alignment:
        writer.data_alignment = alignment
        changes = {**changes, "general.alignment": (alignment, VT.UINT32)}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in changes:
            continue
        vtype = field.types[0]
        writer.add_key_value(name, field.contents(), vtype, field.types[-1] if vtype == VT.ARRAY else None)
    for name, value in changes.items():
        writer.add_key_value(name, *value)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _duplicate_token(src: Path) -> dict:
    tokens = list(gguf.GGUFReader(src).fields["tokenizer.ggml.tokens"].contents())
    tokens[100] = tokens[101]
    return {"tokenizer.ggml.tokens": (tokens, VT.ARRAY, VT.STRING)}


CASES = {  # name -> (changes or a function of the source giving them, alignment, words in the error)
    "block_count 0": ({"llama.block_count": (0, VT.UINT32)}, None, "block_count is 0"),
    "block_count 1000": ({"llama.block_count": (1000, VT.UINT32)}, None, "block_count is 1000"),
    "block_count 2^31": ({"llama.block_count": (2**31, VT.UINT32)}, None, "block_count is 2147483648"),
    "unknown rope scaling": ({"llama.rope.scaling.type": ("weird", VT.STRING)}, None, "rope.scaling.type"),
    "NaN rms_eps": ({"llama.attention.layer_norm_rms_epsilon": (float("nan"), VT.FLOAT32)}, None, "is nan"),
    "tokenizer none": ({"tokenizer.ggml.model": ("none", VT.STRING)}, None, "tokenizer.ggml.model is 'none'"),
    "SentencePiece without scores": ({"tokenizer.ggml.model": ("llama", VT.STRING)}, None, "a score per token"),
    "duplicate tokens": (_duplicate_token, None, "twice"),
    "alignment 1": ({}, 1, "general.alignment is 1"),
    "alignment 8": ({}, 8, "general.alignment is 8"),
}


@pytest.fixture(scope="module")
def damaged(demo_gguf) -> dict[str, tuple[Path, str]]:
    out = {}
    for i, (name, (changes, alignment, words)) in enumerate(CASES.items()):
        changes = changes(demo_gguf) if callable(changes) else changes
        dst = demo_gguf.parent / f"damaged-{i}.gguf"
        rewrite(demo_gguf, dst, changes, alignment)
        # A small alignment aborts llama.cpp only when the tensor data really is off 16 bytes (GGML_MEM_ALIGN):
        # pad the header until it is, so the file crashes whatever the header's length.
        pad = 0
        while alignment and read_header(dst).data_offset % 16 != 8:
            pad += 1
            rewrite(demo_gguf, dst, {**changes, "test.pad": ("x" * pad, VT.STRING)}, alignment)
        out[name] = (dst, words)
    return out


def _load_in_child(path: Path) -> int:
    code = ("import llama_cpp, sys; m = llama_cpp.Llama(sys.argv[1], verbose=False, n_ctx=64); "
            "m.eval(m.tokenize(b'hello world'))")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True).returncode


@pytest.mark.slow
def test_llama_cpp_aborts_on_each_damaged_file_and_loadcheck_refuses_it(damaged, demo_gguf):
    assert _load_in_child(demo_gguf) == 0  # the undamaged copy loads: the damage is what aborts
    for name, (path, words) in damaged.items():
        assert _load_in_child(path) < 0, f"{name}: llama.cpp no longer crashes on it; keep the check anyway"
        with pytest.raises(BadGGUF) as err:
            check_loadable(path)
        assert words in err.value.message and "\n" not in err.value.message, name


def test_undamaged_and_16_byte_aligned_files_pass(demo_gguf):
    check_loadable(demo_gguf)
    check_loadable(rewrite(demo_gguf, demo_gguf.parent / "aligned-16.gguf", alignment=16))


def _cli(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True,
                          env={**os.environ, **env})


@pytest.mark.parametrize("command", ["quantize", "eval"])
def test_commands_refuse_a_crashing_file_with_one_line(command, damaged, demo_gguf, tmp_path):
    path, _ = damaged["block_count 1000"]
    args = [str(path), "-t", "Q8_0", "-o", str(tmp_path)] if command == "quantize" else [str(path), "--ref",
                                                                                         str(demo_gguf)]
    res = _cli(command, *args)
    assert res.returncode == BadGGUF.exit_code, res.stderr
    assert "Traceback" not in res.stderr and "block_count is 1000" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_isolate_turns_a_crash_into_one_error():
    with pytest.raises(BadGGUF) as err:
        isolate.call(os.abort, what="a test file")
    assert "SIGABRT" in err.value.message and "a test file" in err.value.message


def test_isolate_reraises_the_childs_error_type(damaged):
    path, _ = damaged["duplicate tokens"]
    with pytest.raises(BadGGUF, match="twice"):
        probe(path)


def test_thread_counts_are_bounded(demo_gguf, tmp_path):
    with pytest.raises(UsageError, match="between 1 and 512"):
        limits.threads(100_000)
    res = _cli("quantize", str(demo_gguf), "-t", "Q8_0", "-o", str(tmp_path), "--threads", "100000")
    assert res.returncode == UsageError.exit_code and "Traceback" not in res.stderr, res.stderr
    config = tmp_path / "edgepack.toml"
    config.write_text(f'source = "{REPO / "examples/demo/model"}"\n[bench]\nthreads = 100000\n')
    with pytest.raises(ConfigError, match="at most 512"):
        resolve(config)


def _mount_tiny_tmpfs(where: Path) -> bool:
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not shutil.which("mount") or os.geteuid() != 0, reason="needs root to mount a 1 MB tmpfs")
def test_eval_with_a_small_temp_folder_says_so_and_leaves_nothing(demo_gguf, tmp_path):
    tiny = tmp_path / "tiny"
    if not _mount_tiny_tmpfs(tiny):
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        res = _cli("eval", str(demo_gguf), "--ref", str(demo_gguf), "--json", TMPDIR=str(tiny))
        assert res.returncode != 0 and res.returncode > 0, res.stderr  # an error, not SIGBUS
        assert "temp space" in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert list(tiny.iterdir()) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


@pytest.mark.skipif(not shutil.which("mount") or os.geteuid() != 0, reason="needs root to mount a small tmpfs")
@pytest.mark.parametrize("command", ["convert", "quantize", "adapter merge"])
def test_a_full_disk_is_named_as_such(command, demo_gguf, tmp_path):
    full = tmp_path / "full"
    if not _mount_tiny_tmpfs(full):
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        if command == "convert":  # an 11 MB F32 file into 1 MB: numpy's short write has no errno
            res = _cli("convert", str(REPO / "examples/demo/model"), "-o", str(full / "m.gguf"), "--outtype", "f32")
        elif command == "quantize":  # llama.cpp reports only "iostream error"
            res = _cli("quantize", str(demo_gguf), "-t", "Q8_0", "-o", str(full))
        else:  # a plain ENOSPC from a write no stage wraps: the CLI's last line of defence
            res = _cli("adapter", "merge", str(REPO / "examples/demo/adapter"), "--base",
                       str(REPO / "examples/demo/model"), "-o", str(full / "merged"))
        assert res.returncode == OutputError.exit_code, res.stderr
        assert "disk full" in res.stderr and "Traceback" not in res.stderr
        assert list(full.iterdir()) == []
    finally:
        subprocess.run(["umount", str(full)], check=False)


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf"])
def test_non_finite_adapter_scales_are_refused(scale, tmp_path):
    config = tmp_path / "edgepack.toml"
    config.write_text(f'source = "{REPO / "examples/demo/model"}"\n[[adapters]]\n'
                      f'path = "{REPO / "examples/demo/adapter"}"\nscale = {scale}\n')
    with pytest.raises(ConfigError, match="finite"):
        resolve(config)


def test_a_profile_claiming_absurd_core_counts_is_refused_by_validate(tmp_path):
    from edgepack.errors import ProfileError
    from edgepack.profiles import SHIPPED_DIR, load_profile_file

    text = (SHIPPED_DIR / "pixel-8.toml").read_text()
    first = text.index("cores = ") + len("cores = ")
    bad = tmp_path / "pixel-8.toml"
    bad.write_text(text[:first] + "1000000000000" + text[text.index(",", first):])
    with pytest.raises(ProfileError, match="at most 512"):
        load_profile_file(bad)


def test_a_huge_safetensors_header_is_refused_before_it_is_parsed(tmp_path):
    """A 99 MB header is legal safetensors but costs gigabytes as Python objects: refused by its length alone."""
    import struct

    from edgepack.convert.checkpoint import read_safetensors_header
    from edgepack.errors import BadCheckpoint

    header = json.dumps({"__metadata__": {"pad": "x" * (99 * 2**20)}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(BadCheckpoint, match="bad header length"):
        read_safetensors_header(path)
