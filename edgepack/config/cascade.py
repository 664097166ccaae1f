"""``resolve``: CLI > environment (``EDGEPACK_*``) > file > defaults, into one ``BuildConfig``; then the values
that need more than a parser (the source, quant types, adapters, files relative to the config's folder)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EdgepackError, UsageError
from ..quants import quant_type, resolve_types
from ..source import Source, check_revision, parse
from ..validate import safe_name
from .build_config import AdapterSpec, BuildConfig
from .options import ADAPTER_KEYS, ADAPTER_MODES, DEFAULTS, IMATRIX_COMPUTED, OPTIONS, _Bad, _str
from .tomlfile import _FileValues, find_config, line_of, read_config_file


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
    for key in ("imatrix", "calibration"):  # files relative to the config's folder; "auto"/"builtin"... are not
        if values.get(key) not in (None, *IMATRIX_COMPUTED, "builtin"):
            folder = raw[key][2]
            values[key] = folder / values[key] if not Path(values[key]).is_absolute() else Path(values[key])
            if not values[key].is_file():
                raise fail(key, f"file {values[key]} does not exist",
                           "give a path relative to the config file" + (
                               ', "auto", "compare" or false' if key == "imatrix" else ', or "builtin"'))
    needs = [q for q in quants if _needs_imatrix(q)]
    if needs and values.get("imatrix") is None:
        raise fail("quant_types" if "quant_types" in raw else "imatrix",
                   f"{', '.join(needs)} need an importance matrix",
                   'set imatrix = "auto" under [quantize] (computed on the built-in calibration text)')
    if values.get("device_mixes") and not values.get("profiles"):
        # one mix per device: every shipped profile would be two dozen variants, mostly the same all-Q8_0 mix
        raise fail("device_mixes", "device_mixes needs the devices named under [profiles] names",
                   'list them, e.g. [profiles] names = ["pixel-8", "raspberry-pi-5-8gb"]')
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
