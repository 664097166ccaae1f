"""Reading the config file: finding it, parsing its TOML, and pointing errors at ``file:line`` (tomllib gives
no positions: the line is found by scanning the file's text for the key inside its table)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .options import _BY_KEY, _TABLES, OPTIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_NAMES = ("edgepack.toml", "pyproject.toml")


# --- locating keys in the file text -----------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]+"|'[^']+'|[A-Za-z0-9_.-]+)\s*=""")


def line_of(text: str, dotted: str, index: int | None = None) -> int:
    """1-based line of ``dotted`` (``table.key``, ``table``, or ``key``) in TOML ``text``; 0 when not found.

    ``index`` picks the n-th ``[[table]]`` for array tables. Inline tables and dotted keys on one line are
    matched by the last component on the line where their table starts (good enough to point a user at it).
    """
    parts = dotted.split(".")
    table_path, key = parts[:-1], parts[-1]
    current: list[str] = []
    seen_arrays: dict[str, int] = {}
    fallback = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = _HEADER.match(line)
        if header:
            current = [p.strip().strip('"') for p in header.group(2).split(".")]
            if header.group(1) == "[[":
                name = ".".join(current)
                seen_arrays[name] = seen_arrays.get(name, -1) + 1
                current = current + [f"#{seen_arrays[name]}"]
            if not table_path and current and current[0] == key and (index is None or current[-1] == f"#{index}"):
                return n  # the table itself
            continue
        match = _KEY.match(line)
        if not match:
            continue
        name = match.group(1).strip("\"'").split(".")
        path = [p for p in current if not p.startswith("#")]
        full = path + name
        wanted = table_path + [key]
        if full == wanted or full[: len(wanted)] == wanted:
            if index is None or (current and current[-1] == f"#{index}"):
                return n
        if full and full[-1] == key and not fallback and path[: len(table_path)] == table_path:
            fallback = n
    return fallback


# --- loading ----------------------------------------------------------------------------------------

def find_config(start: Path | None = None) -> Path | None:
    """edgepack.toml in ``start`` (default: cwd), else a pyproject.toml there with a [tool.edgepack] table."""
    folder = start or Path.cwd()
    if (folder / "edgepack.toml").is_file():
        return folder / "edgepack.toml"
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            return None
        if "edgepack" in data.get("tool", {}):
            return pyproject
    return None


def read_config_file(path: Path) -> tuple[dict, str, str]:
    """(table, file text, key prefix) of an edgepack.toml or a pyproject.toml's [tool.edgepack]."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found", "give the path of an edgepack.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}", "check the file") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        lineno = getattr(exc, "lineno", None) or _lineno_from_message(str(exc))
        raise ConfigError(f"{path}:{lineno}: invalid TOML ({str(exc).split(' (at')[0]})",
                          "fix the syntax at that line") from None
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("edgepack")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: no [tool.edgepack] table", "add one, or use an edgepack.toml")
        return table, text, "tool.edgepack."
    return data, text, ""


def _lineno_from_message(message: str) -> int:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else 1


class _FileValues:
    """The file's values, flattened to option keys, each with a ``file:line`` for error messages."""

    def __init__(self, path: Path, data: dict, text: str, prefix: str):
        self.path, self.text, self.prefix = path, text, prefix
        self.values: dict[str, Any] = {}
        for key, value in data.items():
            if key in _TABLES:
                if not isinstance(value, dict):
                    raise self.error(key, f"must be a table ([{key}])")
                for sub, subval in value.items():
                    dotted = f"{key}.{sub}"
                    if dotted not in _BY_KEY:
                        known = ", ".join(o.key.split(".", 1)[1] for o in OPTIONS if o.key.startswith(key + "."))
                        raise self.error(dotted, f"unknown key {sub!r} in [{key}]", f"known keys there: {known}")
                    self.values[dotted] = subval
            elif key in _BY_KEY:
                self.values[key] = value
            else:
                known = ", ".join(sorted({o.key.split(".")[0] for o in OPTIONS}))
                raise self.error(key, f"unknown key {key!r}", f"known top-level keys and tables: {known}")

    def where(self, dotted: str, index: int | None = None) -> str:
        line = line_of(self.text, self.prefix + dotted, index)
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, dotted: str, message: str, hint: str | None = None, index: int | None = None) -> ConfigError:
        return ConfigError(f"{self.where(dotted, index)}: {self.prefix}{dotted}: {message}",
                           hint or "`edgepack config --help` lists every key")
