"""Output helpers shared by commands: JSON for machines, aligned tables for people."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import click


def _default(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def emit_json(payload) -> None:
    """Print ``payload`` (dataclasses welcome) as indented JSON on stdout."""
    click.echo(json.dumps(payload, default=_default, indent=2, sort_keys=False))


def save_and_emit(payload: dict, out, as_json: bool) -> bool:
    """Write ``payload`` as JSON to ``out`` (atomically) when given; print it when ``as_json``.
    Returns True when the JSON was printed (the caller then prints nothing else)."""
    if out:
        from ..fileio import atomic_write_text

        atomic_write_text(out, json.dumps(payload, indent=2))
    if as_json:
        emit_json(payload)
    return as_json


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain aligned table (no box drawing: it survives CI logs and copy-paste)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))


def human_bytes(size_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size_bytes) < 1024 or unit == "TiB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1024
    return f"{size_bytes:.1f} TiB"
