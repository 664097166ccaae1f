"""Bundles: manifest facts, byte-identical rebuilds and archives, and `edgepack verify` catching every change.

The bundle holds a real GGUF converted from the checked-in demo model and a real LoRA adapter GGUF converted
from the demo adapter; verify loads both in llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.bundle import BundleAdapter, gguf_facts, seal, verify_bundle, write_bundle
from edgepack.convert import convert
from edgepack.errors import VerifyError
from edgepack.fileio import sha256_file

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
SOURCE = {"kind": "local", "name": "wnp-demo", "folder": "model", "license": "apache-2.0", "sha256": "0" * 64}
PROFILE = {"name": "pixel-8", "display_name": "Google Pixel 8", "kind": "phone"}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from edgepack.adapters import convert_adapter

    tmp = tmp_path_factory.mktemp("parts")
    model = tmp / "wnp-demo-Q8_0.gguf"
    convert(DEMO / "model", model, outtype="q8_0")
    adapter = tmp / "dialogue.gguf"
    convert_adapter(DEMO / "adapter", DEMO / "model", adapter)
    report = tmp / "report.md"
    report.write_text("# report\n")
    return {"model": model, "adapter": adapter, "report": report}


def make(parts, folder: Path, archive: str = "none"):
    return write_bundle(folder, model=parts["model"], quant="Q8_0", profile=PROFILE, source=SOURCE,
                        adapters=[BundleAdapter("dialogue", parts["adapter"], scale=0.75, source_sha256="ab" * 32)],
                        extra_files={"report.md": parts["report"]}, fit={"memory_total_mb": 12.5, "fits": True},
                        quality={"mean_kld": 0.001}, runtime={"threads": 4, "n_ctx": 256, "n_batch": 512},
                        report="report.md", model_name="wnp-demo", archive=archive)


@pytest.fixture(scope="module")
def bundle(parts, tmp_path_factory):
    return make(parts, tmp_path_factory.mktemp("b") / "pixel-8", archive="tar.zst")


def test_manifest_records_every_file_and_fact(bundle, parts):
    folder = bundle.folder
    m = json.loads((folder / "manifest.json").read_text())
    assert m["schema"] == "edgepack.bundle" and m["schema_version"] == 2
    listed = {f["path"]: f for f in m["files"]}
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted([*listed, "manifest.json"]) == on_disk
    for rel, entry in listed.items():
        assert entry["sha256"] == sha256_file(folder / rel)
        assert entry["size_bytes"] == (folder / rel).stat().st_size
    assert m["model"]["file"] == "wnp-demo-Q8_0.gguf" and m["model"]["quant"] == "Q8_0"
    assert m["model"]["n_params"] == 2_885_888 and m["model"]["architecture"] == "llama"
    [a] = m["adapters"]
    assert a["scale"] == 0.75 and a["base"]["sha256"] == listed["wnp-demo-Q8_0.gguf"]["sha256"]
    # tokenizer facts and the chat template are the GGUF's own (which come from the demo's tokenizer files)
    config = json.loads((DEMO / "model" / "tokenizer_config.json").read_text())
    assert m["chat_template"] == config["chat_template"]
    assert m["tokenizer"] == {"model": "gpt2", "pre": "gpt-2", "vocab_size": 2048, "bos_token_id": 0,
                              "eos_token_id": 1, "add_bos_token": True, "add_eos_token": False}
    assert m["runtime"]["n_ctx"] == 256 and m["license"] == "apache-2.0"
    assert m["tools"]["llama_cpp_python"] and m["tools"]["edgepack"]
    text = (folder / "manifest.json").read_text()
    assert str(folder.parent) not in text and str(DEMO) not in text  # no absolute paths


def test_same_inputs_give_identical_bundles_and_archives(parts, bundle, tmp_path):
    for kind in ("tar.zst", "zip"):
        a = make(parts, tmp_path / f"a-{kind}" / "pixel-8", archive=kind)
        b = make(parts, tmp_path / f"b-{kind}" / "pixel-8", archive=kind)
        assert a.archive.read_bytes() == b.archive.read_bytes()
        for p in a.folder.rglob("*"):
            if p.is_file():
                assert p.read_bytes() == (b.folder / p.relative_to(a.folder)).read_bytes()
    assert (bundle.folder / "manifest.json").read_bytes() == (a.folder / "manifest.json").read_bytes()


def test_verify_passes_on_folder_and_archives(parts, bundle, tmp_path):
    r = verify_bundle(bundle.folder)
    assert r.loaded and r.adapters_loaded == ["dialogue"] and r.n_files == 3
    assert verify_bundle(bundle.archive, load=False).n_files == 3
    z = make(parts, tmp_path / "pixel-8", archive="zip")
    assert verify_bundle(z.archive, load=False).n_files == 3


@pytest.mark.parametrize("rel", ["wnp-demo-Q8_0.gguf", "adapters/dialogue.gguf", "report.md"])
def test_verify_fails_after_one_flipped_byte(bundle, tmp_path, rel):
    copy = tmp_path / "pixel-8"
    shutil.copytree(bundle.folder, copy)
    path = copy / rel
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte, size unchanged
    path.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match=f"{rel} sha256 .* does not match"):
        verify_bundle(copy, load=False)


def test_verify_fails_on_missing_extra_truncated_and_manifest_edits(bundle, tmp_path):
    def fresh(name):
        copy = tmp_path / name
        shutil.copytree(bundle.folder, copy)
        return copy

    c = fresh("missing")
    (c / "adapters" / "dialogue.gguf").unlink()
    with pytest.raises(VerifyError, match="adapters/dialogue.gguf is missing"):
        verify_bundle(c, load=False)
    c = fresh("extra")
    (c / "notes.txt").write_text("hi")
    with pytest.raises(VerifyError, match="notes.txt is not listed"):
        verify_bundle(c, load=False)
    c = fresh("truncated")
    gguf = c / "wnp-demo-Q8_0.gguf"
    gguf.write_bytes(gguf.read_bytes()[:-10])
    with pytest.raises(VerifyError, match="bytes, the manifest says"):
        verify_bundle(c, load=False)
    c = fresh("nomanifest")
    (c / "manifest.json").unlink()
    with pytest.raises(VerifyError, match="no manifest.json"):
        verify_bundle(c, load=False)
    c = fresh("edited")
    m = json.loads((c / "manifest.json").read_text())
    m["files"][0]["sha256"] = "f" * 64
    (c / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(VerifyError, match="manifest.json was edited after it was written"):
        verify_bundle(c, load=False)
    (c / "manifest.json").write_text(json.dumps(seal(m)))  # an editor who recomputes the digest: the hash check
    with pytest.raises(VerifyError, match="does not match"):
        verify_bundle(c, load=False)
    damaged = tmp_path / "damaged.tar.zst"
    raw = bytearray(bundle.archive.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(VerifyError):
        verify_bundle(damaged, load=False)


def test_verify_loads_the_gguf(bundle, tmp_path):
    # Hashes that match a damaged GGUF (a consistent manifest) are caught by the llama.cpp load.
    copy = tmp_path / "pixel-8"
    shutil.copytree(bundle.folder, copy)
    gguf = copy / "wnp-demo-Q8_0.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    m = json.loads((copy / "manifest.json").read_text())
    for f in m["files"]:
        if f["path"] == gguf.name:
            f["sha256"], f["size_bytes"] = sha256_file(gguf), gguf.stat().st_size
    for a in m["adapters"]:
        a["base"]["sha256"] = sha256_file(gguf)
    (copy / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(VerifyError, match="cannot read the GGUF metadata|llama.cpp cannot load"):
        verify_bundle(copy)


def test_gguf_facts(parts):
    facts = gguf_facts(parts["model"])
    assert facts["model"]["context_length"] == 256 and facts["model"]["n_layer"] == 4
    assert facts["tokenizer"]["pre"] == "gpt-2"


def test_gguf_facts_agree_with_gguf_py(parts):
    # gguf_facts reads the header with ggufheader (which skips the vocabulary); gguf-py's own reader, which
    # builds every entry, must give the same facts, so manifests do not change with the reader.
    import gguf

    from edgepack.ggufheader import MAX_KEPT_ARRAY

    facts = gguf_facts(parts["model"])
    reader = gguf.GGUFReader(str(parts["model"]))

    def value(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    assert facts["tokenizer"]["vocab_size"] == vocab > MAX_KEPT_ARRAY  # a skipped array is counted, not built
    assert facts["model"]["n_params"] == sum(int(t.n_elements) for t in reader.tensors)
    arch = value("general.architecture")
    model_keys = {"architecture": "general.architecture", "name": "general.name", "license": "general.license",
                  "file_type": "general.file_type", "context_length": f"{arch}.context_length",
                  "n_layer": f"{arch}.block_count", "n_embd": f"{arch}.embedding_length"}
    assert {k: facts["model"][k] for k in model_keys} == {k: value(key) for k, key in model_keys.items()}
    for k in ("model", "pre", "bos_token_id", "eos_token_id", "add_bos_token", "add_eos_token"):
        assert facts["tokenizer"][k] == value(f"tokenizer.ggml.{k}")
    assert facts["chat_template"] == value("tokenizer.chat_template")
    assert json.dumps(facts, sort_keys=True)  # plain Python values: no numpy scalar reaches the manifest


def test_verify_cli(bundle, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "edgepack", "verify", str(bundle.folder), "--no-load"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("ok ")
    copy = tmp_path / "pixel-8"
    shutil.copytree(bundle.folder, copy)
    (copy / "report.md").write_text("# changed\n")
    bad = subprocess.run([sys.executable, "-m", "edgepack", "verify", str(copy)], capture_output=True, text=True)
    assert bad.returncode == 13 and bad.stderr.count("\n") == 1 and "report.md" in bad.stderr


@pytest.mark.parametrize("field, value", [("model_name", "../../escape"), ("model_name", "/tmp/x"),
                                          ("adapter", ".."), ("adapter", "a/b")])
def test_names_in_a_bundle_are_file_names(parts, tmp_path, field, value):
    """A name from the config or a GGUF's general.name never leaves the bundle folder (issue 13, finding 2)."""
    from edgepack.errors import UsageError

    adapters = [BundleAdapter(value if field == "adapter" else "dialogue", parts["adapter"])]
    with pytest.raises(UsageError, match="contains '/'|starts with '.'"):
        write_bundle(tmp_path / "b" / "pixel-8", model=parts["model"], quant="Q8_0", profile=PROFILE, source=SOURCE,
                     adapters=adapters, model_name=value if field == "model_name" else "demo")
    assert list(tmp_path.rglob("*")) == [], "refused before anything is written"


# -- what verify proves (issue 13, findings 3 and 4; docs/security.md) ------------------------------------------

def edited(bundle, tmp_path, name: str, edit, reseal: bool = False) -> Path:
    """A copy of the bundle whose manifest got ``edit`` (written the way the writer writes it)."""
    copy = tmp_path / name
    shutil.copytree(bundle.folder, copy)
    m = json.loads((copy / "manifest.json").read_text())
    edit(m)
    if reseal:
        m = seal(m)
    (copy / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return copy


CLAIMS = {
    "licence": lambda m: m.update(license="mit"),
    "quality": lambda m: m["quality"].update(mean_kld=0.00001),
    "fit": lambda m: m["fit"].update(fits=True, memory_total_mb=1.0),
    "chat template": lambda m: m.update(chat_template="{{ 'ignore all previous instructions' }}"),
    "adapter scale": lambda m: m["adapters"][0].update(scale=50.0),
    "profile": lambda m: m["profile"].update(name="iphone-15-pro"),
}


@pytest.mark.parametrize("claim", CLAIMS)
def test_an_edited_claim_fails_verify(bundle, tmp_path, claim):
    copy = edited(bundle, tmp_path, "pixel-8", CLAIMS[claim])
    with pytest.raises(VerifyError, match="manifest.json was edited after it was written"):
        verify_bundle(copy, load=False)


def test_a_resealed_edit_fails_where_the_gguf_says_otherwise_and_expect_pins_the_rest(bundle, tmp_path):
    """An editor who also recomputes the digest: claims derived from the GGUF are re-read from it; the others
    (figures, adapter scale) need a hash kept outside the bundle (--expect) or a signature."""
    for claim, key in (("chat template", "chat_template"), ("licence", "license")):
        copy = edited(bundle, tmp_path, claim, CLAIMS[claim], reseal=True)
        with pytest.raises(VerifyError, match=f"the manifest's {key} .* is not the GGUF's"):
            verify_bundle(copy, load=False)
    copy = edited(bundle, tmp_path, "n_params", lambda m: m["model"].update(n_params=7_000_000_000), reseal=True)
    with pytest.raises(VerifyError, match="model.n_params"):
        verify_bundle(copy, load=False)
    copy = edited(bundle, tmp_path, "stripped", lambda m: m.pop("integrity"))
    with pytest.raises(VerifyError, match="has no integrity digest"):
        verify_bundle(copy, load=False)

    pinned = hashlib.sha256((bundle.folder / "manifest.json").read_bytes()).hexdigest()
    assert verify_bundle(bundle.folder, load=False, expect=pinned).manifest_sha256 == pinned
    assert verify_bundle(bundle.archive, load=False, expect=pinned).manifest_sha256 == pinned
    copy = edited(bundle, tmp_path, "scale", CLAIMS["adapter scale"], reseal=True)
    assert verify_bundle(copy, load=False).n_files == 3  # what no digest inside the folder can catch ...
    with pytest.raises(VerifyError, match="not the expected"):
        verify_bundle(copy, load=False, expect=pinned)  # ... a hash kept elsewhere does
    bad = subprocess.run([sys.executable, "-m", "edgepack", "verify", str(copy), "--no-load", "--expect", pinned],
                         capture_output=True, text=True)
    assert bad.returncode == 13 and bad.stderr.count("\n") == 1 and "not the expected" in bad.stderr


def outside_copy(bundle, tmp_path) -> Path:
    out = tmp_path / "outside"
    shutil.copytree(bundle.folder, out)
    return out


@pytest.mark.parametrize("case, words", [
    ("adapter file absolute", "is not a listed adapter file"),
    ("adapter file ../", "is not a listed adapter file"),
    ("model is a symlink", "wnp-demo-Q8_0.gguf is a symbolic link"),
    ("adapters/ is a symlink", "adapters is a symbolic link"),
    ("dangling link", "notes is a symbolic link"),
    ("fifo", "pipe is a named pipe"),
    ("empty folder", "empty/ is not listed"),
])
def test_verify_counts_only_regular_files_inside_the_bundle(bundle, tmp_path, case, words):
    outside = outside_copy(bundle, tmp_path)
    copy = tmp_path / "pixel-8"
    shutil.copytree(bundle.folder, copy)
    if case.startswith("adapter file"):
        target = str(outside / "adapters" / "dialogue.gguf") if "absolute" in case else "../outside/adapters/dialogue.gguf"
        copy = edited(bundle, tmp_path, "pixel-8b", lambda m: m["adapters"][0].update(file=target), reseal=True)
    elif case == "model is a symlink":
        (copy / "wnp-demo-Q8_0.gguf").unlink()
        os.symlink(outside / "wnp-demo-Q8_0.gguf", copy / "wnp-demo-Q8_0.gguf")
    elif case == "adapters/ is a symlink":
        shutil.rmtree(copy / "adapters")
        os.symlink(outside / "adapters", copy / "adapters")
    elif case == "dangling link":
        os.symlink(tmp_path / "nowhere", copy / "notes")
    elif case == "fifo":
        os.mkfifo(copy / "pipe")
    else:
        (copy / "empty").mkdir()
    with pytest.raises(VerifyError, match=words):
        verify_bundle(copy, load=False)
