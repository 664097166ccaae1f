"""A bundle's manifest: its schema, the facts it records about a GGUF (read from the header, no tensors), its
integrity digest, and the tool versions. Written by ``write.py``, checked by ``verify.py``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .. import gguf_keys as keys
from ..errors import BadGGUF, OutputError
from ..ggufheader import GGUFHeader, SkippedArray, read_header
from ..hostfacts import tool_versions  # noqa: F401  (the manifest's "tools"; bundle's API)

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


def template_audit(template) -> dict | None:
    """The chat template's audit (``edgepack.chattemplate``) for the manifest. The GGUF was made by convert, which
    refused unsafe templates unless told otherwise, so here findings are recorded, not refused."""
    if not isinstance(template, str):
        return None
    from ..chattemplate import audit

    return audit(template, allow_unsafe=True).to_json()


def bundle_hash(folder: str | Path) -> str:
    """sha256 over the manifest (which holds every file's hash): one identifier for a whole bundle."""
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def read_manifest(folder: str | Path) -> dict:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"cannot read {Path(folder) / MANIFEST}: {exc}", "rebuild the bundle") from None


