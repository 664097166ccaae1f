"""Verifying a bundle (folder, .tar.zst or .zip): the manifest's schema and digest, every listed file's size and
sha256, nothing unlisted, the manifest's facts against the GGUF, and (optionally) that the GGUF, each adapter and
the projector load and evaluate in llama.cpp, in a child process."""

from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .. import limits
from ..errors import BadGGUF, EdgepackError, VerifyError
from ..fileio import parse_json, regular_files, sha256_file
from ..loadcheck import quiet_stderr
from .manifest import INTEGRITY, MANIFEST, SCHEMA, SCHEMA_VERSION, gguf_facts, manifest_digest, mmproj_facts


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

    from ..mtmd import image_embeddings

    y, x = np.mgrid[0:24, 0:32]
    image = np.stack([x * 8, y * 10, (x + y) * 4], axis=-1).astype(np.uint8)
    try:
        with quiet_stderr():
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

    from .. import isolate

    what = f"{model.name}" + (f" with adapter {adapter.name}" if adapter else "")
    logits = isolate.call(load_logits, str(model), str(adapter) if adapter else None, scale,
                          limits.threads(n_threads, "--threads") or 1, what=f"{bundle}: {what}",
                          error_type=VerifyError, hint="the GGUF is damaged or needs a newer llama.cpp")
    logits = np.asarray(logits, dtype=np.float32)
    if not np.isfinite(logits).all():
        raise VerifyError(f"{bundle}: {what} gives non-finite logits in llama.cpp", "the weights are damaged")
    return logits


def load_logits(model: str, adapter: str | None, scale: float, n_threads: int) -> list[float]:
    """Child-process side of ``_load_check``: the last position's logits for a short prompt."""
    import llama_cpp

    from ..loadcheck import check_loadable

    try:
        check_loadable(model)
        kwargs = {"lora_path": adapter, "lora_scale": scale} if adapter else {}
        with quiet_stderr():
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

