"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests that must not touch the real Hub.

It serves repos the test builds (``add_commit``) with the endpoints and headers huggingface_hub 2.x reads
(see huggingface_hub/hf_api.py ``model_info`` / ``list_repo_tree`` and file_download.py
``get_hf_file_metadata`` / ``http_get``):

* ``GET /api/models/{org}/{name}/revision/{rev}[?blobs=true]``: model info -- ``id``, ``sha`` (the full
  commit), ``siblings`` (``rfilename``; with ``blobs``: ``size``, ``blobId``, ``lfs {size, sha256,
  pointerSize}``), ``cardData`` from the README front matter.
* ``GET /api/models/{org}/{name}/tree/{rev}?recursive=...``: the tree listing ``snapshot_download`` uses.
* ``HEAD|GET /{org}/{name}/resolve/{rev}/{path}``: small (git) files answer 200 with ``ETag`` (git blob
  sha1), ``X-Repo-Commit`` and ``Content-Length``; LFS files (weights) answer 302 to a second port standing
  in for the CDN, with ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and ``X-Repo-Commit``, as the Hub does.
  The CDN honours ``Range: bytes=N-`` (206 + ``Content-Range``), which the client uses to resume.
* Errors carry the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers: ``RepoNotFound`` (401 without a
  token, 404 with one), ``GatedRepo`` (401 / 403), ``RevisionNotFound``, ``EntryNotFound``.

Revisions resolve like git on the Hub: branch, tag, full sha or a unique sha prefix (>= 7 characters).

Failure switches (plain attributes, set by the test): ``gated`` (repo -> tokens that may read it),
``drop_once`` (file name -> byte offset, None for half-way: the first full download of that file is cut
off there), ``corrupt`` (file names served
with one byte flipped), ``stall_s`` (model-info answers are delayed), ``api_status`` (force an HTTP status
on API calls). Every request is appended to ``log``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".msgpack", ".h5", ".onnx", ".gguf", ".model")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [s for s in self.commits if s.startswith(revision)]
            sha = matches[0] if len(matches) == 1 else None
        return self.commits.get(sha) if sha else None


def is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


def card_data(files: dict[str, bytes]) -> dict | None:
    """The README's YAML front matter as the Hub reports it (only flat ``key: value`` lines are needed here)."""
    text = files.get("README.md", b"").decode("utf-8", "replace")
    match = re.match(r"^---\n(.*?)\n---", text, re.S)
    if not match:
        return None
    data = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            data[key.strip()] = value.strip()
    return data


class HubServer:
    """Start with ``with HubServer() as hub:``; ``hub.endpoint`` is the value for HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[dict] = []
        self.gated: dict[str, set[str]] = {}
        self.drop_once: dict[str, int | None] = {}
        self.corrupt: set[str] = set()
        self.stall_s: float = 0.0
        self.drip_s: float = 0.0  # > 0: file bodies trickle out a byte at a time, this far apart (for 20 s at most)
        self.api_status: int | None = None
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- repo building -------------------------------------------------------------------------------------
    def add_commit(self, repo_id: str, files: dict[str, bytes | str | Path], *, branch: str = "main",
                   tags: tuple[str, ...] = ()) -> str:
        """Add a commit holding exactly ``files`` (name -> bytes, text or a path to read) on ``branch``."""
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        data = {}
        for name, content in files.items():
            if isinstance(content, Path):
                content = content.read_bytes()
            data[name] = content.encode() if isinstance(content, str) else bytes(content)
        parent = repo.branches.get(branch, "")
        digest = hashlib.sha1(parent.encode())
        for name in sorted(data):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data[name]).digest())
        sha = digest.hexdigest()
        repo.commits[sha] = Commit(sha, data)
        repo.branches[branch] = sha
        for tag in tags:
            repo.tags[tag] = sha
        return sha

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> HubServer:
        for role in ("hub", "cdn"):
            handler = type(f"{role}Handler", (_Handler,), {"hub": self, "role": role})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries for tests ---------------------------------------------------------------------------------
    def requests(self, kind: str | None = None) -> list[dict]:
        with self._lock:
            return [r for r in self.log if kind is None or r["kind"] == kind]

    def downloaded(self) -> list[str]:
        """File names whose content was sent (GET on a small file or on the CDN), in order."""
        return [r["file"] for r in self.requests() if r["method"] == "GET" and r["kind"] in ("file", "cdn")
                and r["status"] in (200, 206)]

    def _record(self, **entry) -> None:
        with self._lock:
            self.log.append(entry)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    role: str
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    # -- routing -------------------------------------------------------------------------------------------
    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        try:
            if self.role == "cdn":
                return self._cdn(parts, head)
            if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "revision":
                return self._model_info("/".join(parts[2:4]), parts[5], query)
            if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "tree":
                return self._tree("/".join(parts[2:4]), parts[5])
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
            self._error(404, None, "not found", kind="other")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _access(self, repo_id: str, kind: str, **log) -> Repo | None:
        """The repo if this request may read it; otherwise answer the error the Hub would and return None."""
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        if kind == "api" and self.hub.api_status:
            self._error(self.hub.api_status, None, "forced failure", kind=kind, **log)
            return None
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            # The Hub answers 401 to anonymous requests for missing (or private) repos, 404 with a token.
            self._error(404 if token else 401, "RepoNotFound", "Repository not found", kind=kind, **log)
            return None
        allowed = self.hub.gated.get(repo_id)
        if allowed is not None and token not in allowed:
            self._error(403 if token else 401, "GatedRepo",
                        f"Access to model {repo_id} is restricted. You must have access to it and be "
                        "authenticated to access it. Please log in.", kind=kind, **log)
            return None
        return repo

    def _commit(self, repo_id: str, revision: str, kind: str, **log):
        """The commit ``revision`` names if this request may read the repo; otherwise answer the error the Hub
        would (repo access, then RevisionNotFound) and return None."""
        repo = self._access(repo_id, kind, **log)
        if repo is None:
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", kind=kind, **log)
        return commit

    def _model_info(self, repo_id: str, revision: str, query: dict) -> None:
        if self.hub.stall_s:
            time.sleep(self.hub.stall_s)
        commit = self._commit(repo_id, revision, "api", path=self.path)
        if commit is None:
            return
        blobs = "blobs" in query
        siblings = []
        for name, data in sorted(commit.files.items()):
            entry = {"rfilename": name}
            if blobs:
                entry.update(size=len(data), blobId=git_blob_sha1(lfs_pointer(data) if is_lfs(name) else data))
                if is_lfs(name):
                    entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                    "pointerSize": len(lfs_pointer(data))}
            siblings.append(entry)
        body = {"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
                "author": repo_id.split("/")[0], "sha": commit.sha, "private": False,
                "gated": "manual" if repo_id in self.hub.gated else False, "disabled": False,
                "tags": [], "siblings": siblings, "cardData": card_data(commit.files)}
        self._json(200, body, kind="api", path=self.path)

    def _tree(self, repo_id: str, revision: str) -> None:
        commit = self._commit(repo_id, revision, "api", path=self.path)
        if commit is None:
            return
        entries, folders = [], set()
        for name, data in sorted(commit.files.items()):
            for i in range(1, name.count("/") + 1):
                folders.add(name.rsplit("/", i)[0])
            entry = {"type": "file", "oid": git_blob_sha1(lfs_pointer(data) if is_lfs(name) else data),
                     "size": len(data), "path": name}
            if is_lfs(name):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                "pointerSize": len(lfs_pointer(data))}
            entries.append(entry)
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                    for f in sorted(folders)]
        self._json(200, entries, kind="api", path=self.path)

    def _resolve(self, repo_id: str, revision: str, name: str, head: bool) -> None:
        log = {"path": self.path, "file": name}
        commit = self._commit(repo_id, revision, "file", **log)
        if commit is None:
            return
        if name not in commit.files:
            return self._error(404, "EntryNotFound", f"{name} does not exist on \"{revision}\"", kind="file",
                               extra={"X-Repo-Commit": commit.sha}, **log)
        data = commit.files[name]
        if is_lfs(name):
            sha256 = hashlib.sha256(data).hexdigest()
            location = f"{self.hub.cdn}/{quote(repo_id)}/{sha256}/{quote(name)}"
            self.hub._record(method=self.command, status=302, kind="file",
                             auth=self.headers.get("Authorization"), **log)
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("X-Repo-Commit", commit.sha)
            self.send_header("ETag", f'"{git_blob_sha1(lfs_pointer(data))}"')
            self.send_header("X-Linked-Etag", f'"{sha256}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(name, data, head, kind="file", etag=git_blob_sha1(data), commit=commit.sha, **log)

    def _cdn(self, parts: list[str], head: bool) -> None:
        # /{org}/{name}/{sha256}/{file}: content-addressed, no token needed (the Hub's CDN urls are signed).
        repo = self.hub.repos.get("/".join(parts[:2]))
        sha256, name = parts[2], "/".join(parts[3:])
        blob = None
        for commit in (repo.commits.values() if repo else ()):
            data = commit.files.get(name)
            if data is not None and hashlib.sha256(data).hexdigest() == sha256:
                blob = data
        if blob is None:
            return self._error(404, None, "no such blob", kind="cdn", path=self.path, file=name)
        self._send_file(name, blob, head, kind="cdn", etag=sha256, commit=None, path=self.path, file=name)

    # -- responses -----------------------------------------------------------------------------------------
    def _send_file(self, name: str, data: bytes, head: bool, *, kind: str, etag: str, commit: str | None,
                   **log) -> None:
        if name in self.hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, status = 0, 200
        range_header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if match and not head:
            start, status = int(match.group(1)), 206
            end = int(match.group(2)) + 1 if match.group(2) else len(data)
            if start >= len(data):
                return self._error(416, None, "range not satisfiable", kind=kind, range=range_header, **log)
            body = data[start:end]
        else:
            body = data
        drop = not head and status == 200 and name in self.hub.drop_once and len(body) > 1
        cut = len(body) // 2
        if drop:
            cut = self.hub.drop_once.pop(name) or cut
        self.hub._record(method="HEAD" if head else "GET", status=status, kind=kind, range=range_header,
                     auth=self.headers.get("Authorization"), dropped=drop,
                     sent=0 if head else (cut if drop else len(body)), **log)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        if commit:
            self.send_header("X-Repo-Commit", commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        if self.hub.drip_s and len(body) > 1:
            deadline = time.monotonic() + 20  # bounded: the server gives up on its own
            for i in range(len(body)):
                if time.monotonic() > deadline:
                    break
                try:
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up: good
                    break
                time.sleep(self.hub.drip_s)
            self.close_connection = True
            return
        if drop:
            # Send part of the promised bytes, then cut the connection: the client sees an incomplete body.
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _json(self, status: int, payload, *, kind: str, **log) -> None:
        body = json.dumps(payload).encode()
        self.hub._record(method=self.command, status=status, kind=kind, auth=self.headers.get("Authorization"), **log)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, *, kind: str, extra: dict | None = None,
               **log) -> None:
        body = json.dumps({"error": message}).encode()
        log.setdefault("path", self.path)
        self.hub._record(method=self.command, status=status, kind=kind, auth=self.headers.get("Authorization"), **log)
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
