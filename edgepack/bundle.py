"""Bundles: one folder per device profile with the picked GGUF, its adapters, the report and a manifest.

``write_bundle`` copies the files into a temp folder beside the target, writes ``manifest.json`` (schema in
docs/manifest.md) and renames the folder into place, so a bundle is either complete or absent. Everything in
it is a pure function of its inputs: no timestamps, no absolute paths, sorted keys, so the same inputs give
byte-identical bundles (and archives: tar entries carry mtime 0 and root ownership, zip entries 1980-01-01).

``verify_bundle`` checks a bundle (folder, .tar.zst or .zip): the manifest's schema, every listed file's size
and sha256, that nothing unlisted is there, and that the GGUF (with each adapter) loads and evaluates a few
tokens in llama.cpp.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, limits
from . import gguf_keys as keys
from .errors import BadGGUF, EdgepackError, OutputError, UsageError, VerifyError
from .fileio import atomic_output, parse_json, regular_files, sha256_file
from .ggufheader import GGUFHeader, SkippedArray, read_header
from .validate import safe_name

SCHEMA = "edgepack.bundle"
SCHEMA_VERSION = 2  # 2: the manifest carries its own digest (integrity)
MANIFEST = "manifest.json"
ARCHIVE_SUFFIXES = {"tar.zst": ".tar.zst", "zip": ".zip"}
ZSTD_LEVEL = 10
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
INTEGRITY = "integrity"
INTEGRITY_COVERS = "every other key of manifest.json, as JSON with sorted keys, no whitespace, UTF-8"


@dataclass(frozen=True)
class BundleAdapter:
    """A LoRA adapter GGUF shipped with the model; ``scale`` is the strength to load it with."""

    name: str
    file: Path
    scale: float = 1.0
    mode: str = "convert"
    source_sha256: str | None = None  # content hash of the PEFT adapter it was converted from
    sha256: str | None = None  # the GGUF's own hash when it was made: checked on the copy that ships


@dataclass
class BundleResult:
    folder: Path
    manifest: dict
    archive: Path | None = None
    size_bytes: int = 0


@dataclass
class VerifyResult:
    bundle: Path
    n_files: int
    size_bytes: int
    model: str
    loaded: bool
    adapters_loaded: list[str] = field(default_factory=list)
    manifest_sha256: str = ""  # pins the whole bundle (the manifest lists every file's hash): `verify --expect`
    mmproj: str | None = None  # the multimodal projector's file, when the bundle has one


# --- facts ------------------------------------------------------------------------------------------

def _field(header: GGUFHeader, key: str):
    """A key's value; an array's length (a vocabulary is described by its size, not its tokens)."""
    value = header.get(key)
    if isinstance(value, SkippedArray):
        return value.length
    if isinstance(value, list):
        return len(value)
    return value


def gguf_facts(path: str | Path) -> dict:
    """Model, tokenizer and chat template facts from a GGUF's metadata (no tensors are read). Uses
    ``ggufheader``: gguf-py's reader builds every vocabulary entry and takes seconds, once per bundle."""
    header = read_header(path)
    arch = _field(header, "general.architecture")
    facts = {
        "architecture": arch,
        "name": _field(header, "general.name"),
        "license": _field(header, "general.license"),
        "file_type": _field(header, "general.file_type"),
        "context_length": _field(header, f"{arch}.context_length"),
        "n_layer": _field(header, f"{arch}.block_count"),
        "n_embd": _field(header, f"{arch}.embedding_length"),
        "n_params": header.n_params,
    }
    if _field(header, "quantize.imatrix.file") is not None:  # quantized with an importance matrix
        facts["imatrix"] = {key: _field(header, f"quantize.imatrix.{key}")
                            for key in ("file", "dataset", "entries_count", "chunks_count")}
        facts["imatrix"]["calibration_sha256"] = _field(header, keys.Quantize.IMATRIX_CALIBRATION)
    tokenizer = {
        "model": _field(header, "tokenizer.ggml.model"),
        "pre": _field(header, "tokenizer.ggml.pre"),
        "vocab_size": _field(header, "tokenizer.ggml.tokens"),
        "bos_token_id": _field(header, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(header, "tokenizer.ggml.eos_token_id"),
        "add_bos_token": _field(header, "tokenizer.ggml.add_bos_token"),
        "add_eos_token": _field(header, "tokenizer.ggml.add_eos_token"),
    }
    return {"model": facts, "tokenizer": tokenizer, "chat_template": _field(header, "tokenizer.chat_template")}


def mmproj_facts(path: Path) -> dict:
    """What a bundle's manifest says about a multimodal projector GGUF: its projector type (clip.cpp's graph),
    image size and the text embedding width it projects to. Raises ``BadGGUF`` for a file that is not one."""
    header = read_header(path)  # BadGGUF for what is not a GGUF
    if _field(header, "general.architecture") != "clip":
        raise BadGGUF(f"{path} is not a multimodal projector (general.architecture is "
                      f"{_field(header, 'general.architecture')!r}, not 'clip')",
                      "give the mmproj GGUF edgepack convert --mmproj wrote")
    # keys from llama.cpp's tools/mtmd/clip-impl.h
    return {"projector_type": _field(header, "clip.projector_type"),
            "image_size": _field(header, "clip.vision.image_size"),
            "projection_dim": _field(header, "clip.vision.projection_dim")}


def manifest_digest(manifest: dict) -> str:
    """sha256 over the manifest's canonical form (``INTEGRITY_COVERS``): what ``integrity.sha256`` records."""
    body = {k: v for k, v in manifest.items() if k != INTEGRITY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                          .encode("utf-8")).hexdigest()


def seal(manifest: dict) -> dict:
    """The manifest with its integrity digest. It makes an edit that does not also recompute the digest
    visible; anyone can recompute it, so it proves no origin (docs/security.md)."""
    return {**manifest, INTEGRITY: {"sha256": manifest_digest(manifest), "covers": INTEGRITY_COVERS}}


def _template_audit(template) -> dict | None:
    """The chat template's audit (``edgepack.chattemplate``) for the manifest. The GGUF was made by convert, which
    refused unsafe templates unless told otherwise, so here findings are recorded, not refused."""
    if not isinstance(template, str):
        return None
    from .chattemplate import audit

    return audit(template, allow_unsafe=True).to_json()


def tool_versions() -> dict:
    """edgepack, gguf-py and llama.cpp (llama-cpp-python's version and its build's system info)."""
    versions = {"edgepack": __version__}
    with contextlib.suppress(Exception):
        from importlib.metadata import version
        versions["gguf"] = version("gguf")
    try:
        import llama_cpp
        versions["llama_cpp_python"] = llama_cpp.__version__
        info = llama_cpp.llama_print_system_info()
        versions["llama_cpp_system_info"] = (info.decode() if isinstance(info, bytes) else str(info)).strip(" |")
    except ImportError:  # pragma: no cover - llama-cpp-python is a dependency
        versions["llama_cpp_python"] = None
    return versions


# --- writing ----------------------------------------------------------------------------------------

def _copy(src: Path, dst: Path) -> None:
    # A copy, never a hard link: a bundle is shipped and may be edited; the step cache must stay intact.
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def write_bundle(folder: str | Path, *, model: str | Path, quant: str, profile: dict, source: dict,
                 adapters: list[BundleAdapter] = (), extra_files: dict[str, str | Path] | None = None,
                 fit: dict | None = None, quality: dict | None = None, runtime: dict | None = None,
                 report: str | None = None, model_name: str | None = None, archive: str = "none",
                 model_sha256: str | None = None, mmproj: str | Path | None = None,
                 mmproj_sha256: str | None = None) -> BundleResult:
    """Write the bundle folder ``folder`` (replacing an older one) and optionally its archive beside it.

    ``model``: the picked GGUF. ``profile``: at least ``name``. ``source``: provenance (repo_id, revision,
    commit_sha, license, or for a local folder its name and content hash). ``extra_files``: {name in bundle:
    file}, e.g. the report. ``fit`` / ``quality`` / ``runtime``: figures copied into the manifest as given.
    ``model_sha256`` (and each adapter's ``sha256``): the hash recorded when the GGUF was made; the copy that
    ships is hashed anyway, and a mismatch (a damaged cache file) raises ``BadGGUF`` before anything is published.
    ``mmproj``: the model's multimodal projector GGUF (``edgepack convert --mmproj``), shipped as
    ``mmproj-<name>.gguf`` with role ``mmproj`` (``mmproj_sha256`` as ``model_sha256``).
    """
    folder = Path(folder)
    model = Path(model)
    if archive not in ("none", *ARCHIVE_SUFFIXES):
        raise UsageError(f"unknown archive kind {archive!r}", "choose none, tar.zst or zip")
    facts = gguf_facts(model)
    projector = mmproj_facts(Path(mmproj)) if mmproj else None
    name = model_name or facts["model"]["name"] or model.stem
    try:  # each becomes a file name in the bundle; a GGUF's general.name is a stranger's text
        for what, value in [("model name", name), ("quant", quant), *(("adapter name", a.name) for a in adapters)]:
            safe_name(value, what)
    except ValueError as exc:
        raise UsageError(str(exc), "give names that are one plain file name (letters, digits, '.', '_', '-')") from None
    model_file = f"{name}-{quant}.gguf"
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        _copy(model, tmp / model_file)
        model_sha = _check_copy(model, tmp / model_file, model_sha256)
        roles = {model_file: "model"}
        hashes = {model_file: model_sha}
        adapter_entries = []
        for a in adapters:
            rel = f"adapters/{a.name}.gguf"
            _copy(Path(a.file), tmp / rel)
            hashes[rel] = _check_copy(Path(a.file), tmp / rel, a.sha256)
            roles[rel] = "adapter"
            entry = {"name": a.name, "file": rel, "scale": a.scale, "mode": a.mode,
                     "base": {"file": model_file, "sha256": model_sha}}
            if a.source_sha256:
                entry["source_sha256"] = a.source_sha256
            adapter_entries.append(entry)
        mmproj_entry = None
        if projector is not None:
            rel = f"mmproj-{name}.gguf"
            _copy(Path(mmproj), tmp / rel)
            hashes[rel] = _check_copy(Path(mmproj), tmp / rel, mmproj_sha256)
            roles[rel] = "mmproj"
            mmproj_entry = {"file": rel, **projector, "base": {"file": model_file, "sha256": model_sha}}
        for rel, src in sorted((extra_files or {}).items()):
            _copy(Path(src), tmp / rel)
            roles[rel] = "report" if rel.startswith("report") else "extra"
        files = []
        for rel in sorted(roles):
            path = tmp / rel
            files.append({"path": rel, "role": roles[rel], "size_bytes": path.stat().st_size,
                          "sha256": hashes.get(rel) or sha256_file(path)})
        manifest = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "model": {"name": name, "file": model_file, "quant": quant, **{k: v for k, v in facts["model"].items()
                                                                              if k not in ("name",)}},
            "source": source,
            "license": source.get("license") or facts["model"].get("license"),
            "profile": profile,
            "files": files,
            "adapters": adapter_entries,
            "chat_template": facts["chat_template"],
            "chat_template_audit": _template_audit(facts["chat_template"]),
            "tokenizer": facts["tokenizer"],
            "runtime": runtime or {},
            "fit": fit or {},
            "quality": quality or {},
            "report": report,
            "tools": tool_versions(),
        }
        if mmproj_entry is not None:  # absent otherwise: text-only bundles stay byte-identical
            manifest["mmproj"] = mmproj_entry
        manifest = seal(manifest)
        text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = BundleResult(folder=folder, manifest=manifest,
                          size_bytes=sum(f["size_bytes"] for f in files) + len(text.encode()))
    stale = [folder.with_name(folder.name + s) for k, s in ARCHIVE_SUFFIXES.items() if k != archive]
    for path in stale:
        path.unlink(missing_ok=True)
    if archive != "none":
        result.archive = pack(folder, archive)
    return result


def _check_copy(src: Path, copy: Path, expected: str | None) -> str:
    """The copy's sha256, which must be ``expected`` (when given): what ships is what was made and measured."""
    digest = sha256_file(copy)
    if expected and digest != expected:
        error = BadGGUF(f"{src} changed after it was made: sha256 {digest[:12]}..., recorded {expected[:12]}...",
                        "the file is damaged; make it again (edgepack build redoes a damaged step)")
        error.path = src
        raise error
    return digest


def _replace_dir(tmp: Path, folder: Path) -> None:
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def _members(folder: Path) -> list[tuple[str, Path]]:
    try:
        return list(regular_files(folder).items())
    except ValueError as exc:  # edgepack writes regular files only: someone changed the folder
        raise OutputError(f"cannot pack {folder}: {exc}", "rebuild the bundle") from None


def pack(folder: str | Path, kind: str) -> Path:
    """A deterministic archive of ``folder`` beside it (``<folder>.tar.zst`` or ``<folder>.zip``)."""
    folder = Path(folder)
    out = folder.with_name(folder.name + ARCHIVE_SUFFIXES[kind])
    prefix = folder.name
    with atomic_output(out, "wb") as raw:
        if kind == "zip":
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for rel, path in _members(folder):
                    info = zipfile.ZipInfo(f"{prefix}/{rel}", date_time=ZIP_EPOCH)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    with open(path, "rb") as src, zf.open(info, "w") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        else:
            import zstandard
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=0)
            with cctx.stream_writer(raw, closefd=False) as zst, \
                    tarfile.open(fileobj=zst, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rel, path in _members(folder):
                    info = tarfile.TarInfo(f"{prefix}/{rel}")
                    info.size = path.stat().st_size
                    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
                    with open(path, "rb") as src:
                        tar.addfile(info, src)
    return out


# --- verifying --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _opened(bundle: Path):
    """Yield the bundle's folder, unpacking an archive into a temp folder first."""
    if bundle.is_dir():
        yield bundle
        return
    if not bundle.exists():
        raise VerifyError(f"{bundle} does not exist", "give a bundle folder, .tar.zst or .zip")
    with tempfile.TemporaryDirectory(prefix="edgepack-verify-") as tmp:
        try:
            if bundle.name.endswith(".zip"):
                with zipfile.ZipFile(bundle) as zf:
                    _safe_names(zf.namelist(), bundle)
                    zf.extractall(tmp)
            elif bundle.name.endswith(".tar.zst"):
                import zstandard
                with open(bundle, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zst, \
                        tarfile.open(fileobj=zst, mode="r|") as tar:
                    for member in tar:
                        _safe_names([member.name], bundle)
                        if not member.isfile():
                            raise VerifyError(f"{bundle}: {member.name} is not a plain file",
                                              "bundles hold plain files only")
                        target = Path(tmp) / member.name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with tar.extractfile(member) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
            else:
                raise VerifyError(f"{bundle} is not a bundle folder, .tar.zst or .zip", "give a bundle")
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise VerifyError(f"{bundle}: damaged archive ({exc})", "rebuild or re-download it") from None
        except Exception as exc:  # zstandard.ZstdError has no stable import path across versions
            if type(exc).__name__ == "ZstdError":
                raise VerifyError(f"{bundle}: damaged archive ({exc})", "rebuild or re-download it") from None
            raise
        roots = [p for p in Path(tmp).iterdir()]
        if len(roots) != 1 or not roots[0].is_dir():
            raise VerifyError(f"{bundle}: an archive must hold exactly one bundle folder", "rebuild it")
        yield roots[0]


def _safe_names(names: list[str], bundle: Path) -> None:
    for n in names:
        if n.startswith("/") or ".." in Path(n).parts:
            raise VerifyError(f"{bundle}: unsafe path {n!r} in the archive", "do not trust this archive")


def verify_bundle(bundle: str | Path, *, load: bool = True, n_threads: int = 2,
                  expect: str | None = None) -> VerifyResult:
    """Check ``bundle`` (folder or archive): only regular files inside it, the manifest's own digest, every
    file's size and sha256, no unlisted file, the manifest's facts against the GGUF, (``load``) that the GGUF and
    each adapter load and evaluate in llama.cpp, and (``expect``) that the manifest's sha256 is the one given.
    What this proves and what it cannot: docs/security.md. Raises ``VerifyError``."""
    bundle = Path(bundle)
    with _opened(bundle) as folder:
        empty: list[str] = []
        try:
            on_disk = regular_files(folder, empty)
        except ValueError as exc:
            raise VerifyError(f"{bundle}: {exc}", "a bundle holds only regular files and the folders around "
                                                  "them: do not trust this copy, rebuild or re-copy it") from None
        except OSError as exc:
            raise VerifyError(f"{bundle}: cannot read the bundle ({exc.strerror})", "check the path") from None
        if MANIFEST not in on_disk:
            raise VerifyError(f"{bundle}: no {MANIFEST}", "this is not an edgepack bundle, or it is incomplete")
        raw = on_disk[MANIFEST].read_bytes()
        manifest_sha = hashlib.sha256(raw).hexdigest()
        if expect is not None and manifest_sha != expect.strip().lower():
            raise VerifyError(f"{bundle}: {MANIFEST} has sha256 {manifest_sha}, not the expected {expect.strip()}",
                              "this is not the bundle that was built (or --expect names another one)")
        manifest = _read_verified_manifest(raw, bundle)
        listed = _listed_files(manifest, bundle)
        for rel, entry in listed.items():
            path = on_disk.get(rel)
            if path is None:
                raise VerifyError(f"{bundle}: {rel} is missing", "the bundle is incomplete: rebuild or re-copy it")
            size = path.stat().st_size
            if size != entry.get("size_bytes"):
                raise VerifyError(f"{bundle}: {rel} has {size} bytes, the manifest says {entry.get('size_bytes')}",
                                  "the file was truncated or changed: rebuild or re-copy the bundle")
            digest = sha256_file(path)
            if digest != entry.get("sha256"):
                raise VerifyError(f"{bundle}: {rel} sha256 {digest[:12]}... does not match the manifest "
                                  f"({str(entry.get('sha256'))[:12]}...)",
                                  "the file was changed or damaged: rebuild or re-copy the bundle")
        extra = sorted([rel for rel in on_disk if rel != MANIFEST and rel not in listed] + empty)
        if extra:
            raise VerifyError(f"{bundle}: {extra[0]} is not listed in the manifest"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""),
                              "bundles hold only the files their manifest lists: remove it or rebuild")
        model_rel, adapters = _model_and_adapters(manifest, listed, bundle)
        _check_facts(manifest, on_disk[model_rel], bundle)
        mmproj_rel = _checked_mmproj(manifest, listed, on_disk, model_rel, bundle)
        loaded: list[str] = []
        if load:
            plain = _load_check(on_disk[model_rel], None, 1.0, n_threads, bundle)
            for a in adapters:
                adapted = _load_check(on_disk[model_rel], on_disk[a["file"]], float(a.get("scale", 1.0)), n_threads,
                                      bundle)
                if (adapted == plain).all():
                    raise VerifyError(f"{bundle}: adapter {a['name']} does not change the model's output",
                                      "the adapter GGUF does not apply to this model: rebuild the bundle")
                loaded.append(a["name"])
            if mmproj_rel:
                _mmproj_load_check(on_disk[model_rel], on_disk[mmproj_rel], n_threads, bundle)
        return VerifyResult(bundle=bundle, n_files=len(listed), model=model_rel, loaded=load,
                            size_bytes=sum(int(e["size_bytes"]) for e in listed.values()), adapters_loaded=loaded,
                            manifest_sha256=manifest_sha, mmproj=mmproj_rel)


_UNTRUSTED = "do not trust this bundle: rebuild it or get it again from its source"


def _read_verified_manifest(raw: bytes, bundle: Path) -> dict:
    """The parsed manifest, of this schema version, whose integrity digest matches its content."""
    manifest = parse_json(raw, f"{bundle}: {MANIFEST}", VerifyError, "the bundle is damaged")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise VerifyError(f"{bundle}: {MANIFEST} is not an edgepack bundle manifest", "the bundle is damaged")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise VerifyError(f"{bundle}: manifest schema version {manifest.get('schema_version')!r} is not "
                          f"{SCHEMA_VERSION}", "use the edgepack version that wrote it, or rebuild the bundle")
    recorded = manifest.get(INTEGRITY)
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        raise VerifyError(f"{bundle}: {MANIFEST} has no integrity digest", _UNTRUSTED)
    if manifest_digest(manifest) != recorded["sha256"]:
        raise VerifyError(f"{bundle}: {MANIFEST} was edited after it was written (its content does not match its "
                          f"integrity digest)", _UNTRUSTED)
    return manifest


def _plain_relative(rel) -> bool:
    """A path the way the writer records one: relative, '/'-separated, no empty, '.' or '..' part."""
    return (isinstance(rel, str) and bool(rel) and "\\" not in rel and not rel.startswith("/")
            and all(part not in ("", ".", "..") for part in rel.split("/")))


def _listed_files(manifest: dict, bundle: Path) -> dict[str, dict]:
    files = manifest.get("files")
    if not isinstance(files, list):
        raise VerifyError(f"{bundle}: the manifest's files is not a list", _UNTRUSTED)
    listed = {}
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not _plain_relative(rel) or rel == MANIFEST:
            raise VerifyError(f"{bundle}: unsafe path {rel!r} in the manifest", _UNTRUSTED)
        listed[rel] = entry
    return listed


def _model_and_adapters(manifest: dict, listed: dict[str, dict], bundle: Path) -> tuple[str, list[dict]]:
    """The model file and the adapter entries, each naming a listed file of its role (nothing outside)."""
    model = manifest.get("model")
    model_rel = model.get("file") if isinstance(model, dict) else None
    if model_rel not in listed or listed[model_rel].get("role") != "model":
        raise VerifyError(f"{bundle}: the manifest's model file {model_rel!r} is not a listed model file", _UNTRUSTED)
    adapters = manifest.get("adapters", [])
    if not isinstance(adapters, list):
        raise VerifyError(f"{bundle}: the manifest's adapters is not a list", _UNTRUSTED)
    for a in adapters:
        if not isinstance(a, dict):
            raise VerifyError(f"{bundle}: an adapter entry is not an object", _UNTRUSTED)
        rel = a.get("file")
        if rel not in listed or listed[rel].get("role") != "adapter":
            raise VerifyError(f"{bundle}: adapter {a.get('name')!r} names {rel!r}, which is not a listed adapter "
                              "file of the bundle", _UNTRUSTED)
        scale = a.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise VerifyError(f"{bundle}: adapter {a.get('name')!r} has scale {scale!r}", _UNTRUSTED)
        base = a.get("base")
        if not isinstance(base, dict) or base.get("sha256") != listed[model_rel].get("sha256"):
            raise VerifyError(f"{bundle}: adapter {a.get('name')!r} was made for another model than {model_rel}",
                              _UNTRUSTED)
    return model_rel, adapters


def _checked_mmproj(manifest: dict, listed: dict[str, dict], on_disk: dict[str, Path], model_rel: str,
                    bundle: Path) -> str | None:
    """The projector's file when the manifest names one: a listed file of role mmproj, made for this model,
    whose GGUF says what the manifest claims and projects to the model's embedding width."""
    entry = manifest.get("mmproj")
    if entry is None:
        return None
    rel = entry.get("file") if isinstance(entry, dict) else None
    if rel not in listed or listed[rel].get("role") != "mmproj":
        raise VerifyError(f"{bundle}: the manifest's mmproj file {rel!r} is not a listed mmproj file", _UNTRUSTED)
    base = entry.get("base")
    if not isinstance(base, dict) or base.get("sha256") != listed[model_rel].get("sha256"):
        raise VerifyError(f"{bundle}: the projector {rel} was made for another model than {model_rel}", _UNTRUSTED)
    try:
        actual = mmproj_facts(on_disk[rel])
    except BadGGUF as exc:
        raise VerifyError(f"{bundle}: {exc.message}", "the projector is damaged: rebuild the bundle") from None
    for key, value in actual.items():
        if entry.get(key) != value:
            raise VerifyError(f"{bundle}: the manifest's mmproj.{key} ({_short(entry.get(key))}) is not the "
                              f"projector's ({_short(value)})", _UNTRUSTED)
    n_embd = gguf_facts(on_disk[model_rel])["model"].get("n_embd")
    if actual["projection_dim"] != n_embd:
        raise VerifyError(f"{bundle}: the projector {rel} projects to {actual['projection_dim']} wide embeddings, "
                          f"the model's are {n_embd}", "the projector belongs to another model: rebuild the bundle")
    return rel


def _mmproj_load_check(model: Path, mmproj: Path, n_threads: int, bundle: Path) -> None:
    """libmtmd loads the projector beside the model and encodes a small non-square image to finite embeddings."""
    import numpy as np

    from .mtmd import image_embeddings

    y, x = np.mgrid[0:24, 0:32]
    image = np.stack([x * 8, y * 10, (x + y) * 4], axis=-1).astype(np.uint8)
    try:
        with _quiet_stderr():
            embeddings = image_embeddings(model, mmproj, image, n_threads=n_threads)
    except BadGGUF as exc:
        raise VerifyError(f"{bundle}: {exc.message}", exc.hint) from None
    if not embeddings.size or not np.isfinite(embeddings).all():
        raise VerifyError(f"{bundle}: the projector {mmproj.name} gives no or non-finite image embeddings",
                          "the projector's weights are damaged: rebuild the bundle")


def _check_facts(manifest: dict, model: Path, bundle: Path) -> None:
    """The manifest's model, tokenizer, chat template and licence facts are the GGUF's own."""
    try:
        facts = gguf_facts(model)
    except BadGGUF as exc:  # truncated or garbled: read_header says where, in one line
        raise VerifyError(f"{bundle}: cannot read the GGUF metadata of {model.name} ({exc})",
                          "the GGUF is damaged: rebuild the bundle") from None
    claimed_model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    pairs = [(f"model.{k}", claimed_model.get(k), v) for k, v in facts["model"].items() if k != "name"]
    claimed_tok = manifest.get("tokenizer") if isinstance(manifest.get("tokenizer"), dict) else {}
    pairs += [(f"tokenizer.{k}", claimed_tok.get(k), v) for k, v in facts["tokenizer"].items()]
    pairs.append(("chat_template", manifest.get("chat_template"), facts["chat_template"]))
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    pairs.append(("license", manifest.get("license"), source.get("license") or facts["model"]["license"]))
    for key, claimed, actual in pairs:
        if claimed != actual:
            raise VerifyError(f"{bundle}: the manifest's {key} ({_short(claimed)}) is not the GGUF's "
                              f"({_short(actual)})", _UNTRUSTED)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _load_check(model: Path, adapter: Path | None, scale: float, n_threads: int, bundle: Path):
    """Load the model (and adapter) in llama.cpp and evaluate a few tokens; the logits must be finite.

    The load runs in a child process (``edgepack.isolate``): a bundle may come from anyone, and some damage makes
    llama.cpp abort the whole process; here that becomes one ``VerifyError`` line."""
    import numpy as np

    from . import isolate

    what = f"{model.name}" + (f" with adapter {adapter.name}" if adapter else "")
    logits = isolate.call("edgepack.bundle:load_logits", str(model), str(adapter) if adapter else None, scale,
                          limits.threads(n_threads, "--threads") or 1, what=f"{bundle}: {what}",
                          error_type=VerifyError, hint="the GGUF is damaged or needs a newer llama.cpp")
    logits = np.asarray(logits, dtype=np.float32)
    if not np.isfinite(logits).all():
        raise VerifyError(f"{bundle}: {what} gives non-finite logits in llama.cpp", "the weights are damaged")
    return logits


def load_logits(model: str, adapter: str | None, scale: float, n_threads: int) -> list[float]:
    """Child-process side of ``_load_check``: the last position's logits for a short prompt."""
    import llama_cpp

    from .loadcheck import check_loadable

    try:
        check_loadable(model)
        kwargs = {"lora_path": adapter, "lora_scale": scale} if adapter else {}
        with _quiet_stderr():
            llm = llama_cpp.Llama(model_path=model, n_ctx=64, n_batch=64, n_threads=n_threads,
                                  verbose=False, logits_all=True, **kwargs)
            tokens = llm.tokenize(b"Hello there", add_bos=True)
            llm.eval(tokens)
            logits = [float(x) for x in llm.scores[len(tokens) - 1]]
            llm.close()
    except EdgepackError as exc:
        raise VerifyError(f"llama.cpp cannot load {Path(model).name}: {exc.message}", exc.hint) from None
    except Exception as exc:
        raise VerifyError(f"llama.cpp cannot load {Path(model).name} ({exc})",
                          "the GGUF is damaged or needs a newer llama.cpp") from None
    return logits


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp logs to fd 2 while loading; keep the CLI's one-line error promise."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def bundle_hash(folder: str | Path) -> str:
    """sha256 over the manifest (which holds every file's hash): one identifier for a whole bundle."""
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def read_manifest(folder: str | Path) -> dict:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"cannot read {Path(folder) / MANIFEST}: {exc}", "rebuild the bundle") from None


__all__ = ["BundleAdapter", "BundleResult", "VerifyResult", "write_bundle", "pack", "verify_bundle", "gguf_facts",
           "tool_versions", "bundle_hash", "read_manifest", "seal", "manifest_digest", "SCHEMA", "SCHEMA_VERSION",
           "MANIFEST"]
