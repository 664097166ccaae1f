"""Fetch a model from the Hugging Face Hub, pinned to a commit, with only the files conversion needs.

``pull(repo_id, revision, out_dir)`` resolves the revision (branch, tag, short or full sha) to the full
commit sha with the Hub's model-info call, picks the files edgepack reads (config, safetensors weights, the
tokenizer, chat template, adapter files, README and LICENSE), downloads them with huggingface_hub's own
``snapshot_download`` into the standard cache (``HF_HOME`` / ``HF_HUB_CACHE``), checks every file against
the sizes and hashes the Hub published (sha256 for LFS files, git blob sha1 for the others), and optionally
copies them into a plain folder. What a user types as a model source is read by ``edgepack.source``; the
fetching itself (network or cache, checksums, error translation) is in ``edgepack.hubfetch``.

Settings come from the environment the way huggingface_hub documents them (``HF_ENDPOINT``, ``HF_TOKEN``,
``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``) and are read once per call (``HubSettings.from_env``),
then passed to the client explicitly: the client itself reads them only at import time.

Re-runs: a pinned full sha that is complete in the cache needs no network at all; a branch or tag costs one
model-info request and no file transfer. An interrupted file download is resumed by the client with a
``Range`` request while the process runs; files completed before an interruption are kept in the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import HubError, OutputError, UsageError
from .fileio import atomic_dir, disk_full
from .hubfetch import FULL_SHA, Context, PullResult, check_space, from_cache, from_hub
from .progress import QUIET, Progress
from .source import check_repo, read_license

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
MANIFEST = ".edgepack-pull.json"  # written into ``pull -o DIR`` folders: what was pulled, from where

_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubSettings:
    """Where to talk to and where to cache, resolved once from arguments and the environment."""

    endpoint: str
    cache_dir: Path
    token: str | None
    offline: bool
    timeout_s: float
    # A download that receives less than MIN_STALL_BYTES in this many seconds is abandoned: a server that drips
    # a byte now and then never trips the per-read timeout above (EDGEPACK_HUB_STALL_S).
    stall_s: float = 60.0

    @classmethod
    def from_env(cls, *, endpoint: str | None = None, cache_dir: str | os.PathLike | None = None,
                 token: str | None = None, offline: bool | None = None,
                 timeout_s: float | None = None, stall_s: float | None = None) -> HubSettings:
        env = os.environ
        if cache_dir is None:
            if env.get("HF_HUB_CACHE"):
                cache_dir = env["HF_HUB_CACHE"]
            else:
                xdg = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
                cache_dir = os.path.join(env.get("HF_HOME") or os.path.join(xdg, "huggingface"), "hub")
        if offline is None:
            offline = (env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or "").lower() in _TRUE
        if timeout_s is None:
            timeout_s = float(env.get("HF_HUB_ETAG_TIMEOUT") or 10)
        if stall_s is None:
            stall_s = float(env.get("EDGEPACK_HUB_STALL_S") or 60)
        return cls(endpoint=(endpoint or env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
                   cache_dir=Path(os.path.expandvars(str(cache_dir))).expanduser(),
                   token=token or env.get("HF_TOKEN") or None, offline=offline, timeout_s=timeout_s,
                   stall_s=stall_s)


# -- pull ------------------------------------------------------------------------------------------------------

def pull(repo_id: str, revision: str | None = None, out_dir: str | os.PathLike | None = None, *,
         token: str | None = None, include: Iterable[str] = (), force: bool = False,
         settings: HubSettings | None = None, progress: Progress = QUIET) -> PullResult:
    """Fetch ``repo_id`` at ``revision`` (default branch if None) and return the pinned result.

    ``out_dir``: also copy the files into this folder (created whole or not at all). ``include``: extra
    glob patterns to fetch beyond the allow-list (e.g. ``"*.bin"``). Raises ``HubError`` for everything the
    Hub or the network can refuse, ``OutputError`` for disk problems; on failure ``out_dir`` is untouched.
    """
    started = time.monotonic()
    check_repo(repo_id, revision)
    settings = settings or HubSettings.from_env(token=token)
    if token:
        settings = dataclasses.replace(settings, token=token)
    requested = revision or DEFAULT_REVISION
    include = tuple(include)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out, force)

    ctx = Context(repo_id, requested, settings)
    try:
        cached = None
        if settings.offline:
            cached = from_cache(ctx, include, strict=True)
        elif FULL_SHA.match(requested):  # a pinned commit complete in the cache needs no network at all
            with contextlib.suppress(HubError):
                cached = from_cache(ctx, include, strict=False)
        result = cached or from_hub(ctx, include, progress)
    except (HubError, OutputError, UsageError):
        raise
    except Exception as exc:  # the client's and the network's exceptions, turned into one line + hint
        raise ctx.translate(exc) from exc

    result.license = read_license(result.folder / "README.md") or result.license
    result.url = f"{settings.endpoint}/{repo_id}/tree/{result.commit_sha}"
    if out is not None:
        result.folder = _materialize(result, out, force, progress)
    result.seconds = time.monotonic() - started
    return result


def fetch_file(repo_id: str, filename: str, revision: str | None = None, *, token: str | None = None,
               settings: HubSettings | None = None) -> Path:
    """One file of a repo (e.g. ``config.json`` to size a model before downloading it) into the standard cache,
    nothing else; offline (``HF_HUB_OFFLINE``) it answers from the cache. Errors as ``pull``'s."""
    check_repo(repo_id, revision)
    settings = settings or HubSettings.from_env(token=token)
    ctx = Context(repo_id, revision or DEFAULT_REVISION, settings)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, revision=ctx.revision, cache_dir=str(settings.cache_dir),
                                    endpoint=settings.endpoint, token=settings.token or None,
                                    local_files_only=settings.offline, etag_timeout=settings.timeout_s))
    except (HubError, OutputError, UsageError):
        raise
    except Exception as exc:
        from huggingface_hub.errors import RemoteEntryNotFoundError

        if isinstance(exc, RemoteEntryNotFoundError):
            raise HubError(f"{repo_id}@{ctx.revision} has no {filename}", "check the repo id and revision") from exc
        raise ctx.translate(exc) from exc


# -- output folder ---------------------------------------------------------------------------------------------

def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder", "give a folder path with -o")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist", f"create it first: mkdir -p {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {parent} is not writable", "choose another -o folder")
    if out.is_dir() and any(out.iterdir()) and not force and read_manifest(out) is None:
        raise OutputError(f"output folder {out} exists and is not empty", "pass --force to replace it")


def read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _materialize(result: PullResult, out: Path, force: bool, progress: Progress) -> Path:
    """Copy the pulled files into ``out``: into a hidden temp folder beside it, renamed when complete."""
    manifest = {"repo_id": result.repo_id, "revision": result.revision, "commit_sha": result.commit_sha,
                "license": result.license, "url": result.url, "endpoint": result.endpoint,
                "files": [asdict(f) for f in result.files]}
    previous = read_manifest(out) if out.is_dir() else None
    if previous is not None and _same_files(out, previous, manifest):
        return out  # this commit is already there, unchanged
    if previous is not None and not force and previous.get("commit_sha") != result.commit_sha:
        raise OutputError(f"output folder {out} holds {previous.get('repo_id')}@"
                          f"{str(previous.get('commit_sha'))[:12]}", "pass --force to replace it")
    total = sum(f.size_bytes for f in result.files)
    check_space(out.parent if str(out.parent) else Path("."), total, f"the copy in {out}",
                 "pull without -o (the files stay in the cache) or choose another -o")
    progress.start(f"copying {len(result.files)} files into {out}", len(result.files))
    with atomic_dir(out) as staging:
        try:
            for f in result.files:
                dest = staging / f.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(result.folder / f.name, dest)
                progress.advance()
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            if disk_full(exc, staging.parent):
                raise OutputError(f"disk full while copying into {out}",
                                  "free space, or pull without -o (the files stay in the cache)") from exc
            raise
    progress.finish()
    return out


def _same_files(out: Path, previous: dict, manifest: dict) -> bool:
    if previous.get("commit_sha") != manifest["commit_sha"] or previous.get("files") != manifest["files"]:
        return False
    return all((out / f["name"]).is_file() and (out / f["name"]).stat().st_size == f["size_bytes"]
               for f in manifest["files"])
