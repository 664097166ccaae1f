"""Fetching a pinned snapshot: from the Hub (huggingface_hub's own client) or from its local cache alone,
checked file by file against the sizes and hashes the Hub published.

``edgepack.hub.pull`` is the entry point; this module holds its two paths (``from_hub``, ``from_cache``), the
choice of files (``select_files``), the checksum check that evicts a corrupted copy, and ``Context.translate``,
the one place where the client's and the network's exceptions become a ``HubError`` with a hint.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import HubError, OutputError
from .fileio import atomic_write_text, feed_file
from .progress import QUIET, Progress
from .source import Provenance

if TYPE_CHECKING:
    from .hub import HubSettings

# What conversion reads (see convert/vocab.py TOKENIZER_FILES and convert/core.py), plus the model card and
# licence. Top-level files only; pickled or framework-specific weights are never fetched unless --include asks.
ALLOW_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "chat_template.jinja", "chat_template.json", "adapter_config.json",
                  "adapter_model.safetensors", "README.md", "LICENSE*")
INDEX_FILE = "model.safetensors.index.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class SourceFile:
    name: str
    size_bytes: int
    sha256: str


@dataclass
class PullResult:
    """What ``pull`` fetched: the pinned commit, the licence, and every file with its sha256."""

    repo_id: str
    revision: str  # as asked (branch, tag, sha)
    commit_sha: str  # what it resolved to
    license: str | None
    folder: Path  # the files: ``out_dir`` if given, else the cache's snapshot folder
    files: list[SourceFile]
    downloaded_bytes: int  # transferred by this call (0 when everything came from the cache)
    endpoint: str
    url: str
    skipped: list[str] = field(default_factory=list)  # repo files left out by the allow-list
    network_used: bool = True  # False: answered from the cache alone (offline, or a pinned sha already there)
    seconds: float = 0.0

    def provenance(self) -> Provenance:
        return Provenance(repo_id=self.repo_id, revision=self.revision, commit_sha=self.commit_sha,
                          license=self.license, url=self.url)


@dataclass(frozen=True)
class _RemoteFile:
    size: int | None
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git blob sha1 (small files)


class Context:
    """The request being served, for error messages."""

    def __init__(self, repo_id: str, revision: str, settings: HubSettings):
        self.repo_id, self.revision, self.settings = repo_id, revision, settings

    @property
    def storage(self) -> Path:
        return self.settings.cache_dir / ("models--" + self.repo_id.replace("/", "--"))

    def cached_commit(self) -> str | None:
        if FULL_SHA.match(self.revision):
            return self.revision if (self.storage / "snapshots" / self.revision).is_dir() else None
        ref = self.storage / "refs" / self.revision
        return ref.read_text().strip() if ref.is_file() else None

    def translate(self, exc: BaseException) -> Exception:
        import httpx2
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                            OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)

        repo, rev, endpoint = self.repo_id, self.revision, self.settings.endpoint
        token_hint = "pass --token hf_... or set HF_TOKEN (a read token from huggingface.co/settings/tokens)"
        if isinstance(exc, GatedRepoError):
            who = "your token has not been granted access" if self.settings.token else "it needs a token"
            return HubError(f"{repo} is a gated repo and {who}",
                            f"accept its terms at {endpoint}/{repo}, then {token_hint}")
        if isinstance(exc, RepositoryNotFoundError):
            return HubError(f"repository {repo} not found on {endpoint} (or it is private)",
                            f"check the id; for a private repo {token_hint}")
        if isinstance(exc, RevisionNotFoundError):
            return HubError(f"revision {rev!r} not found in {repo}",
                            "give a branch, tag or commit sha that exists (default: main)")
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status == 401:
                return HubError(f"the Hub rejected the token for {repo} (HTTP 401)", f"check it: {token_hint}")
            if status == 403:
                return HubError(f"access to {repo} denied (HTTP 403)",
                                "make sure the token has read access to this repo: " + token_hint)
            if status >= 500 or status == 429:
                return HubError(f"{endpoint} answered HTTP {status} for {repo}", self._offline_hint("retry later"))
            return HubError(f"Hub request for {repo} failed with HTTP {status}", self._offline_hint("retry"))
        if isinstance(exc, (httpx2.TimeoutException,)):
            stalled = "stalled" in str(exc)
            return HubError(f"{'the download stalled' if stalled else 'timed out'} talking to {endpoint}",
                            self._offline_hint("the server is stuck or very slow: try again later (the window is "
                                               "EDGEPACK_HUB_STALL_S)" if stalled else "check your connection"))
        if isinstance(exc, (httpx2.TransportError, LocalEntryNotFoundError, OfflineModeIsEnabled)):
            detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            return HubError(f"cannot reach {endpoint}: {detail}", self._offline_hint("check your connection"))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return OutputError(f"disk full while downloading {repo} into {self.settings.cache_dir}",
                               "free space, or point HF_HOME at a disk with room")
        if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
            return HubError(f"a download from {repo} was cut short", "run the same command again to retry")
        return HubError(f"pulling {repo}@{rev} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
                        "retry with --debug for details")

    def _offline_hint(self, first: str) -> str:
        commit = self.cached_commit()
        if commit:
            return f"{first}, or use the cached copy (commit {commit[:12]}) with HF_HUB_OFFLINE=1"
        return f"{first}; working offline (HF_HUB_OFFLINE=1) needs a copy pulled earlier into {self.settings.cache_dir}"


def from_hub(ctx: Context, include: tuple[str, ...], progress: Progress) -> PullResult:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    settings = ctx.settings
    _guard_stalls(settings)
    api = HfApi(endpoint=settings.endpoint, token=settings.token or None)
    info = api.model_info(ctx.repo_id, revision=ctx.revision, files_metadata=True, timeout=settings.timeout_s)
    commit = info.sha
    if not commit or not FULL_SHA.match(commit):
        raise HubError(f"{settings.endpoint} did not report a commit sha for {ctx.repo_id}@{ctx.revision}",
                       "check that HF_ENDPOINT points at a Hugging Face Hub")
    listing = {s.rfilename: _RemoteFile(s.size, s.lfs.sha256 if s.lfs else None, None if s.lfs else s.blob_id)
               for s in info.siblings or []}
    common = dict(repo_id=ctx.repo_id, revision=commit, cache_dir=str(settings.cache_dir),
                  endpoint=settings.endpoint, token=settings.token or None)

    def read_index() -> dict:
        return _load_index(Path(hf_hub_download(filename=INDEX_FILE, **common)))

    selected, skipped = select_files(listing, include, read_index)
    _write_ref(ctx, commit)
    blobs = ctx.storage / "blobs"
    missing = [n for n in selected if not (blobs / (listing[n].sha256 or listing[n].blob_id or "-")).is_file()]
    need = sum(listing[n].size or 0 for n in missing)
    check_space(settings.cache_dir, need, "the Hugging Face cache", "point HF_HOME at a disk with room")
    label = (f"downloading {len(missing)} of {len(selected)} files ({need / 2**20:.1f} MiB)" if missing
             else f"checking {len(selected)} cached files")
    progress.start(f"{label} from {ctx.repo_id}@{commit[:12]}", max(len(missing), 1))
    folder = Path(snapshot_download(allow_patterns=[glob.escape(n) for n in selected],
                                    tqdm_class=_tqdm_class(progress), **common))
    progress.advance(len(missing))
    progress.finish()
    files = _verify(ctx, folder, selected, listing, progress)
    license_ = info.card_data.get("license") if info.card_data is not None else None
    return PullResult(ctx.repo_id, ctx.revision, commit, license_, folder, files, need, settings.endpoint, "",
                      skipped)


def from_cache(ctx: Context, include: tuple[str, ...], strict: bool) -> PullResult | None:
    """The pinned snapshot from the cache, without touching the network; None (or HubError if ``strict``)
    when the cache does not hold it completely."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    def fail(message: str):
        if not strict:
            return None
        raise HubError(message, f"pull it once with network access (unset HF_HUB_OFFLINE): edgepack pull "
                                f"{ctx.repo_id}@{ctx.revision}")

    commit = ctx.cached_commit()
    if commit is None:
        return fail(f"{ctx.repo_id}@{ctx.revision} is not in the cache {ctx.settings.cache_dir} (offline mode)")
    folder = ctx.storage / "snapshots" / commit
    try:
        tree = get_cached_repo_tree(ctx.repo_id, revision=commit, cache_dir=str(ctx.settings.cache_dir))
        listing = {f.path: _RemoteFile(f.size) for f in tree}
    except CachedRepoTreeNotFoundError:
        # No listing saved: all we know is what the snapshot folder holds.
        listing = {p.relative_to(folder).as_posix(): _RemoteFile(None)
                   for p in folder.rglob("*") if p.is_file()}

    def read_index() -> dict:
        if not (folder / INDEX_FILE).is_file():
            raise FileNotFoundError(INDEX_FILE)
        return _load_index(folder / INDEX_FILE)

    try:
        selected, skipped = select_files(listing, include, read_index)
    except FileNotFoundError:
        return fail(f"the cached copy of {ctx.repo_id}@{commit[:12]} lacks {INDEX_FILE} (offline mode)")
    absent = [n for n in selected if not (folder / n).is_file()]
    if absent:
        return fail(f"the cached copy of {ctx.repo_id}@{commit[:12]} is incomplete: "
                    f"{', '.join(absent[:4])}{' ...' if len(absent) > 4 else ''} missing (offline mode)")
    for name in selected:  # LFS blobs are stored under their sha256: the expected hash travels with the file
        target = os.path.realpath(folder / name)
        blob = os.path.basename(target)
        if re.fullmatch(r"[0-9a-f]{64}", blob):
            listing[name] = _RemoteFile(listing[name].size, blob)
    files = _verify(ctx, folder, selected, listing, QUIET)  # a bad copy is evicted, so a retry fetches it again
    return PullResult(ctx.repo_id, ctx.revision, commit, None, folder, files, 0, ctx.settings.endpoint, "",
                      skipped, network_used=False)


def select_files(listing: dict[str, _RemoteFile], include: tuple[str, ...], read_index) -> tuple[list[str], list[str]]:
    """Split a repo's files into (to fetch, left out). Weights: the shards the index names if there is one,
    else model.safetensors if present, else every top-level safetensors file (not consolidated.* copies
    when others exist). Raises HubError when no safetensors weights are there."""
    names = sorted(listing)
    top = [n for n in names if "/" not in n]
    wanted = {n for n in top if any(fnmatch.fnmatchcase(n, p) for p in ALLOW_PATTERNS)}
    weights = {n for n in wanted if n.endswith(".safetensors") and n != ADAPTER_WEIGHTS}
    if INDEX_FILE in wanted:
        shards = set(read_index().get("weight_map", {}).values())
        absent = sorted(shards - set(names))
        if absent:
            raise HubError(f"{INDEX_FILE} names shards the repo does not have: {', '.join(absent[:3])}",
                           "the repo is inconsistent at this revision; try another revision")
        weights_keep = shards
    elif "model.safetensors" in weights:
        weights_keep = {"model.safetensors"}
    else:
        plain = {n for n in weights if not n.startswith("consolidated")}
        weights_keep = plain or weights
    wanted = (wanted - weights) | weights_keep
    wanted |= {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in include)}
    if not (weights_keep or ADAPTER_WEIGHTS in wanted or include):
        shown = ", ".join(names[:12]) + (f" ... ({len(names)} files)" if len(names) > 12 else "")
        raise HubError(f"the repo has no safetensors weights; it has: {shown or 'no files'}",
                       "edgepack converts safetensors only; look for a safetensors revision of the model, or "
                       "fetch other files with --include")
    return sorted(wanted), [n for n in names if n not in wanted]


def _load_index(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HubError(f"{INDEX_FILE} from the Hub is not valid JSON: {exc}", "try another revision") from exc


def _verify(ctx: Context, folder: Path, selected: list[str], listing: dict[str, _RemoteFile],
            progress: Progress) -> list[SourceFile]:
    """sha256 (and size) of every file, checked against what the Hub published. A file that does not match
    is removed from the cache so that the next attempt downloads it again."""
    files = []
    progress.start("verifying checksums", len(selected))
    for name in selected:
        path = folder / name
        expected = listing.get(name, _RemoteFile(None))
        size = path.stat().st_size
        sha256, sha1 = _hashes(path, git_blob=expected.blob_id is not None and expected.sha256 is None)
        problem = None
        if expected.size is not None and size != expected.size:
            problem = f"size {size} instead of {expected.size}"
        elif expected.sha256 and sha256 != expected.sha256:
            problem = f"sha256 {sha256[:12]}... instead of {expected.sha256[:12]}..."
        elif sha1 and sha1 != expected.blob_id:
            problem = f"git blob id {sha1[:12]}... instead of {expected.blob_id[:12]}..."
        if problem:
            _evict(ctx, path)
            raise HubError(f"checksum mismatch for {name} from {ctx.repo_id}: {problem}",
                           "the download was corrupted and has been removed from the cache; run the command "
                           "again (if it repeats, the server or a proxy is altering files)")
        files.append(SourceFile(name, size, sha256))
        progress.advance()
    progress.finish()
    return files


def _hashes(path: Path, git_blob: bool) -> tuple[str, str | None]:
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % path.stat().st_size) if git_blob else None  # git's blob id
    feed_file(path, *filter(None, (sha256, sha1)))
    return sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None


def _evict(ctx: Context, path: Path) -> None:
    """Remove a bad file from the cache: the snapshot's link and the blob behind it."""
    target = Path(os.path.realpath(path))
    with contextlib.suppress(OSError):
        path.unlink()
    blobs = ctx.storage / "blobs"
    if target.parent == Path(os.path.realpath(blobs)):
        with contextlib.suppress(OSError):
            target.unlink()


def _write_ref(ctx: Context, commit: str) -> None:
    """Record ``revision -> commit`` in the cache's refs/ (the layout huggingface_hub documents), so that
    offline runs can resolve a branch, tag or short sha pulled earlier."""
    if ctx.revision == commit:
        return
    ref = ctx.storage / "refs" / ctx.revision
    with contextlib.suppress(OSError):
        if ref.is_file() and ref.read_text().strip() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ref, commit)


def _tqdm_class(progress: Progress):
    """The client's own byte-level bars on a terminal; nothing otherwise (``--json``, CI logs, library use)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    if progress.enabled and progress._tty:
        return None

    class _Silent(hf_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


MIN_STALL_BYTES = 64 * 1024


def _guard_stalls(settings: HubSettings) -> None:
    """Make huggingface_hub's HTTP client give up on a body that trickles: less than MIN_STALL_BYTES in
    ``settings.stall_s`` seconds raises a read timeout, which the client retries like any other and then reports
    (``Context.translate``: "stalled"). A per-read timeout alone never fires when a byte arrives now and then,
    and the client reads in 10 MB chunks, so no progress callback sees the trickle either: the check sits on the
    raw stream, in a transport wrapper installed through huggingface_hub's own client factory hook."""
    import httpx2
    from huggingface_hub.utils import _http, set_client_factory

    class _Watched(httpx2.SyncByteStream):
        def __init__(self, inner, request):
            self.inner, self.request = inner, request

        def __iter__(self):
            window_start, window_bytes = time.monotonic(), 0
            for piece in self.inner:
                window_bytes += len(piece)
                now = time.monotonic()
                if now - window_start >= settings.stall_s:
                    if window_bytes < MIN_STALL_BYTES:
                        raise _Stalled(f"stalled: {window_bytes} bytes in {now - window_start:.0f} s",
                                       request=self.request)
                    window_start, window_bytes = now, 0
                yield piece

        def close(self):
            self.inner.close()

    class _Transport(httpx2.HTTPTransport):
        def handle_request(self, request):
            response = super().handle_request(request)
            response.stream = _Watched(response.stream, request)
            return response

    class _Stalled(httpx2.ReadTimeout):
        pass

    def factory():
        client = _http.default_client_factory()  # hf's own settings (hooks, redirects) ...
        client._transport = _Transport()  # ... with the watched transport (httpx keeps it in this attribute)
        return client

    set_client_factory(factory)


def check_space(folder: Path, need: int, what: str, hint: str) -> None:
    if need <= 0:
        return
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise OutputError(f"not enough disk space for {what}: {need / 2**30:.2f} GiB needed, "
                          f"{free / 2**30:.2f} GiB free at {probe}", f"free space, or {hint}")
