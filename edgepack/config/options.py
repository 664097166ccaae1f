"""The option table: one row per option (its dotted key in the file, its environment variable, its parser,
its help), from which the file schema, the environment names and ``edgepack config`` are derived."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .. import limits
from ..validate import safe_name

ARCHIVES = ("none", "tar.zst", "zip")
ADAPTER_MODES = ("convert", "merge", "both")
IMATRIX_COMPUTED = ("auto", "compare")  # imatrix values that mean "computed on the calibration text"
OUTTYPES = ("auto", "f32", "f16", "bf16")
# The projector of a vision-language source: "auto" (F16 when edgepack converts that class's projector, nothing
# otherwise), "none", or a projector type (convert.mmproj's MMPROJ_OUTTYPES; spelled out here so that reading a
# config imports no stage, and test_config checks the two agree).
MMPROJ = ("auto", "none", "f16", "f32", "q8_0")


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


def _positive(kind: type, accepted: tuple[type, ...], what: str):
    """A parser of positive ``kind`` numbers: TOML's own (``accepted``, never a bool) or text (an env var)."""
    def parse(v):
        if isinstance(v, str):
            try:
                v = kind(v)
            except ValueError:
                raise _Bad(f"must be {what}") from None
        if isinstance(v, bool) or not isinstance(v, accepted) or not v > 0:
            raise _Bad(f"must be {what}")
        return kind(v)
    return parse


_int_pos = _positive(int, (int,), "a positive integer")
_float_pos = _positive(float, (int, float), "a positive number")


def _threads(v):
    v = _int_pos(v)
    if v > limits.MAX_THREADS:
        raise _Bad(f"must be at most {limits.MAX_THREADS} (llama.cpp's thread limit)")
    return v


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
    """``imatrix = "auto" | "compare" | "path/to/file" | false``."""
    if v is False or (isinstance(v, str) and v.strip().lower() in ("false", "no", "off", "none", "0")):
        return None
    if not isinstance(v, str) or not v.strip():
        raise _Bad('must be "auto", "compare", an imatrix file, or false')
    return v.strip().lower() if v.strip().lower() in IMATRIX_COMPUTED else v.strip()


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
    Option("quantize.mmproj", "mmproj", _choice(MMPROJ), "EDGEPACK_MMPROJ",
           'vision projector: "auto" (F16 for a vision-language source), "none", "f16", "f32" or "q8_0"'),
    Option("quantize.imatrix", "imatrix", _imatrix, "EDGEPACK_IMATRIX",
           'importance matrix: "auto" (computed on quantize.calibration), "compare" (computed, and every type also '
           'built without it, side by side in the report), an imatrix file, or false'),
    Option("quantize.calibration", "calibration", _str, "EDGEPACK_CALIBRATION",
           'calibration text for a computed imatrix and the device mixes: a text or .jsonl file, or "builtin"'),
    Option("quantize.device_mixes", "device_mixes", _bool, "EDGEPACK_DEVICE_MIXES",
           "also build, for every profile under [profiles] names, the per-tensor mix of least measured KLD that "
           "fits its memory (<name>-MIX-<profile>); fit then picks among all variants"),
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

DEFAULTS = {"quant_types": ("Q8_0", "Q4_K_M"), "outtype": "auto", "mmproj": "auto", "ctx": 2048, "eval_tokens": 2048, "threads": 2,
            "output_dir": "dist", "archive": "none", "report": True,
            "device_mixes": False}
