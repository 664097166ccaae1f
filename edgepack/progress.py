"""Progress for long work: a bar on a terminal, plain step lines in CI or when piped, nothing when quiet.

Stages take an optional ``Progress`` and call ``start(label, total)``, ``advance(n)``, ``finish()``;
they never print themselves.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


@dataclass
class Progress:
    """Reports progress of one task at a time to stderr."""

    enabled: bool = True
    stream = sys.stderr
    _label: str = ""
    _total: int = 0
    _done: int = 0
    _started: float = 0.0
    _last_draw: float = 0.0
    _tty: bool = field(default_factory=lambda: sys.stderr.isatty())

    def start(self, label: str, total: int) -> None:
        self._label, self._total, self._done = label, max(total, 1), 0
        self._started = self._last_draw = time.monotonic()
        if self.enabled and not self._tty:
            print(f"{label} ...", file=sys.stderr, flush=True)

    def advance(self, amount: int = 1) -> None:
        self._done += amount
        now = time.monotonic()
        if self.enabled and self._tty and (now - self._last_draw > 0.1 or self._done >= self._total):
            self._last_draw = now
            width = 30
            filled = int(width * min(self._done, self._total) / self._total)
            percent = 100 * min(self._done, self._total) / self._total
            print(f"\r{self._label} [{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%",
                  end="", file=sys.stderr, flush=True)

    def finish(self, summary: str = "") -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._started
        tail = f" {summary}" if summary else ""
        if self._tty:
            print(f"\r{self._label} done in {elapsed:.1f}s{tail}" + " " * 20, file=sys.stderr, flush=True)
        else:
            print(f"{self._label} done in {elapsed:.1f}s{tail}", file=sys.stderr, flush=True)


QUIET = Progress(enabled=False)
