"""The pipeline config: ``edgepack.toml`` (or ``[tool.edgepack]`` in pyproject.toml) -> one frozen ``BuildConfig``.

Options resolve in one place, with the precedence CLI > environment (``EDGEPACK_*``) > file > defaults.
Every option has one row in ``OPTIONS`` (its dotted key in the file, its environment variable, its parser),
so the file schema, the environment names and ``edgepack config`` can never disagree.

Unknown keys and bad values are ``ConfigError`` with ``file:line`` (tomllib gives no positions: the line is
found by scanning the file's text for the key inside its table).

Example (``examples/demo/edgepack.toml`` is a complete one)::

    name = "demo"
    source = "./model"                 # a local folder (relative to this file) or "org/repo@revision"

    [quantize]
    types = ["Q8_0", "Q4_K_M"]         # llama.cpp type names, or bit widths: bits = [8, 4]

    [[adapters]]
    name = "dialogue"
    path = "./adapter"
    mode = "convert"                   # convert (a GGUF LoRA file), merge (into the weights) or both
    scales = [1.0]

    [profiles]
    names = ["pixel-8", "raspberry-pi-5-8gb"]   # default: every shipped profile

    [constraints]
    ctx = 2048
    min_tps = 5.0
    max_kld = 0.1

    [outputs]
    dir = "dist"
    archive = "tar.zst"                # none, tar.zst or zip
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import limits
from .errors import ConfigError, EdgepackError, UsageError
from .quants import quant_type, resolve_types
from .source import Source, check_revision, parse
from .validate import safe_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_NAMES = ("edgepack.toml", "pyproject.toml")
ARCHIVES = ("none", "tar.zst", "zip")
ADAPTER_MODES = ("convert", "merge", "both")
OUTTYPES = ("auto", "f32", "f16", "bf16")


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path
    mode: str = "convert"
    scales: tuple[float, ...] = (1.0,)

    @property
    def converts(self) -> bool:
        return self.mode in ("convert", "both")

    @property
    def merges(self) -> bool:
        return self.mode in ("merge", "both")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Everything one ``edgepack build`` needs, resolved. ``origins`` says where each value came from."""

    config_file: Path | None
    name: str
    source: Source
    outtype: str = "auto"
    quants: tuple[str, ...] = ("Q8_0", "Q4_K_M")
    adapters: tuple[AdapterSpec, ...] = ()
    profiles: tuple[str, ...] = ()  # empty: every shipped profile
    profile_paths: tuple[Path, ...] = ()
    ctx: int = 2048
    min_tps: float | None = None
    max_kld: float | None = None
    imatrix: str | Path | None = None  # "auto" (computed on ``calibration``), an imatrix file, or None (none)
    calibration: str | Path = "builtin"  # text for imatrix = "auto": a file, or edgepack's built-in set
    eval_text: Path | None = None  # text for perplexity / KLD (default: the built-in sample)
    eval_tokens: int = 2048
    threads: int = 2
    output_dir: Path = Path("dist")
    archive: str = "none"
    report: bool = True
    origins: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "origins":
                continue
            out[f.name] = _plain(getattr(self, f.name))
        out["origins"] = dict(sorted(self.origins.items()))
        return out


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Source):
        return value.to_json()
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- option table -----------------------------------------------------------------------------------

class _Bad(ValueError):
    """A value that does not parse; the message says what is expected."""


def _str(v):
    if not isinstance(v, str) or not v.strip():
        raise _Bad("must be a non-empty string")
    return v.strip()


def _name(v):
    """A name that becomes part of file names (the model's, an adapter's): one safe file-name component."""
    try:
        return safe_name(_str(v))
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def _int_pos(v):
    if isinstance(v, str):
        try:
            v = int(v)
        except ValueError:
            raise _Bad("must be a positive integer") from None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise _Bad("must be a positive integer")
    return v


def _threads(v):
    v = _int_pos(v)
    if v > limits.MAX_THREADS:
        raise _Bad(f"must be at most {limits.MAX_THREADS} (llama.cpp's thread limit)")
    return v


def _float_pos(v):
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise _Bad("must be a positive number") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise _Bad("must be a positive number")
    return float(v)


def _bool(v):
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    if not isinstance(v, bool):
        raise _Bad("must be true or false")
    return v


def _choice(options):
    def parse(v):
        if not isinstance(v, str) or v.strip().lower() not in options:
            raise _Bad(f"must be one of {', '.join(options)}")
        return v.strip().lower()
    return parse


def _list_of(item):
    def parse(v):
        if isinstance(v, str):  # env / CLI: comma separated
            v = [s for s in (x.strip() for x in v.split(",")) if s]
        if not isinstance(v, list):
            raise _Bad("must be a list")
        return tuple(item(x) for x in v)
    return parse


def _imatrix(v):
    """``imatrix = "auto" | "path/to/file" | false``."""
    if v is False or (isinstance(v, str) and v.strip().lower() in ("false", "no", "off", "none", "0")):
        return None
    if not isinstance(v, str) or not v.strip():
        raise _Bad('must be "auto", an imatrix file, or false')
    return "auto" if v.strip().lower() == "auto" else v.strip()


def _quant_name(v):
    if not isinstance(v, str):
        raise _Bad("must be a quantization type name such as Q4_K_M")
    return v.strip().upper()


def _bits(v):
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad("bit widths are integers, e.g. [8, 4]")
    return v


@dataclass(frozen=True)
class Option:
    key: str  # dotted key in the file: "constraints.ctx"
    field: str  # BuildConfig field (or a pseudo field resolved later)
    parse: Callable[[Any], Any]
    env: str | None = None
    help: str = ""


OPTIONS: tuple[Option, ...] = (
    Option("name", "name", _name, "EDGEPACK_NAME", "model name used in file names (default: the source's name)"),
    Option("source", "source", lambda v: v, "EDGEPACK_SOURCE", "local folder or org/repo@revision"),
    Option("quantize.types", "quant_types", _list_of(_quant_name), "EDGEPACK_QUANTS", "llama.cpp quant types"),
    Option("quantize.bits", "quant_bits", _list_of(_bits), "EDGEPACK_BITS", "bit widths (their recommended type)"),
    Option("quantize.outtype", "outtype", _choice(OUTTYPES), "EDGEPACK_OUTTYPE", "type of the converted base"),
    Option("quantize.imatrix", "imatrix", _imatrix, "EDGEPACK_IMATRIX",
           'importance matrix: "auto" (computed on quantize.calibration), an imatrix file, or false'),
    Option("quantize.calibration", "calibration", _str, "EDGEPACK_CALIBRATION",
           'calibration text for imatrix = "auto": a text or .jsonl file, or "builtin"'),
    Option("adapters", "adapters", lambda v: v, None, "LoRA adapters ([[adapters]] tables)"),
    Option("profiles.names", "profiles", _list_of(_str), "EDGEPACK_PROFILES", "device profiles (default: all)"),
    Option("profiles.paths", "profile_paths", _list_of(_str), "EDGEPACK_PROFILE_PATHS", "extra profile files/folders"),
    Option("constraints.ctx", "ctx", _int_pos, "EDGEPACK_CTX", "context length to plan and test for"),
    Option("constraints.min_tps", "min_tps", _float_pos, "EDGEPACK_MIN_TPS", "minimum projected generation tok/s"),
    Option("constraints.max_kld", "max_kld", _float_pos, "EDGEPACK_MAX_KLD", "maximum KLD vs the unquantized model"),
    Option("eval.text", "eval_text", _str, "EDGEPACK_EVAL_TEXT", "text file for perplexity and KLD"),
    Option("eval.tokens", "eval_tokens", _int_pos, "EDGEPACK_EVAL_TOKENS", "tokens of it to evaluate"),
    Option("bench.threads", "threads", _threads, "EDGEPACK_THREADS", "CPU threads for quantize/bench/eval"),
    Option("outputs.dir", "output_dir", _str, "EDGEPACK_OUTPUT", "output folder"),
    Option("outputs.archive", "archive", _choice(ARCHIVES), "EDGEPACK_ARCHIVE", "also pack each bundle"),
    Option("outputs.report", "report", _bool, "EDGEPACK_REPORT", "write the HTML report"),
)
_BY_KEY = {o.key: o for o in OPTIONS}
_TABLES = {o.key.split(".")[0] for o in OPTIONS if "." in o.key}
ADAPTER_KEYS = ("name", "path", "mode", "scale", "scales")

DEFAULTS = {"quant_types": ("Q8_0", "Q4_K_M"), "outtype": "auto", "ctx": 2048, "eval_tokens": 2048, "threads": 2,
            "output_dir": "dist", "archive": "none", "report": True}


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


def resolve(config_file: str | os.PathLike | None = None, *, cli: dict[str, Any] | None = None,
            env: dict[str, str] | None = None, search: bool = True) -> BuildConfig:
    """Resolve the build config: CLI (``{option key: value}``) > env (``EDGEPACK_*``) > file > defaults.

    ``config_file``: an edgepack.toml, a pyproject.toml, or a folder holding one; None looks in the current
    folder when ``search``. Relative paths in the file are relative to the file's folder; relative paths from
    the CLI or the environment are relative to the current folder.
    """
    env = dict(os.environ) if env is None else env
    cli = {k: v for k, v in (cli or {}).items() if v is not None and v != ()}
    path: Path | None = None
    if config_file is not None:
        path = Path(config_file)
        if path.is_dir():
            found = find_config(path)
            if found is None:
                raise ConfigError(f"no edgepack.toml (or pyproject.toml with [tool.edgepack]) in {path}",
                                  "create one: see examples/demo/edgepack.toml")
            path = found
    elif search:
        path = find_config()
    file_values = None
    if path is not None:
        data, text, prefix = read_config_file(path)
        file_values = _FileValues(path, data, text, prefix)
    base_dir = path.resolve().parent if path else Path.cwd()

    raw: dict[str, tuple[Any, str, Path]] = {}  # field -> (value, origin, folder for relative paths)
    for opt in OPTIONS:
        if opt.key in cli:
            raw[opt.field] = (cli[opt.key], "cli", Path.cwd())
        elif opt.env and opt.env in env and env[opt.env] != "":
            raw[opt.field] = (env[opt.env], f"env {opt.env}", Path.cwd())
        elif file_values and opt.key in file_values.values:
            raw[opt.field] = (file_values.values[opt.key], "file", base_dir)

    def fail(opt_field: str, message: str, hint: str | None = None, index: int | None = None) -> EdgepackError:
        opt = next(o for o in OPTIONS if o.field == opt_field)
        origin = raw[opt_field][1] if opt_field in raw else "default"
        if origin == "file" and file_values:
            return file_values.error(opt.key, message, hint, index)
        where = "command line" if origin == "cli" else origin
        return ConfigError(f"{where}: {opt.key}: {message}", hint or "`edgepack config --help` lists every key")

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for opt in OPTIONS:
        if opt.field not in raw or opt.field in ("source", "adapters"):
            continue
        value, origin, _ = raw[opt.field]
        try:
            values[opt.field] = opt.parse(value)
        except _Bad as exc:
            raise fail(opt.field, f"{exc} (got {value!r})") from None
        origins[opt.field] = origin

    # source
    if "source" not in raw:
        raise ConfigError("no source given" + (f" in {path}" if path else ""),
                          "set source = \"./model-folder\" or \"org/repo@revision\" in edgepack.toml, "
                          "or EDGEPACK_SOURCE")
    src_value, src_origin, src_dir = raw["source"]
    source = _parse_source(src_value, src_dir, lambda m, h=None: fail("source", m, h))
    origins["source"] = src_origin

    # quant types: names and bit widths, checked against the quantizer's table
    names = values.pop("quant_types", None)
    bits = values.pop("quant_bits", None)
    if names is not None and bits is not None:  # one selection: the higher-precedence source wins whole
        rank = {"cli": 3, "file": 1}
        r_names = rank.get(origins["quant_types"], 2)
        r_bits = rank.get(origins["quant_bits"], 2)
        if r_names > r_bits:
            bits = None
            origins.pop("quant_bits")
        elif r_bits > r_names:
            names = None
            origins.pop("quant_types")
    if names is None and bits is None:
        quants = DEFAULTS["quant_types"]
        origins["quants"] = "default"
    else:
        quants = _check_quants(names or (), bits or (), fail)
        origins["quants"] = origins.pop("quant_types", None) or origins.pop("quant_bits", "default")
        origins.pop("quant_bits", None)

    adapters: tuple[AdapterSpec, ...] = ()
    if "adapters" in raw:
        adapters = _parse_adapters(raw["adapters"][0], raw["adapters"][2], file_values, fail)
        origins["adapters"] = raw["adapters"][1]

    for key in ("eval_text", "output_dir"):
        if key in values:
            folder = raw[key][2]
            values[key] = (folder / values[key]) if not Path(values[key]).is_absolute() else Path(values[key])
    for key in ("imatrix", "calibration"):  # files relative to the config's folder; "auto"/"builtin" are not
        if values.get(key) not in (None, "auto", "builtin"):
            folder = raw[key][2]
            values[key] = folder / values[key] if not Path(values[key]).is_absolute() else Path(values[key])
            if not values[key].is_file():
                raise fail(key, f"file {values[key]} does not exist",
                           "give a path relative to the config file" + (
                               ', "auto" or false' if key == "imatrix" else ', or "builtin"'))
    needs = [q for q in quants if _needs_imatrix(q)]
    if needs and values.get("imatrix") is None:
        raise fail("quant_types" if "quant_types" in raw else "imatrix",
                   f"{', '.join(needs)} need an importance matrix",
                   'set imatrix = "auto" under [quantize] (computed on the built-in calibration text)')
    if "eval_text" in values and not Path(values["eval_text"]).is_file():
        raise fail("eval_text", f"text file {values['eval_text']} does not exist",
                   "give a UTF-8 text file (relative to the config file), or drop the key for the built-in text")
    if "profile_paths" in values:
        folder = raw["profile_paths"][2]
        values["profile_paths"] = tuple(folder / p for p in values["profile_paths"])
    if "output_dir" not in values:
        values["output_dir"] = Path(DEFAULTS["output_dir"])
    for key, default in DEFAULTS.items():
        if key not in values and key not in ("quant_types",):
            values[key] = default
            origins.setdefault(key, "default")

    name = values.pop("name", None)
    if name is None:
        try:
            name = safe_name(source.name, "the name derived from the source")
        except ValueError as exc:
            raise ConfigError(f"{exc}", "set name = \"my-model\" in edgepack.toml (or EDGEPACK_NAME)") from None
    origins.setdefault("name", "default")
    return BuildConfig(config_file=path, name=name, source=source, quants=tuple(quants), adapters=adapters,
                       origins=origins, **values)


def _parse_source(value, folder: Path, fail) -> Source:
    if isinstance(value, dict):
        unknown = set(value) - {"path", "repo", "revision"}
        if unknown:
            raise fail(f"unknown key(s) {', '.join(sorted(unknown))} in source",
                       "source is a string, or a table with path, or repo and revision")
        if "path" in value and "repo" not in value:
            return Source("local", path=_local(value["path"], folder))
        if "repo" in value:
            return Source("hub", repo_id=_str(value["repo"]), revision=_revision(value.get("revision"), fail))
        raise fail("source table needs path or repo")
    if not isinstance(value, str) or not value.strip():
        raise fail("must be a folder path or org/repo@revision")
    try:
        return parse(value.strip(), folder)
    except UsageError as exc:
        raise fail(exc.message, exc.hint) from None


def _revision(value, fail) -> str | None:
    try:
        return None if value is None else check_revision(value)
    except UsageError as exc:
        raise fail(exc.message, exc.hint) from None


def _local(text: str, folder: Path) -> Path:
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else (folder / p)


def _check_quants(names, bits, fail) -> tuple[str, ...]:
    try:
        return tuple(t.name for t in resolve_types(list(names), list(bits)))
    except EdgepackError as exc:
        raise fail("quant_types" if names else "quant_bits", exc.message, exc.hint) from None


def _parse_adapters(value, folder: Path, file_values: _FileValues | None, fail) -> tuple[AdapterSpec, ...]:
    if not isinstance(value, list):
        raise fail("adapters", "must be an array of tables ([[adapters]])")
    out = []
    for i, entry in enumerate(value):
        def bad(key: str, message: str, hint: str | None = None):
            if file_values:
                line = line_of(file_values.text, f"{file_values.prefix}adapters.{key}", i)
                return ConfigError(f"{file_values.path}:{line}: adapters[{i}].{key}: {message}",
                                   hint or "each [[adapters]] has path, and optional name, mode, scale(s)")
            return ConfigError(f"adapters[{i}].{key}: {message}", hint)
        if not isinstance(entry, dict):
            raise fail("adapters", f"entry {i} must be a table")
        for key in entry:
            if key not in ADAPTER_KEYS:
                raise bad(key, f"unknown key {key!r}", f"known keys: {', '.join(ADAPTER_KEYS)}")
        if "path" not in entry:
            raise bad("path", "missing", "give the adapter folder (adapter_config.json + adapter_model.safetensors)")
        try:
            path = _local(_str(entry["path"]), folder)
        except _Bad as exc:
            raise bad("path", str(exc)) from None
        mode = entry.get("mode", "convert")
        if mode not in ADAPTER_MODES:
            raise bad("mode", f"must be one of {', '.join(ADAPTER_MODES)} (got {mode!r})")
        if "scale" in entry and "scales" in entry:
            raise bad("scales", "give scale or scales, not both")
        scales = entry.get("scales", [entry["scale"]] if "scale" in entry else [1.0])
        if not isinstance(scales, list) or not scales or any(
                isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < math.inf for s in scales):
            # TOML has nan and inf literals; llama.cpp would take them and compute NaN logits
            raise bad("scales" if "scales" in entry else "scale", "must be positive finite numbers (e.g. 1.0)")
        name = entry.get("name") or path.name
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise bad("name", "must be letters, digits, '_', '.', '-'")
        try:
            safe_name(name, "adapter name")
        except ValueError as exc:
            raise bad("name", str(exc), "name the adapter with letters, digits, '_', '.', '-'") from None
        out.append(AdapterSpec(name=name, path=path, mode=mode, scales=tuple(float(s) for s in scales)))
    names = [a.name for a in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise fail("adapters", f"two adapters are named {dup!r}", "give each [[adapters]] its own name")
    return tuple(out)


def _needs_imatrix(quant: str) -> bool:
    return quant_type(quant).needs_imatrix
