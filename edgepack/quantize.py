"""GGUF -> quantized GGUF with llama.cpp's own quantizer (``llama_model_quantize`` through llama-cpp-python).

edgepack never re-implements a quantization: it checks the inputs (so the C code, which may abort on bad
files, only ever sees a well-formed GGUF), picks the names, runs the quantizer into a temp file, reads back what
was actually written (per-type tensor counts, llama.cpp's fallbacks) and renames it into place.

Re-runs: each output GGUF carries ``edgepack.quantize.settings`` (added through the quantizer's own kv-override
list). A sidecar ``<output>.edgepack.json``, written atomically after the GGUF, keeps what only this run saw
(llama.cpp's fallbacks), the output's size and the source's identity: its stat fingerprint (size, mtime in ns,
inode), taken before quantizing, and, with ``hash_source``, its BLAKE3. An existing output is skipped when its
settings and size match and the source is unchanged: the same fingerprint (as make and git's index decide), or,
with ``hash_source``, the same content. ``edgepack convert -q`` hashes, because it writes the F16 intermediate
anew on every run; plain ``edgepack quantize`` does not by default, because hashing a 0.75 GB source costs
0.3-0.45 s of CPU, 10-15% of a Q8_0 quantization that keeps both cores of a 2-core machine busy
(benchmarks/quantize.py).

Several types in one run validate and hash the source once; each ``llama_model_quantize`` call maps the source
again (mmap), which the page cache serves after the first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf

from . import __version__, limits
from . import gguf_keys
from .errors import BadGGUF, OutputError, QuantizeError, UsageError
from .fileio import (atomic_path, atomic_write_text, blake3_file, check_replaceable, disk_full, prepare_output_dir,
                     stat_fingerprint)
from .ggufheader import GGUFHeader, read_header
from .llamaquant import Fallback, llama_quantize
from .loadcheck import check_loadable
from .progress import QUIET, Progress
from .quants import QT, UNQUANTIZED, QuantType, quant_type, refuse_without_imatrix, tensor_type

SIDECAR_SUFFIX = ".edgepack.json"
SETTINGS_KEY, TYPE_KEY, VERSION_KEY = (gguf_keys.Quantize.SETTINGS, gguf_keys.Quantize.TYPE,
                                        gguf_keys.Quantize.VERSION)
CALIBRATION_KEY = gguf_keys.Quantize.IMATRIX_CALIBRATION


def tensor_overrides(specs: Iterable[str], tensor_names: Iterable[str], with_imatrix: bool = False
                     ) -> list[tuple[str, int]]:
    """``--tensor-type PATTERN=TYPE`` -> (pattern, ggml type) pairs, in llama-quantize's meaning: the pattern
    (lower-cased) is a regular expression searched in each tensor's name; the first matching pattern wins and
    replaces the mix's choice. A pattern that matches none of ``tensor_names`` is refused (a typo would
    otherwise do nothing)."""
    names = list(tensor_names)
    out = []
    for spec in specs:
        pattern, sep, type_name = spec.partition("=")
        pattern = pattern.strip().lower()
        if not sep or not pattern or not type_name.strip():
            raise UsageError(f"--tensor-type {spec!r} is not PATTERN=TYPE", "e.g. --tensor-type attn_v=Q8_0")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"--tensor-type {spec!r}: bad pattern ({exc})", "give a regular expression") from None
        if not any(regex.search(n) for n in names):
            raise UsageError(f"--tensor-type {spec!r} matches no tensor of the model",
                             f"tensor names look like {', '.join(names[:3])}, ...")
        out.append((pattern, tensor_type(type_name, "--tensor-type", with_imatrix)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class QuantizeResult:
    type: str
    output: Path
    size_bytes: int
    n_params: int
    bpw: float  # bits per weight over all tensors (tensor data only, as llama.cpp reports it)
    seconds: float
    skipped: bool  # an up-to-date output from an earlier run was kept
    tensor_types: dict[str, int]  # ggml type -> number of tensors written with it
    fallbacks: list[Fallback] = field(default_factory=list)
    imatrix: str = ""  # the importance matrix's file name ("" without one)
    calibration_sha256: str = ""  # sha256 of the text the imatrix was computed on, when known


@dataclass(frozen=True)
class SourceInfo:
    path: Path
    architecture: str
    name: str  # model name used for output files
    file_type: str  # dominant weight type, e.g. F16 or Q4_K
    quantized: bool
    n_tensors: int
    size_bytes: int


# ---------------------------------------------------------------------------------------------------------------
# Input checks (before any C code sees the file)


def inspect_source(path: str | Path) -> SourceInfo:
    path = Path(path)
    reader = check_loadable(path)  # llama_model_quantize aborts the process on some damage (loadcheck's list)
    arch = reader.get("general.architecture")
    if not arch:
        raise BadGGUF(f"{path} has no general.architecture key", "it is not a llama.cpp model GGUF")
    if reader.get("general.type") == "adapter":
        raise BadGGUF(f"{path} is a LoRA adapter, not a model", "quantize the base model; adapters stay F16/F32")
    weights = [t for t in reader.tensors if sum(d > 1 for d in t.shape) >= 2]
    if not weights:
        raise BadGGUF(f"{path} has no weight tensors (a vocab-only GGUF?)", "convert the model with its weights")
    counts = Counter(t.type for t in weights)
    dominant = max(counts, key=lambda t: counts[t])
    quantized = any(t not in UNQUANTIZED for t in counts)
    return SourceInfo(path=path, architecture=str(arch), name=model_name(reader, path), file_type=dominant.name,
                      quantized=quantized, n_tensors=len(reader.tensors), size_bytes=path.stat().st_size)


_SUFFIX = re.compile(r"[-_.](F32|F16|BF16|FP16|FP32)$", re.IGNORECASE)


def model_name(reader: GGUFHeader, path: Path) -> str:
    """``general.name`` (spaces -> '-'), else the file stem; without a trailing -F16/-BF16/-F32."""
    name = reader.get("general.name")
    name = str(name).strip() if name else path.stem
    name = re.sub(r"\s+", "-", name)
    name = re.sub(r"[^\w.+-]", "", name) or path.stem
    return _SUFFIX.sub("", name)


def output_path(out_dir: Path, name: str, qt: QuantType) -> Path:
    return out_dir / f"{name}-{qt.name}.gguf"


# ---------------------------------------------------------------------------------------------------------------
# The stage


def quantize(src_gguf: str | Path, types: Iterable[str | QuantType], out_dir: str | Path | None = None, *,
             threads: int = 0, output_tensor_type: str | None = None, token_embedding_type: str | None = None,
             pure: bool = False, allow_requantize: bool = False, force: bool = False, hash_source: bool = False,
             imatrix: str | Path | None = None, calibration: str | Path | None = None,
             tensor_types: Iterable[str] = (), progress: Progress = QUIET) -> list[QuantizeResult]:
    """Quantize ``src_gguf`` to each of ``types`` into ``out_dir`` (default: the source's folder).

    Outputs are named ``<Model>-<TYPE>.gguf``. ``threads`` 0 means all cores. ``output_tensor_type`` /
    ``token_embedding_type`` override the mix for ``output.weight`` / ``token_embd.weight`` (ggml type names);
    ``tensor_types``: ``PATTERN=TYPE`` overrides (``tensor_overrides``); ``pure`` gives every weight the base
    type (no k-quant mix). ``imatrix``: an importance matrix file (GGUF or legacy .dat) for this model, used for
    every type; ``calibration``: a text file (or ``"builtin"``) to compute one from first, kept as
    ``<Model>.imatrix.gguf`` in ``out_dir`` and reused while model and text are unchanged. Types that need an
    imatrix (IQ2_XS, ...) are refused without one. A quantized source is refused unless ``allow_requantize``. An
    existing output from another tool is refused unless ``force``. Every check is made before any work starts.
    Up-to-date outputs are kept (see the module docstring; ``hash_source`` also recognises a source rewritten
    with the same bytes). Raises ``EdgepackError`` subclasses.
    """
    from . import imatrix as im
    from .calibration import calibration as load_calibration

    src = Path(src_gguf)
    qtypes = [t if isinstance(t, QuantType) else quant_type(t) for t in types]
    if not qtypes:
        raise UsageError("no quantization type given", "pass -t TYPE (e.g. -t Q4_K_M) or --bits N")
    if imatrix is not None and calibration is not None:
        raise UsageError("--imatrix and --calibration both given", "pass one: a ready imatrix, or the text to make it")
    with_imatrix = imatrix is not None or calibration is not None
    if not with_imatrix:
        refuse_without_imatrix(qtypes)
    out_t = tensor_type(output_tensor_type, "--output-tensor-type", with_imatrix)
    embd_t = tensor_type(token_embedding_type, "--token-embedding-type", with_imatrix)
    threads = limits.threads(threads)
    source = inspect_source(src)
    if source.quantized and not allow_requantize:
        _refuse_requantize(source, qtypes)
    overrides = tensor_overrides(tensor_types, (t.name for t in read_header(src).tensors), with_imatrix)
    imat = None
    if imatrix is not None:
        imat = im.read(imatrix)
        im.check_model(imat, src)
    if calibration is not None:
        load_calibration(calibration)  # readable and well-formed, before any work
    out_dir = Path(out_dir) if out_dir is not None else src.resolve().parent
    prepare_output_dir(out_dir)
    if calibration is not None:
        imat = im.ensure(src, calibration, out_dir / f"{source.name}.imatrix.gguf", threads=threads,
                         progress=progress)
    if imat is not None:
        _check_coverage(imat, overrides, out_t, embd_t, read_header(src).tensors)
    imat_digest = im.digest(imat) if imat is not None else ""
    plans = []
    for qt in qtypes:
        out = output_path(out_dir, source.name, qt)
        check_replaceable(out)  # before reading it (a pipe would block the re-run check) or doing any work
        if out.exists() and out.resolve() == src.resolve():
            raise UsageError(f"the {qt.name} output would overwrite the source {src}",
                             "write elsewhere with -o DIR, or skip this type: the source already is it")
        settings = _settings(qt, out_t, embd_t, pure, allow_requantize, imat_digest, overrides)
        plans.append((qt, out, settings))
    existing = [(qt, out, s) for qt, out, s in plans if out.exists()]
    for qt, out, _ in existing:
        if not force and not _made_by_us(out):
            raise OutputError(f"{out} exists and was not written by edgepack quantize", "pass --force to overwrite it")

    identity = {"source_fingerprint": stat_fingerprint(src), "source_blake3": ""}
    if hash_source:
        progress.start(f"hashing {src.name}", 1)
        try:
            identity["source_blake3"] = blake3_file(src)
        except OSError as exc:
            raise BadGGUF(f"cannot read {src}: {exc.strerror}", "check the file") from exc
        progress.finish()
    results = []
    for qt, out, settings in plans:
        if out.exists() and _up_to_date(out, identity, settings):
            results.append(_describe(qt, out, read_header(out), out.stat().st_size, True, []))
            if progress.enabled:
                progress.start(f"{qt.name}: {out.name} is up to date", 1)
                progress.finish("(skipped)")
            continue
        results.append(_quantize_one(src, qt, out, settings, threads, out_t, embd_t, pure, allow_requantize,
                                     identity, source.n_tensors, progress, imatrix=imat, overrides=overrides))
    return results


def _refuse_requantize(source: SourceInfo, qtypes: list[QuantType]) -> None:
    src_bpw = gguf.GGML_QUANT_SIZES[QT[source.file_type]]
    src_bits = src_bpw[1] * 8 / src_bpw[0]
    for qt in qtypes:
        if qt.bpw >= src_bits:
            raise QuantizeError(f"{source.path.name} is already quantized ({source.file_type}); {qt.name} cannot "
                                "bring the lost precision back", "quantize from the F16/BF16/F32 GGUF instead")
    raise QuantizeError(f"{source.path.name} is already quantized ({source.file_type}); requantizing to "
                        f"{qtypes[0].name} compounds the error",
                        "quantize from the F16/BF16/F32 GGUF, or pass --allow-requantize")


# ggml types whose quantizer aborts the process without imatrix data (ggml.c, ggml_quantize_requires_imatrix);
# llama.cpp's own check exempts token_embd and output.weight, which usually have no entry.
_ABORT_WITHOUT_DATA = {int(QT.IQ2_XXS), int(QT.IQ2_XS), int(QT.IQ1_S)}


def _check_coverage(imatrix, overrides: list[tuple[str, int]], out_t: int | None, embd_t: int | None,
                    tensors) -> None:
    """Refuse a manual type that would make llama.cpp abort: IQ2_XXS/IQ2_XS/IQ1_S on a tensor the imatrix has
    no entry for (token_embd.weight, and output.weight unless collected with --process-output)."""
    for t in tensors:
        wanted = embd_t if t.name == "token_embd.weight" else out_t if t.name == "output.weight" else None
        if wanted is None:
            wanted = next((ggml for p, ggml in overrides if re.search(p, t.name)), None)
        if wanted in _ABORT_WITHOUT_DATA and t.name not in imatrix.entries:
            raise UsageError(f"{t.name} cannot be {QT(wanted).name}: the imatrix has no data for it",
                             "give it another type (e.g. Q2_K or IQ3_S)")


def _settings(qt: QuantType, out_t: int | None, embd_t: int | None, pure: bool, requant: bool,
              imatrix_digest: str = "", overrides: list[tuple[str, int]] = ()) -> str:
    """The settings an output was made with, as one short string (llama.cpp's kv values hold 127 bytes: the
    imatrix and the tensor-type overrides enter as 16-hex-digit digests)."""
    names = {None: "default"}
    text = (f"type={qt.name};ftype={qt.ftype};output={names.get(out_t) or QT(out_t).name};"
            f"embd={names.get(embd_t) or QT(embd_t).name};pure={int(pure)};requant={int(requant)}")
    if imatrix_digest:
        text += f";imatrix={imatrix_digest}"
    if overrides:
        listing = "\n".join(f"{p}={QT(t).name}" for p, t in overrides)
        text += f";tt={hashlib.sha256(listing.encode()).hexdigest()[:16]}"
    return text


def _made_by_us(out: Path) -> bool:
    """Whether ``out`` is a readable GGUF carrying our settings key (else it is not ours to overwrite)."""
    try:
        return read_header(out).get(SETTINGS_KEY) is not None
    except BadGGUF:
        return False


def _up_to_date(out: Path, identity: dict[str, str], settings: str) -> bool:
    sidecar = out.with_name(out.name + SIDECAR_SUFFIX)
    try:
        record = json.loads(sidecar.read_text())
        reader = read_header(out)
    except (OSError, ValueError, BadGGUF):
        return False
    if not (reader.get(SETTINGS_KEY) == settings and record.get("settings") == settings
            and record.get("size_bytes") == out.stat().st_size):
        return False
    if record.get("source_fingerprint") == identity["source_fingerprint"]:
        return True
    return bool(identity["source_blake3"]) and record.get("source_blake3") == identity["source_blake3"]


def _imatrix_provenance(imatrix) -> dict[str, str | int]:
    """The keys llama-quantize writes when given an imatrix (tools/quantize/quantize.cpp), plus the calibration
    text's sha256. The file is recorded by name, not path, so that the same inputs give the same bytes."""
    keys: dict[str, str | int] = {"quantize.imatrix.file": imatrix.path.name if imatrix.path else "imatrix"}
    if imatrix.datasets:
        keys["quantize.imatrix.dataset"] = imatrix.datasets[0].encode()[:127].decode("utf-8", "ignore")
    keys["quantize.imatrix.entries_count"] = len(imatrix.entries)
    if imatrix.chunk_count > 0:
        keys["quantize.imatrix.chunks_count"] = imatrix.chunk_count
    if imatrix.calibration_sha256:
        keys[CALIBRATION_KEY] = imatrix.calibration_sha256
    return keys


def _quantize_one(src: Path, qt: QuantType, out: Path, settings: str, threads: int, out_t: int | None,
                  embd_t: int | None, pure: bool, allow_requantize: bool, identity: dict[str, str], n_tensors: int,
                  progress: Progress, *, imatrix=None, overrides: list[tuple[str, int]] = ()) -> QuantizeResult:
    started = time.monotonic()
    keys: dict[str, str | int] = {TYPE_KEY: qt.name, SETTINGS_KEY: settings, VERSION_KEY: __version__}
    if imatrix is not None:
        keys.update(_imatrix_provenance(imatrix))
    progress.start(f"{qt.name} -> {out.name}", n_tensors)
    with atomic_path(out) as tmp:
        log = llama_quantize(src, tmp, ftype=qt.ftype, threads=threads or (os.cpu_count() or 1),
                             output_tensor_type=out_t, token_embedding_type=embd_t, pure=pure,
                             allow_requantize=allow_requantize, metadata=keys,
                             importance=imatrix.importance() if imatrix is not None else None,
                             overrides=overrides, on_tensor=lambda: progress.advance(1))
        if log.status != 0 and disk_full(OSError(log.failure()), out.parent):  # llama.cpp says only "iostream error"
            raise OutputError(f"disk full while writing {out}", "free space or write elsewhere with -o")
        if log.status != 0:
            error = QuantizeError(f"llama.cpp could not quantize {src.name} to {qt.name}: {log.failure()}",
                                  "the reason is llama.cpp's own; check the source GGUF and the options")
            error.llama_log = log.text  # the whole log, for callers that want it
            raise error
        try:
            reader = read_header(tmp)
        except BadGGUF as exc:
            raise QuantizeError(f"llama.cpp wrote an unreadable {qt.name} file: {exc}", "report this as a bug") from exc
        result = _describe(qt, out, reader, tmp.stat().st_size, False, log.fallbacks())
    record = {"edgepack": __version__, "source": src.name, **identity, "settings": settings, "size_bytes": out.stat().st_size,
              "tensor_types": result.tensor_types, "fallbacks": [asdict(f) for f in result.fallbacks],
              "imatrix": result.imatrix, "calibration_sha256": result.calibration_sha256,
              "tensor_type_overrides": [f"{p}={QT(t).name}" for p, t in overrides]}
    atomic_write_text(out.with_name(out.name + SIDECAR_SUFFIX), json.dumps(record, indent=2) + "\n")
    result.seconds = round(time.monotonic() - started, 3)
    progress.finish(f"{result.size_bytes / 2**20:.1f} MiB, {result.bpw:.2f} bpw"
                    + (f", {len(result.fallbacks)} fallback(s)" if result.fallbacks else ""))
    return result


def _describe(qt: QuantType, out: Path, reader: GGUFHeader, size_bytes: int, skipped: bool,
              fallbacks: list[Fallback]) -> QuantizeResult:
    n_params, data_bytes = reader.n_params, reader.data_bytes
    counts = Counter(t.type.name for t in reader.tensors)
    tensor_types = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if skipped:
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(out.with_name(out.name + SIDECAR_SUFFIX).read_text())
            fallbacks = [Fallback(**f) for f in record.get("fallbacks", [])]
    return QuantizeResult(type=qt.name, output=out, size_bytes=size_bytes,
                          n_params=n_params, bpw=round(data_bytes * 8 / max(n_params, 1), 4),
                          seconds=0.0, skipped=skipped, tensor_types=tensor_types,
                          fallbacks=fallbacks, imatrix=str(reader.get("quantize.imatrix.file") or ""),
                          calibration_sha256=str(reader.get(CALIBRATION_KEY) or ""))
