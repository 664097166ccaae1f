"""What every step of a build is handed: the config, the step cache, the file-hash memo, the log, and the record
of every step (ran, cached, skipped) that ``edgepack build`` prints and ``--json`` returns."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .. import cilog
from ..progress import Progress
from .artifacts import StepRecord
from .cache import CACHE_DIR, HashMemo, StepCache, content_key, made_files
from .codekey import code_key, tools_key

if TYPE_CHECKING:
    from ..config import BuildConfig

STEP_VERSION = 1  # bump to invalidate every cached step (a change in what steps produce)


class BuildContext:
    def __init__(self, config: BuildConfig, progress: Progress):
        self.config = config
        self.progress = progress
        self.out = Path(config.output_dir)
        self.cache = StepCache(self.out / CACHE_DIR)
        self.hashes = HashMemo(self.cache.root / "source-hashes.json")
        self.steps: list[StepRecord] = []

    def log(self, message: str) -> None:
        if self.progress.enabled:
            cilog.line(message)

    def group(self, title: str):
        """A log group around work that is not one cached step (``cilog.group``)."""
        return cilog.group(title, enabled=self.progress.enabled)

    def key(self, step: str, parts: dict, code: str) -> str:
        """A step's key: its inputs and settings (``parts``), and the code and tools of the step module ``code``
        (``codekey``: found from the module's imports, never listed by hand)."""
        return content_key(step=step, v=STEP_VERSION, code=code_key(code), tools=tools_key(code), inputs=parts)

    def step(self, step: str, label: str, parts: dict, work: Callable[[Path], dict], *, code: str,
             seconds: float | None = None) -> tuple[dict, Path]:
        """One cached step: ``work(tmp_folder)`` makes its files there and returns what it made (JSON-able), or
        the cached result of an earlier run is returned. ``code``: the step's module (``__name__``), whose code
        and tools are part of the key. ``seconds``: the time to record when the work was done elsewhere (a batch).
        Returns (what the step made, its folder)."""
        key = self.key(step, parts, code)
        started = time.monotonic()
        folder = self.cache.folder(step, key)
        cached = self.cache.get(step, key)
        if cached is not None and not self.hashes.unchanged(folder, made_files(cached)):
            # A damaged cache entry must not be reused, let alone shipped: make it again.
            self.log(f"[{step}] {label}: a file it made changed since it was made; redoing the step")
            shutil.rmtree(folder)
            cached = None
        with cilog.group(f"[{step}] {label}", enabled=cached is None and self.progress.enabled):
            if cached is None:
                self.log(f"[{step}] {label} ...")
            done, ran = self.cache.run(step, key, work)
            if ran:  # their hashes are known: no re-hash on the next build
                for rel, sha in made_files(done).items():
                    self.hashes.record(folder / rel, sha)
                self.hashes.save()
        took = round(time.monotonic() - started, 2) if seconds is None or not ran else seconds
        self.steps.append(StepRecord(step, label, key, "ran" if ran else "cached", took))
        if ran:
            self.log(f"[{step}] {label} done in {took:.1f}s")
        return done, folder

    def is_cached(self, step: str, parts: dict, code: str) -> bool:
        return self.cache.get(step, self.key(step, parts, code)) is not None

    def record(self, step: str, label: str, key: str, status: str, started: float) -> None:
        """An uncached step's record (the source check, the fit)."""
        self.steps.append(StepRecord(step, label, key, status, round(time.monotonic() - started, 2)))

    def skip(self, step: str, label: str, reason: str) -> None:
        self.steps.append(StepRecord(step, label, "", "skipped", 0.0, reason))
        self.log(f"[{step}] {label} SKIPPED: {reason}")
        cilog.warning(f"[{step}] {label} SKIPPED: {reason}")

    def folder_sha256(self, folder: Path) -> str:
        """One digest over the sha256 of every file in a model or adapter folder (hidden files left out),
        memoised (``HashMemo``)."""
        hashes = {path.relative_to(folder).as_posix(): self.hashes.sha256(path)
                  for path in sorted(p for p in folder.rglob("*") if p.is_file() and not any(
                      part.startswith(".") for part in p.relative_to(folder).parts))}
        self.hashes.save()
        return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
