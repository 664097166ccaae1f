"""The importance matrix's data and its file: llama.cpp's GGUF imatrix (read and written) and the legacy ``.dat``
(read), and the check that an imatrix belongs to the model it is used with.

File: ``general.type = imatrix``; per weight ``<name>.in_sum2``, F32, shape [n_cols, n_mat] in ggml order, and
``<name>.counts``, F32, [1, n_mat]; ``imatrix.datasets``, ``imatrix.chunk_count``, ``imatrix.chunk_size``, which
``llama-quantize --imatrix`` reads. edgepack adds ``edgepack.imatrix.*`` keys (calibration sha256, model identity)
that llama.cpp ignores.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from .. import gguf_keys as keys
from ..errors import ImatrixError, UsageError
from ..fileio import atomic_path
from ..ggufheader import read_header

KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
KEY_CALIBRATION, KEY_MODEL = keys.Imatrix.CALIBRATION, keys.Imatrix.MODEL  # edgepack's own (gguf_keys)
KEY_MODEL_FINGERPRINT, KEY_PROCESS_OUTPUT = keys.Imatrix.MODEL_FINGERPRINT, keys.Imatrix.PROCESS_OUTPUT


@dataclass
class Entry:
    """One weight's statistics: ``sums`` (n_mat, n_cols) of squared inputs, ``counts`` (n_mat,) of tokens."""

    sums: np.ndarray
    counts: np.ndarray

    @property
    def n_cols(self) -> int:
        return self.sums.shape[1]

    @property
    def n_mat(self) -> int:
        return self.sums.shape[0]


@dataclass
class Imatrix:
    entries: dict[str, Entry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False  # read from a .dat file: sums are already means (times the call count)
    calibration_sha256: str = ""
    model: str = ""  # general.name of the model it was computed on ("" when unknown)
    model_fingerprint: str = ""
    process_output: bool = False
    path: Path | None = None

    def importance(self) -> dict[str, np.ndarray]:
        """Per-column importance, flattened per weight (expert-major), as llama-quantize computes it for the C
        API: in_sum2 / count for each expert, 1 where the expert never ran; legacy files: value / ncall."""
        out = {}
        for name, e in self.entries.items():
            counts = e.counts.astype(np.float64)[:, None]
            if self.legacy:
                values = np.where(counts > 0, e.sums / np.maximum(counts, 1), e.sums)
            else:
                values = np.where(counts > 0, e.sums / np.maximum(counts, 1), 1.0)
            out[name] = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        return out


# ---------------------------------------------------------------------------------------------------------------
# The file


def write(imatrix: Imatrix, output: str | Path) -> Path:
    """Write llama.cpp's GGUF imatrix, atomically (names sorted, as llama-imatrix writes them)."""
    import gguf

    output = Path(output)
    with atomic_path(output) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="")
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # an imatrix file has none
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array(KEY_DATASETS, list(imatrix.datasets))
        writer.add_uint32(KEY_CHUNK_COUNT, imatrix.chunk_count)
        writer.add_uint32(KEY_CHUNK_SIZE, imatrix.chunk_size)
        writer.add_string(keys.VERSION, __version__)
        if imatrix.calibration_sha256:
            writer.add_string(KEY_CALIBRATION, imatrix.calibration_sha256)
        if imatrix.model:
            writer.add_string(KEY_MODEL, imatrix.model)
        if imatrix.model_fingerprint:
            writer.add_string(KEY_MODEL_FINGERPRINT, imatrix.model_fingerprint)
        writer.add_bool(KEY_PROCESS_OUTPUT, imatrix.process_output)
        for name in sorted(imatrix.entries):
            e = imatrix.entries[name]
            writer.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(e.sums, dtype=np.float32))
            writer.add_tensor(f"{name}.counts", e.counts.astype(np.float32).reshape(-1, 1))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return output


def read(path: str | Path) -> Imatrix:
    """Read a GGUF imatrix (llama-imatrix's or edgepack's) or a legacy ``.dat`` one."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise UsageError(f"imatrix file {path} does not exist",
                         "make one with: edgepack imatrix MODEL.gguf --calibration TEXT -o FILE") from None
    except OSError as exc:
        raise UsageError(f"cannot read imatrix file {path}: {exc.strerror}", "check the path") from None
    imatrix = _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)
    imatrix.path = path
    return imatrix


def _read_gguf(path: Path) -> Imatrix:
    header = read_header(path)
    if header.get("general.type") not in (None, "imatrix"):
        raise ImatrixError(f"{path.name} is a {header.get('general.type')} GGUF, not an imatrix",
                           "give the file llama-imatrix or edgepack imatrix wrote")
    pairs: dict[str, dict] = {}
    for t in header.tensors:
        for suffix in (".in_sum2", ".counts"):
            if t.name.endswith(suffix):
                pairs.setdefault(t.name[: -len(suffix)], {})[suffix] = t
    if not pairs:
        raise ImatrixError(f"{path.name} holds no imatrix entries (<tensor>.in_sum2 / .counts)",
                           "give the file llama-imatrix or edgepack imatrix wrote")
    for key in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE):
        if header.get(key) is None:  # llama-quantize refuses such files too ("missing imatrix metadata")
            raise ImatrixError(f"{path.name} lacks the {key} key", "re-create it with a current llama-imatrix")
    import gguf

    entries = {}
    with open(path, "rb") as f:
        for name in sorted(pairs):
            sums_t, counts_t = pairs[name].get(".in_sum2"), pairs[name].get(".counts")
            if sums_t is None or counts_t is None:
                raise ImatrixError(f"{path.name}: {name} has {'sums' if sums_t else 'counts'} but not both",
                                   "the file is damaged; re-create it")
            if sums_t.type != gguf.GGMLQuantizationType.F32 or counts_t.type != gguf.GGMLQuantizationType.F32:
                raise ImatrixError(f"{path.name}: {name} is not F32", "the file is damaged; re-create it")
            sums = _tensor_data(f, header.data_offset + sums_t.offset, sums_t.n_elements, path)
            counts = _tensor_data(f, header.data_offset + counts_t.offset, counts_t.n_elements, path)
            n_mat = len(counts)
            if n_mat == 0 or len(sums) % n_mat:
                raise ImatrixError(f"{path.name}: {name} has {len(sums)} sums for {n_mat} counts", "re-create it")
            entries[name] = Entry(sums.reshape(n_mat, -1).astype(np.float64), np.rint(counts).astype(np.int64))
    datasets = header.get(KEY_DATASETS)
    return Imatrix(entries=entries, datasets=[str(d) for d in datasets] if isinstance(datasets, list) else [],
                   chunk_count=int(header.get(KEY_CHUNK_COUNT)), chunk_size=int(header.get(KEY_CHUNK_SIZE)),
                   calibration_sha256=str(header.get(KEY_CALIBRATION) or ""),
                   model=str(header.get(KEY_MODEL) or ""),
                   model_fingerprint=str(header.get(KEY_MODEL_FINGERPRINT) or ""),
                   process_output=bool(header.get(KEY_PROCESS_OUTPUT) or False))


def _tensor_data(f, offset: int, count: int, path: Path) -> np.ndarray:
    f.seek(offset)
    data = f.read(count * 4)
    if len(data) != count * 4:
        raise ImatrixError(f"{path.name} is truncated", "re-create or re-download it")
    return np.frombuffer(data, dtype="<f4").copy()


def _read_legacy(path: Path) -> Imatrix:
    """The ``.dat`` format (common/imatrix-loader.cpp): int32 entry count; per entry the name (int32 length +
    bytes), ncall (int32), nval (int32) and nval float32 (sum/count * ncall); then optionally the chunk count and
    the dataset name."""
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ImatrixError(f"{path.name} is neither a GGUF imatrix nor a complete legacy .dat one",
                               "give the file llama-imatrix or edgepack imatrix wrote")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if not 0 < n_entries < 1_000_000:
        raise ImatrixError(f"{path.name} is not an imatrix file", "give the file llama-imatrix or edgepack wrote")
    entries = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise ImatrixError(f"{path.name} is not an imatrix file", "give the file llama-imatrix wrote")
        name = take(f"<{length}s")[0].decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise ImatrixError(f"{path.name}: entry {name} has no values", "re-create the file")
        sums = np.array(take(f"<{nval}f"), np.float64).reshape(1, nval)
        entries[name] = Entry(sums, np.array([ncall], np.int64))
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if 0 < length <= len(data) - pos:
                datasets.append(take(f"<{length}s")[0].decode("utf-8", "replace"))
    return Imatrix(entries=entries, datasets=datasets, chunk_count=chunk_count, legacy=True)


# ---------------------------------------------------------------------------------------------------------------
# Checking an imatrix against the model it is used with


_BLOCK_WEIGHT = re.compile(r"^blk\.\d+\..+\.weight$")


def check_model(imatrix: Imatrix, model: str | Path) -> None:
    """Refuse, in one line, an imatrix made for another model: entries the model lacks, sizes that differ
    (llama.cpp checks n_cols x n_mat = ne[0] x ne[2]), or most block weights without an entry."""
    model = Path(model)
    tensors = {t.name: t for t in read_header(model).tensors}
    label = imatrix.path.name if imatrix.path else "the imatrix"
    hint = f"make one for this model: edgepack imatrix {model.name} --calibration TEXT -o FILE"
    unknown = [n for n in imatrix.entries if n not in tensors]
    if unknown:
        raise ImatrixError(f"{label} was made for another model: {len(unknown)} of its {len(imatrix.entries)} "
                           f"entries are not in {model.name} (e.g. {unknown[0]})", hint)
    for name, e in imatrix.entries.items():
        shape = tensors[name].shape
        n_mat = shape[2] if len(shape) > 2 else 1
        if e.sums.size != shape[0] * n_mat:
            raise ImatrixError(f"{label} was made for another model: {name} has {e.sums.size} values, "
                               f"{model.name} needs {shape[0] * n_mat}", hint)
    # Some block weights never meet a matrix product (a convolution's, a lookup table's) and have no entry in
    # any imatrix; most missing means another model (llama.cpp would quantize them without importance).
    weights = [n for n, t in tensors.items() if _BLOCK_WEIGHT.match(n) and len([d for d in t.shape if d > 1]) >= 2]
    missing = [n for n in weights if n not in imatrix.entries]
    if len(missing) * 2 > len(weights):
        raise ImatrixError(f"{label} does not fit {model.name}: {len(missing)} of its weight matrices have no entry "
                           f"(e.g. {missing[0]})", hint)


def digest(imatrix: Imatrix) -> str:
    """A short content hash of what the quantizer receives (for re-run checks and settings)."""
    h = hashlib.sha256()
    for name, values in sorted(imatrix.importance().items()):
        h.update(name.encode() + b"\0")
        h.update(values.tobytes())
    return h.hexdigest()[:16]
