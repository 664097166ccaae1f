"""Pipeline config: precedence (CLI > env > file > defaults), file:line errors, pyproject [tool.edgepack]."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepack.cli import cli
from edgepack.config import line_of, resolve
from edgepack.errors import ConfigError

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo" / "edgepack.toml"

BASIC = """\
name = "tiny"
source = "./model"

[quantize]
types = ["Q8_0", "q4_k_m"]

[[adapters]]
name = "chat"
path = "./lora"
mode = "both"
scales = [0.5, 1.0]

[constraints]
ctx = 512
max_kld = 0.1

[outputs]
archive = "zip"
"""


def write(tmp_path: Path, text: str, name: str = "edgepack.toml") -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_file_values_and_defaults(tmp_path):
    cfg = resolve(write(tmp_path, BASIC), env={})
    assert cfg.name == "tiny"
    assert cfg.source.kind == "local" and cfg.source.path == tmp_path / "model"
    assert cfg.quants == ("Q8_0", "Q4_K_M")  # names normalised by the quantizer's table
    assert cfg.ctx == 512 and cfg.max_kld == 0.1 and cfg.min_tps is None
    assert cfg.archive == "zip" and cfg.report is True and cfg.outtype == "auto"
    [a] = cfg.adapters
    assert (a.name, a.path, a.mode, a.scales) == ("chat", tmp_path / "lora", "both", (0.5, 1.0))
    assert a.converts and a.merges
    assert cfg.origins["ctx"] == "file"
    assert cfg.origins["threads"] == "default"


def test_precedence_cli_over_env_over_file(tmp_path):
    path = write(tmp_path, BASIC)
    env = {"EDGEPACK_CTX": "1024", "EDGEPACK_MAX_KLD": "0.2", "EDGEPACK_QUANTS": "Q6_K,Q2_K"}
    cfg = resolve(path, env=env, cli={"constraints.ctx": 2048})
    assert cfg.ctx == 2048 and cfg.origins["ctx"] == "cli"  # CLI beats env and file
    assert cfg.max_kld == 0.2 and cfg.origins["max_kld"] == "env EDGEPACK_MAX_KLD"  # env beats file
    assert cfg.quants == ("Q6_K", "Q2_K")
    assert cfg.archive == "zip" and cfg.origins["archive"] == "file"


def test_bits_and_types_one_selection(tmp_path):
    path = write(tmp_path, 'source = "./model"\n[quantize]\nbits = [8, 4]\n')
    assert resolve(path, env={}).quants == ("Q8_0", "Q4_K_M")
    # a higher-precedence selection replaces the file's whole selection, names or bits
    assert resolve(path, env={}, cli={"quantize.types": "Q2_K"}).quants == ("Q2_K",)


def test_hub_source_and_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.edgepack]\nsource = "org/some-model@v1.0"\n'
        '[tool.edgepack.constraints]\nctx = 4096\n')
    cfg = resolve(tmp_path, env={})
    assert cfg.source.kind == "hub" and cfg.source.repo_id == "org/some-model" and cfg.source.revision == "v1.0"
    assert cfg.name == "some-model" and cfg.ctx == 4096


@pytest.mark.parametrize("text, line, words", [
    ('source = "./model"\n\n[constraints]\nctx = -3\n', 4, "constraints.ctx: must be a positive integer"),
    ('source = "./model"\n[constraints]\nctx = 3\ncolour = "red"\n', 4, "unknown key 'colour' in [constraints]"),
    ('source = "./model"\nfoo = 1\n', 2, "unknown key 'foo'"),
    ('source = "./model"\n[quantize]\ntypes = ["Q8_0",\n  "Q9_X"]\n', 3, "unknown quantization type 'Q9_X'"),
    ('source = "./model"\n[[adapters]]\npath = "a"\n[[adapters]]\npath = "b"\nmode = "fuse"\n', 6,
     "adapters[1].mode: must be one of convert, merge, both"),
    ('source = "./model"\n[[adapters]]\npath = "a"\nrank = 3\n', 4, "adapters[0].rank: unknown key"),
    ('source = "./model"\n[outputs]\narchive = "rar"\n', 3, "must be one of none, tar.zst, zip"),
    ('source = "./model"\n[constraints]\nmax_kld = "low"\n', 3, "must be a positive number"),
    ('source = "./model"\n[constraints\nctx = 3\n', 2, "invalid TOML"),
    ('source = "./model"\nquantize = 3\n', 2, "must be a table"),
    ('source = "./model"\n\n[eval]\ntext = "nope.txt"\n', 4, "eval.text: text file"),
])
def test_errors_name_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        resolve(path, env={})
    assert f"{path}:{line}:" in str(info.value)
    assert words in str(info.value)
    assert info.value.hint


@pytest.mark.parametrize("text, line, words", [
    ('source = "./model"\nname = "../../../../X"\n', 2, "name: name '../../../../X' contains '/'"),
    ('source = "./model"\nname = "/tmp/X"\n', 2, "contains '/'"),
    ('source = "./model"\nname = ".."\n', 2, "starts with '.'"),
    ('source = "./model"\nname = "a\\u0007b"\n', 2, "contains '\\x07'"),
    ('source = "./model"\nname = "' + "x" * 101 + '"\n', 2, "at most 100"),
    ('source = "./model"\n[[adapters]]\npath = "a"\nname = ".."\n', 4, "adapters[0].name: adapter name '..'"),
    ('\nsource = "org/model@../../x"\n', 2, "source: revision '../../x' is not a branch, tag or commit name"),
    ('source = "org/model@/etc/passwd"\n', 1, "is not a branch, tag or commit name"),
    ('[source]\nrepo = "org/model"\nrevision = "a/../b"\n', 1, "contains '..'"),
])
def test_names_and_revisions_cannot_be_paths(tmp_path, text, line, words):
    """Every name that becomes a file name, and a Hub revision (a file in the Hub cache), is one safe name."""
    test_errors_name_file_and_line(tmp_path, text, line, words)


def test_a_derived_name_is_checked_too(tmp_path):
    (tmp_path / "we:ird").mkdir()
    path = write(tmp_path, 'source = "./we:ird"\n')
    with pytest.raises(ConfigError, match="the name derived from the source 'we:ird' contains ':'") as info:
        resolve(path, env={})
    assert "name =" in info.value.hint
    with pytest.raises(ConfigError, match="env EDGEPACK_NAME: name: .* contains '/'"):
        resolve(write(tmp_path, 'source = "./model"\n'), env={"EDGEPACK_NAME": "a/b"})


def test_env_and_cli_errors_say_where(tmp_path):
    path = write(tmp_path, 'source = "./model"\n')
    with pytest.raises(ConfigError, match="env EDGEPACK_CTX: constraints.ctx: must be a positive integer"):
        resolve(path, env={"EDGEPACK_CTX": "many"})
    with pytest.raises(ConfigError, match="command line: outputs.archive"):
        resolve(path, env={}, cli={"outputs.archive": "7z"})


def test_missing_source_and_file(tmp_path):
    with pytest.raises(ConfigError, match="no source given"):
        resolve(write(tmp_path, "[constraints]\nctx = 3\n"), env={})
    with pytest.raises(ConfigError, match="not found"):
        resolve(tmp_path / "nope.toml", env={})


def test_line_of_finds_keys_in_tables():
    text = 'a = 1\n[x]\nb = 2\n[[y]]\nc = 1\n[[y]]\nc = 2\n'
    assert line_of(text, "a") == 1
    assert line_of(text, "x.b") == 3
    assert line_of(text, "y.c", 1) == 7


def test_cli_config_prints_resolved(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CTX", "64")
    res = CliRunner().invoke(cli, ["config", str(DEMO), "--json", "-t", "Q4_0"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["quants"] == ["Q4_0"] and data["origins"]["quants"] == "cli"
    assert data["ctx"] == 64 and data["origins"]["ctx"] == "env EDGEPACK_CTX"
    assert data["adapters"][0]["name"] == "dialogue"
    res = CliRunner().invoke(cli, ["config", str(DEMO)])
    assert res.exit_code == 0 and "wnp-demo" in res.output and "env EDGEPACK_CTX" in res.output


def test_cli_config_error_is_one_line(tmp_path):
    import subprocess
    import sys
    path = write(tmp_path, 'source = "./model"\n[constraints]\nctx = 0\n')
    res = subprocess.run([sys.executable, "-m", "edgepack", "config", str(path)], capture_output=True, text=True)
    assert res.returncode == 11
    assert res.stderr.count("\n") == 1 and f"{path}:3:" in res.stderr and "Traceback" not in res.stderr


def test_imatrix_and_calibration_keys(tmp_path):
    (tmp_path / "cal.txt").write_text("text")
    cfg = resolve(write(tmp_path, 'source = "./model"\n[quantize]\ntypes = ["IQ2_XS", "Q4_K_M"]\n'
                                  'imatrix = "auto"\ncalibration = "cal.txt"\n'), env={})
    assert cfg.imatrix == "auto" and cfg.calibration == tmp_path / "cal.txt" and cfg.quants == ("IQ2_XS", "Q4_K_M")
    assert resolve(write(tmp_path, 'source = "./model"\n'), env={}).imatrix is None
    assert resolve(write(tmp_path, 'source = "./model"\n[quantize]\nimatrix = false\n'), env={}).calibration == \
        "builtin"
    with pytest.raises(ConfigError, match=r"edgepack.toml:3:.*IQ2_XS need an importance matrix"):
        resolve(write(tmp_path, 'source = "./model"\n[quantize]\ntypes = ["IQ2_XS"]\n'), env={})
    with pytest.raises(ConfigError, match=r":3: quantize.imatrix: file .*nope.gguf does not exist"):
        resolve(write(tmp_path, 'source = "./model"\n[quantize]\nimatrix = "nope.gguf"\n'), env={})
    compare = resolve(write(tmp_path, 'source = "./model"\n[quantize]\nimatrix = "Compare"\ndevice_mixes = true\n'
                                      '[profiles]\nnames = ["pixel-8"]\n'), env={})
    assert compare.imatrix == "compare" and compare.device_mixes is True
    assert compare.origins["device_mixes"] == "file"
    assert resolve(write(tmp_path, 'source = "./model"\n'), env={"EDGEPACK_DEVICE_MIXES": "1",
                                                                 "EDGEPACK_PROFILES": "pixel-8"}).device_mixes is True
    with pytest.raises(ConfigError, match=r":3: quantize.device_mixes: device_mixes needs the devices named"):
        resolve(write(tmp_path, 'source = "./model"\n[quantize]\ndevice_mixes = true\n'), env={})
    assert resolve(write(tmp_path, 'source = "./model"\n'), env={}).device_mixes is False
    with pytest.raises(ConfigError, match=r":3: quantize.device_mixes: must be true or false"):
        resolve(write(tmp_path, 'source = "./model"\n[quantize]\ndevice_mixes = "per-device"\n'), env={})


def test_mmproj_key(tmp_path):
    """quantize.mmproj: "auto" by default (the projector of a vision-language source, F16), a projector type, or
    "none"; the choices are the converter's projector types plus those two."""
    from edgepack.config.options import MMPROJ
    from edgepack.convert.mmproj import MMPROJ_OUTTYPES

    assert set(MMPROJ) == {"auto", "none", *MMPROJ_OUTTYPES}
    assert resolve(write(tmp_path, 'source = "./model"\n'), env={}).mmproj == "auto"
    cfg = resolve(write(tmp_path, 'source = "./model"\n[quantize]\nmmproj = "Q8_0"\n'), env={})
    assert cfg.mmproj == "q8_0" and cfg.origins["mmproj"] == "file"
    assert resolve(write(tmp_path, 'source = "./model"\n'), env={"EDGEPACK_MMPROJ": "none"}).mmproj == "none"
    with pytest.raises(ConfigError, match=r"edgepack.toml:3: quantize.mmproj: must be one of auto, none, f16"):
        resolve(write(tmp_path, 'source = "./model"\n[quantize]\nmmproj = "bf16"\n'), env={})
