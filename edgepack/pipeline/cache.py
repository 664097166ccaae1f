"""The step cache: ``<output>/.edgepack-cache/<step>/<key>/``, one folder per step and key.

A step runs in a temp folder beside its key folder, writes ``done.json`` (what it made) last, and the folder is
renamed into place (``fileio.atomic_dir``), so an interrupted build leaves no half step and resumes where it
stopped. Keys are content hashes (``content_key``) of a step's inputs, settings, code and tools (``codekey``).
Every step, bundles and reports included, goes through here the same way; nothing outside the cache is trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_dir, atomic_write_text, sha256_file, stat_fingerprint, sweep_temp_files

CACHE_DIR = ".edgepack-cache"
DONE = "done.json"


def content_key(**parts: Any) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def made_files(done: dict) -> dict[str, str]:
    """The files a step made, relative to its folder, with the sha256 each had when it was made: ``file`` and
    ``sha256`` for a step that makes one file, ``files`` for one that makes several."""
    out = dict(done.get("files") or {})
    if "file" in done and "sha256" in done:
        out[str(done["file"])] = str(done["sha256"])
    return out


class StepCache:
    """Content-addressed step folders with a done-marker written last."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, step: str, key: str) -> Path:
        return self.root / step / key

    def get(self, step: str, key: str) -> dict | None:
        marker = self.folder(step, key) / DONE
        if not marker.is_file():
            return None
        try:
            return json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged marker: redo the step

    def run(self, step: str, key: str, fn: Callable[[Path], dict]) -> tuple[dict, bool]:
        """(result, ran): the cached result of (step, key), or run ``fn(tmp_folder)`` and commit it. An incomplete
        folder of an older run (no marker) is replaced."""
        done = self.get(step, key)
        if done is not None:
            return done, False
        final = self.folder(step, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(final) as tmp:
            result = fn(tmp)
            # last, and plainly: the folder becomes visible only by atomic_dir's rename, after its fsync of every file
            (tmp / DONE).write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        return result, True

    def sweep(self) -> int:
        """Remove temp folders left by killed builds; returns how many. Only under the output folder's lock (no
        other build is writing here)."""
        if not self.root.is_dir():
            return 0
        return sum(len(sweep_temp_files(step)) for step in sorted(self.root.iterdir()) if step.is_dir())


class HashMemo:
    """sha256 of files, memoised on (resolved path, ``fileio.stat_fingerprint``) in a JSON file in the cache: a re-run hashes
    only what changed."""

    def __init__(self, path: Path):
        self.path = path
        self._memo: dict[str, str] | None = None
        self._changed = False

    @property
    def memo(self) -> dict[str, str]:
        if self._memo is None:
            try:
                self._memo = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                self._memo = {}
        return self._memo

    @staticmethod
    def _tag(path: Path) -> str:
        return f"{path.resolve()}|{stat_fingerprint(path)}"

    def sha256(self, path: Path) -> str:
        tag = self._tag(path)
        if self.memo.get(tag) is None:
            self.record(path, sha256_file(path), tag)
        return self.memo[tag]

    def record(self, path: Path, sha256: str, tag: str | None = None) -> None:
        self.memo[tag or self._tag(path)] = sha256
        self._changed = True

    def unchanged(self, folder: Path, files: dict[str, str]) -> bool:
        """Whether every file (relative to ``folder``) is there with the sha256 given. A file that was not
        touched costs nothing (the memo knows it by path, size and mtime); a changed one is hashed again."""
        ok = all((folder / rel).is_file() and self.sha256(folder / rel) == sha for rel, sha in files.items())
        self.save()
        return ok

    def save(self) -> None:
        if self._changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.memo, indent=1, sort_keys=True))
            self._changed = False
