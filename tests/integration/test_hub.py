"""``edgepack pull`` and Hub sources, against a real Hub-compatible HTTP server on 127.0.0.1
(tests/support/hubserver.py) driven by the real huggingface_hub client. Nothing here reaches the real Hub:
HF_ENDPOINT always points at the loopback server and HF_HOME at a temp folder.

The served model is a tiny Llama built by transformers (seeded) with the real Llama-2 SentencePiece tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from edgepack.errors import HubError, OutputError, UsageError
from edgepack.hub import MANIFEST, HubSettings, pull
from edgepack.source import hub_source as parse_source, resolve as resolve_source
from tests.support.hubserver import HubServer
from tests.support.tinymodels import TOKENIZERS, build_model, compare, hf_logits, llama_cpp_logits, real_config, shrink

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = "org/tiny-llama"
README = "---\nlicense: llama2\nlanguage:\n- en\n---\n# tiny-llama\n\nA seeded test model.\n"
NEEDED = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
          "README.md", "LICENSE"}
NOT_NEEDED = {"pytorch_model.bin", "flax_model.msgpack", "tf_model.h5", "onnx/model.onnx",
              "original/consolidated.00.pth", ".gitattributes"}
RESUME_CHUNK = 10 * 1024 * 1024  # huggingface_hub writes 10 MiB chunks: a resume starts on such a boundary


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """The tiny Llama's files (name -> bytes) plus the torch model for reference logits."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    config = shrink(real_config("llama2_7b"), hidden=64, heads=4, intermediate=128, vocab_size=32000)
    model = build_model(config, folder)
    shutil.copy(TOKENIZERS / "llama2-sentencepiece-llama2c" / "tokenizer.model", folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False,
                                                              "bos_token": "<s>", "eos_token": "</s>"}))
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["README.md"] = README.encode()
    files["LICENSE"] = b"LLAMA 2 COMMUNITY LICENSE AGREEMENT (test copy)\n"
    assert NEEDED <= set(files), sorted(files)
    assert len(files["model.safetensors"]) > RESUME_CHUNK + 1_000_000  # big enough to show a ranged resume
    junk = {name: f"not for conversion: {name}".encode() * 50 for name in NOT_NEEDED}
    return {**files, **junk}, model


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A loopback Hub, with the process environment pointed at it and at a temp HF_HOME."""
    with HubServer() as server:
        for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield server


@pytest.fixture
def repo(hub, model_files):
    """Two commits: v1.0 (tagged) and a later main whose generation_config differs."""
    files, _ = model_files
    first = hub.add_commit(REPO, files, tags=("v1.0",))
    second = hub.add_commit(REPO, {**files, "generation_config.json": b'{"temperature": 0.5}'})
    return first, second


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m edgepack ...`` in a fresh process: the client reads HF_* there at import, as for a user."""
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or REPO_ROOT, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, exit_code: int, *needles: str) -> str:
    assert proc.returncode == exit_code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and "(hint: " in err, err
    for needle in needles:
        assert needle in err, err
    return err


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def no_partial_output(out: Path) -> None:
    """Neither the folder nor any staging folder beside it; no half-downloaded blob in the cache."""
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    cache = Path(os.environ["HF_HOME"]) / "hub"
    assert not list(cache.rglob("*.incomplete")) if cache.exists() else True


# -- resolution and selection ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_revision_is_pinned_to_the_full_commit(repo, hub, model_files, tmp_path):
    first, second = repo
    files, _ = model_files
    by_tag = pull(REPO, "v1.0")
    by_short_sha = pull(REPO, first[:7])
    by_branch = pull(REPO)
    assert (by_tag.commit_sha, by_short_sha.commit_sha, by_branch.commit_sha) == (first, first, second)
    assert by_tag.folder.name == first and by_branch.folder.name == second  # the cache's snapshots/<sha>
    assert (by_branch.folder / "generation_config.json").read_bytes() == b'{"temperature": 0.5}'
    assert (by_tag.folder / "generation_config.json").read_bytes() == files["generation_config.json"]
    # provenance: the licence from the model card, every file's sha256 equal to the served bytes
    assert by_tag.license == "llama2"
    assert {f.name: f.sha256 for f in by_tag.files} == {n: sha256(files[n]) for n in NEEDED}
    prov = by_tag.provenance()
    assert (prov.repo_id, prov.revision, prov.commit_sha, prov.license) == (REPO, "v1.0", first, "llama2")
    assert prov.url == f"{hub.endpoint}/{REPO}/tree/{first}"


@pytest.mark.slow
def test_only_the_allow_list_is_downloaded(repo, hub):
    result = pull(REPO, "v1.0")
    assert {f.name for f in result.files} == NEEDED
    assert set(result.skipped) == NOT_NEEDED
    assert set(hub.downloaded()) == NEEDED  # the server never sent a byte of the others
    assert sorted(p.name for p in result.folder.iterdir()) == sorted(NEEDED)


@pytest.mark.slow
def test_include_fetches_more_on_request(repo, hub):
    result = pull(REPO, "v1.0", include=["*.bin"])
    assert "pytorch_model.bin" in {f.name for f in result.files}
    assert set(hub.downloaded()) == NEEDED | {"pytorch_model.bin"}


def test_sharded_weights_follow_the_index(hub):
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    hub.add_commit("org/sharded", {"config.json": "{}", "model.safetensors.index.json": json.dumps(index),
                                   "model-00001-of-00002.safetensors": b"1" * 100,
                                   "model-00002-of-00002.safetensors": b"2" * 100,
                                   "consolidated.safetensors": b"c" * 200, "tokenizer.json": "{}"})
    result = pull("org/sharded")
    assert {f.name for f in result.files} == {"config.json", "model.safetensors.index.json", "tokenizer.json",
                                              "model-00001-of-00002.safetensors",
                                              "model-00002-of-00002.safetensors"}
    assert "consolidated.safetensors" not in hub.downloaded()


def test_parse_source_forms(tmp_path, monkeypatch):
    assert parse_source("org/name") == parse_source("hf://org/name")
    assert parse_source("hf://org/name@v1.0").revision == "v1.0"
    assert parse_source("org/name@refs/pr/1").revision == "refs/pr/1"
    assert parse_source("hf://gpt2").repo_id == "gpt2"
    assert parse_source("./model") is None and parse_source("model") is None
    with pytest.raises(UsageError):
        parse_source("hf://not a repo")
    with pytest.raises(UsageError):
        parse_source("org/name@")
    # a local folder spelled like a repo id stays local
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "README.md").write_text("---\nlicense: mit\n---\n")
    folder, prov = resolve_source("org/name")
    assert folder == Path("org/name") and prov.license == "mit" and prov.repo_id is None


# -- re-runs, cache, offline ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_second_pull_transfers_nothing(repo, hub, tmp_path):
    first, _ = repo
    pull(REPO, "v1.0", tmp_path / "out")
    sent_before = len(hub.downloaded())
    again = pull(REPO, "v1.0", tmp_path / "out")
    assert len(hub.downloaded()) == sent_before  # no file transferred
    assert again.downloaded_bytes == 0 and again.commit_sha == first
    # a full sha already in the cache needs no request at all
    requests_before = len(hub.requests())
    pinned = pull(REPO, first)
    assert len(hub.requests()) == requests_before and not pinned.network_used


@pytest.mark.slow
def test_offline_reuses_the_cache(repo, hub, monkeypatch, tmp_path):
    first, second = repo
    online = pull(REPO, "v1.0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    requests_before = len(hub.requests())
    offline = pull(REPO, "v1.0", tmp_path / "out")
    assert len(hub.requests()) == requests_before
    assert offline.commit_sha == first and not offline.network_used
    assert [(f.name, f.sha256) for f in offline.files] == [(f.name, f.sha256) for f in online.files]
    assert offline.license == "llama2"
    with pytest.raises(HubError, match="not in the cache") as err:
        pull(REPO, "main")  # never pulled
    assert "unset HF_HUB_OFFLINE" in err.value.hint


@pytest.mark.slow
def test_cli_offline_in_a_fresh_process(repo, hub, tmp_path):
    first, _ = repo
    pull(REPO, "v1.0")
    requests_before = len(hub.requests())
    proc = run_cli("pull", f"{REPO}@v1.0", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert first in proc.stdout and "from the cache, no network" in proc.stdout
    assert len(hub.requests()) == requests_before


@pytest.mark.slow
def test_resume_after_the_connection_drops(repo, hub, model_files):
    files, _ = model_files
    size = len(files["model.safetensors"])
    hub.drop_once["model.safetensors"] = RESUME_CHUNK + 1_000_000
    result = pull(REPO, "v1.0")
    gets = [r for r in hub.requests("cdn") if r["method"] == "GET" and r["file"] == "model.safetensors"]
    assert [r["status"] for r in gets] == [200, 206]
    assert gets[0]["dropped"] and gets[1]["range"] == f"bytes={RESUME_CHUNK}-"
    assert sum(r["sent"] for r in gets) < 2 * size  # continued, not started over
    assert {f.name: f.sha256 for f in result.files}["model.safetensors"] == sha256(files["model.safetensors"])


# -- errors: one line + hint, non-zero exit, nothing partial ----------------------------------------------------

@pytest.mark.slow
def test_gated_repo_needs_a_token(hub, model_files, tmp_path):
    files, _ = model_files
    hub.add_commit("org/gated", {n: files[n] for n in NEEDED})
    hub.gated["org/gated"] = {"hf_granted"}
    out = tmp_path / "out"
    err = assert_one_line_error(run_cli("pull", "org/gated", "-o", str(out)), 7, "gated", "--token", "HF_TOKEN")
    assert "needs a token" in err
    no_partial_output(out)
    err = assert_one_line_error(run_cli("pull", "org/gated", "-o", str(out), "--token", "hf_wrong"), 7, "gated")
    assert "not been granted access" in err
    assert [r["status"] for r in hub.requests("api")] == [401, 403]
    no_partial_output(out)
    ok = run_cli("pull", "org/gated", "-o", str(out), "--token", "hf_granted")
    assert ok.returncode == 0, ok.stderr
    assert {r["auth"] for r in hub.requests("file")} == {"Bearer hf_granted"}
    assert {r["auth"] for r in hub.requests("cdn")} == {None}  # the token never leaves the Hub for the CDN
    shutil.rmtree(out)
    assert run_cli("pull", "org/gated", "-o", str(out), env={"HF_TOKEN": "hf_granted"}).returncode == 0


@pytest.mark.slow
def test_missing_repo_and_revision(repo, hub, tmp_path):
    out = tmp_path / "out"
    assert_one_line_error(run_cli("pull", "org/missing", "-o", str(out)), 7, "org/missing not found", "--token")
    assert_one_line_error(run_cli("pull", f"{REPO}@v9", "-o", str(out)), 7, "revision 'v9' not found")
    with pytest.raises(HubError, match="not found"):
        pull("org/missing", token="hf_any")  # 404 (with a token) maps the same way as the anonymous 401
    no_partial_output(out)
    assert hub.downloaded() == []


@pytest.mark.slow
def test_checksum_mismatch_leaves_nothing(repo, hub, tmp_path, model_files):
    files, _ = model_files
    hub.corrupt.add("model.safetensors")
    out = tmp_path / "out"
    with pytest.raises(HubError, match="checksum mismatch for model.safetensors") as err:
        pull(REPO, "v1.0", out)
    assert "run the command again" in err.value.hint
    no_partial_output(out)
    blobs = Path(os.environ["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    assert not (blobs / sha256(files["model.safetensors"])).exists()  # the bad copy is not kept
    hub.corrupt.clear()
    result = pull(REPO, "v1.0", out)  # and the next attempt downloads it again, correctly
    assert (out / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert json.loads((out / MANIFEST).read_text())["commit_sha"] == result.commit_sha


def test_repo_without_safetensors_lists_what_it_has(hub, tmp_path):
    hub.add_commit("org/pickled", {"config.json": "{}", "pytorch_model.bin": b"x" * 64, "tokenizer.json": "{}"})
    out = tmp_path / "out"
    err = assert_one_line_error(run_cli("pull", "org/pickled", "-o", str(out)), 7, "no safetensors",
                                "config.json, pytorch_model.bin, tokenizer.json")
    assert "--include" in err
    no_partial_output(out)
    assert hub.downloaded() == []


@pytest.mark.slow
def test_unreachable_and_timeout_hint_offline(repo, hub, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(HubError, match="cannot reach") as err:
        pull(REPO, settings=HubSettings.from_env(endpoint=dead))
    assert "HF_HUB_OFFLINE=1" in err.value.hint and "needs a copy pulled earlier" in err.value.hint
    pull(REPO)  # now a cached copy exists: the hint says so
    with pytest.raises(HubError, match="cannot reach") as err:
        pull(REPO, None, tmp_path / "out", settings=HubSettings.from_env(endpoint=dead))
    assert f"cached copy (commit {repo[1][:12]})" in err.value.hint
    hub.stall_s = 2.0
    with pytest.raises(HubError, match="timed out") as err:
        pull(REPO, settings=HubSettings.from_env(timeout_s=0.3))
    assert "HF_HUB_OFFLINE=1" in err.value.hint
    no_partial_output(tmp_path / "out")


@pytest.mark.slow
def test_a_dripping_server_is_abandoned(repo, hub, tmp_path):
    """A server that sends a byte now and then never trips the per-read timeout; the stall window stops it."""
    hub.drip_s = 0.05
    started = time.monotonic()
    with pytest.raises(HubError, match="stalled") as err:
        pull(REPO, None, tmp_path / "out", settings=HubSettings.from_env(stall_s=1.0))
    assert time.monotonic() - started < 15 and "EDGEPACK_HUB_STALL_S" in err.value.hint
    no_partial_output(tmp_path / "out")


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unprivileged user+mount namespaces for a small tmpfs")
def test_disk_full(repo, hub, tmp_path):
    """HF_HOME on a real 4 MiB filesystem (tmpfs in a private mount namespace): the download cannot fit."""
    small = tmp_path / "small"
    small.mkdir()
    out = small / "out"
    script = (f"mount -t tmpfs -o size=4m tmpfs {small} && HF_HOME={small}/hf "
              f"{sys.executable} -m edgepack pull {REPO}@v1.0 -o {out}; rc=$?; "
              f"ls -A {small}/hf/hub/*/blobs 2>/dev/null | grep -c incomplete; ls -A {small}; exit $rc")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          env={**os.environ}, cwd=REPO_ROOT, timeout=120)
    assert_one_line_error(proc, 6, "not enough disk space", "HF_HOME")
    listing = proc.stdout.split()
    assert listing[0] == "0" and "out" not in listing and not [n for n in listing if n.startswith(".out.")]


@pytest.mark.slow
def test_existing_output_folder_is_not_clobbered(repo, hub, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty"):
        pull(REPO, "v1.0", out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    pull(REPO, "v1.0", out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(NEEDED | {MANIFEST})


# -- the acceptance runs through the CLI ------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_pull_fetches_only_needed_files_and_prints_the_commit(repo, hub, tmp_path):
    first, _ = repo
    out = tmp_path / "tiny"
    proc = run_cli("pull", f"{REPO}@v1.0", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"commit {first}" in proc.stdout and "licence: llama2" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(NEEDED | {MANIFEST})
    assert set(hub.downloaded()) == NEEDED
    as_json = json.loads(run_cli("pull", f"hf://{REPO}@v1.0", "--json").stdout)
    assert as_json["commit_sha"] == first and as_json["downloaded_bytes"] == 0
    # a pulled folder keeps its provenance when converted later
    folder, prov = resolve_source(out)
    assert folder == out and (prov.repo_id, prov.commit_sha, prov.license) == (REPO, first, "llama2")


@pytest.mark.slow
def test_cli_convert_from_a_hub_source(repo, hub, model_files, tmp_path):
    """`edgepack convert org/name@rev`: the GGUF carries repo id, commit and licence, and runs in llama.cpp
    with the logits transformers gives for the same weights."""
    first, _ = repo
    _, model = model_files
    out = tmp_path / "tiny.gguf"
    proc = run_cli("convert", f"{REPO}@v1.0", "-o", str(out), "--outtype", "f32", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reader = gguf.GGUFReader(out)

    def field(key: str) -> str:
        return reader.fields[key].contents()

    assert field("edgepack.source.repo_id") == REPO
    assert field("edgepack.source.commit") == first
    assert field("edgepack.source.revision") == "v1.0"
    assert field("edgepack.source.license") == "llama2"
    assert field("general.license") == "llama2"
    assert first in field("general.source.url")
    files = dict(zip(field("edgepack.source.files"), field("edgepack.source.sha256")))
    assert files["model.safetensors"] == sha256(model_files[0]["model.safetensors"])
    ids = [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889]
    max_abs, top1 = compare(hf_logits(model, ids), llama_cpp_logits(out, ids))
    assert max_abs <= 1e-4 and top1 == 1.0, (max_abs, top1)
    # no output name given: named after the repo, and an existing output is refused before any download
    requests_before = len(hub.requests())
    shutil.copy(out, tmp_path / "tiny-llama-F32.gguf")
    assert_one_line_error(run_cli("convert", f"hf://{REPO}@v1.0", "--outtype", "f32", cwd=tmp_path), 6,
                          "already exists")
    assert len(hub.requests()) == requests_before


def test_a_missing_local_path_that_looks_like_a_repo_id(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubError, match="models/llama is neither a local folder nor a repository on"):
        resolve_source("models/llama")
    with pytest.raises(HubError, match="repository models/llama not found"):
        resolve_source("hf://models/llama")


@pytest.mark.slow
def test_a_damaged_cache_is_caught_and_healed(repo, hub, model_files, monkeypatch):
    """Cached LFS blobs are named by their sha256: a damaged one is found without the network, evicted, and
    fetched again when the network is allowed."""
    first, _ = repo
    files, _ = model_files
    result = pull(REPO, first)
    blob = Path(os.path.realpath(result.folder / "model.safetensors"))
    blob.write_bytes(b"\0" * blob.stat().st_size)  # same size, wrong bytes
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="checksum mismatch for model.safetensors"):
        pull(REPO, first)
    assert not blob.exists()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    sent_before = hub.downloaded().count("model.safetensors")
    healed = pull(REPO, first)
    assert hub.downloaded().count("model.safetensors") == sent_before + 1
    assert (healed.folder / "model.safetensors").read_bytes() == files["model.safetensors"]


# -- hostile revisions (issue 13, finding 1) -------------------------------------------------------------------

SMALL_REPO = "org/small"
SMALL_FILES = {"config.json": b"{}", "model.safetensors": b"\0" * 64}


def files_outside(root: Path, cache: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and cache not in p.parents}


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_a_revision_is_never_a_path(hub, tmp_path, kind):
    """A revision names a branch, tag or commit. One that reads as a path is refused before any request, even
    when the endpoint answers it (it used to become refs/<revision> in the cache: a file written anywhere,
    holding the commit sha)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    revision = "../../../../escape" if kind == "relative" else str(victim)
    sha = hub.add_commit(SMALL_REPO, SMALL_FILES)
    hub.repos[SMALL_REPO].branches[revision] = sha  # a hostile (or broken) endpoint resolves it
    cache = Path(os.environ["HF_HOME"]) / "hub"
    before = files_outside(tmp_path, cache)
    with pytest.raises(UsageError, match="not a branch, tag or commit name"):
        pull(SMALL_REPO, revision)
    with pytest.raises(UsageError, match="not a branch, tag or commit name"):
        resolve_source(f"{SMALL_REPO}@{revision}")
    assert_one_line_error(run_cli("pull", f"{SMALL_REPO}@{revision}", "-o", str(tmp_path / "out")), 2,
                          "not a branch, tag or commit name")
    assert files_outside(tmp_path, cache) == before
    assert victim.read_text() == "precious"
    assert hub.requests() == [], "refused before any request"


def test_ordinary_revisions_are_accepted(hub):
    sha = hub.add_commit(SMALL_REPO, SMALL_FILES, tags=("v1.0-rc.1",))
    hub.repos[SMALL_REPO].branches["refs/pr/1"] = sha  # the Hub's pull-request refs hold slashes
    for revision in ("main", "v1.0-rc.1", "refs/pr/1", sha, sha[:7]):
        assert pull(SMALL_REPO, revision).commit_sha == sha
