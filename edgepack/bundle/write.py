"""Writing a bundle: the picked GGUF, its adapters (and projector), the report and ``manifest.json``, built in a
temp folder beside the target and renamed into place (``fileio.atomic_dir``), and its deterministic archive."""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path

from ..errors import BadGGUF, OutputError, UsageError
from ..fileio import atomic_dir, atomic_output, regular_files, sha256_file
from ..validate import safe_name
from .manifest import (ARCHIVE_SUFFIXES, MANIFEST, SCHEMA, SCHEMA_VERSION, ZIP_EPOCH, ZSTD_LEVEL, BundleAdapter,
                       BundleResult, gguf_facts, mmproj_facts, seal, template_audit, tool_versions)


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
    with atomic_dir(folder) as tmp:
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
            "chat_template_audit": template_audit(facts["chat_template"]),
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

