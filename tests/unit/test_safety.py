"""Hostile and clumsy inputs and outputs (issue 13): names and revisions that read as paths, device nodes and
pipes given as outputs, two builds into one folder. Each test writes real files or starts real processes;
nothing is mocked. (SIGTERM mid-write: tests/integration/test_convert_errors.py; quantize, report and
adapter outputs: tests/integration/test_safety_outputs.py.)"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.errors import OutputError
from edgepack.fileio import atomic_write_text, check_replaceable, prepare_output_dir
from edgepack.validate import git_revision, safe_name

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "examples" / "demo" / "model"


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"), **kwargs)


def one_line_error(proc: subprocess.CompletedProcess, code: int, words: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "(hint: " in err, err
    assert words in err, err


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "pipe.gguf"
    os.mkfifo(path)
    return path


# -- names and revisions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["demo", "Qwen2.5-0.5B-Instruct", "my model", "modèle", "a..b", "x" * 100])
def test_safe_names_pass(name):
    assert safe_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "-rf", "a/b", "../x", "/abs", "a\\b", "c:", "a\nb",
                                  "a\0b", "trailing.", "trailing ", "x" * 101, "é" * 51, None, 3])
def test_unsafe_names_fail(name):
    with pytest.raises(ValueError):
        safe_name(name)


@pytest.mark.parametrize("rev", ["main", "v1.0", "refs/pr/1", "refs/convert/parquet", "feature/a-b_c", "0" * 40,
                                 "abc1234", "release@2"])
def test_git_revisions_pass(rev):
    assert git_revision(rev) == rev


@pytest.mark.parametrize("rev", ["", "/abs/path", "../x", "a/../b", "a/./b", ".hidden", "a/.b", "x.lock", "a/b.lock",
                                 "a//b", "a/", "a.", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b", "@", "a@{1}",
                                 "a\x7fb", "a\tb", "x" * 256])
def test_git_revisions_fail(rev):
    with pytest.raises(ValueError):
        git_revision(rev)


# -- outputs that are not regular files (finding 5) ------------------------------------------------------------

def test_a_device_or_pipe_is_never_replaced(tmp_path, fifo):
    for special in (Path("/dev/null"), fifo):
        with pytest.raises(OutputError, match="not a regular file"):
            check_replaceable(special)
        with pytest.raises(OutputError, match="not a regular file"):
            atomic_write_text(special, "x")  # every file output (fit/bench -o, reports, sidecars) goes through here
    assert Path("/dev/null").is_char_device() and fifo.is_fifo()
    assert [p.name for p in tmp_path.iterdir()] == [fifo.name], "no temp file left"
    with pytest.raises(OutputError, match="is a named pipe"):
        prepare_output_dir(fifo)
    check_replaceable(tmp_path / "absent")  # fine: it does not exist
    (tmp_path / "plain").write_text("old")
    check_replaceable(tmp_path / "plain")  # fine: a regular file


def test_convert_force_refuses_a_pipe_and_a_device(tmp_path, fifo):
    one_line_error(run_cli("convert", str(DEMO_MODEL), "-o", str(fifo), "--force"), 6,
                   "is a named pipe, not a regular file")
    assert fifo.is_fifo()
    device = tmp_path / "null"  # a twin of /dev/null (same major/minor), so a failure cannot harm the real one
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    one_line_error(run_cli("convert", str(DEMO_MODEL), "-o", str(device), "--force"), 6,
                   "is a character device, not a regular file")
    assert device.is_char_device()
