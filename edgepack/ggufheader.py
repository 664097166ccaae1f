"""A fast, strict reader for a GGUF file's header: key/values and tensor infos, never the tensor data.

Why not ``gguf.GGUFReader``: it builds a numpy view per array element, so a 32000-token vocabulary takes
seconds to open (longer than llama.cpp needs to quantize a small model to Q8_0), and it turns some damage
into IndexError/reshape errors. This reads the same layout (gguf-py's constants: value types, quant block
sizes) from one buffered pass, skips big arrays without building them, and checks every length against the
file size, so a truncated or garbled file becomes one ``BadGGUF`` line. The tests compare it with GGUFReader.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .errors import BadGGUF

VT = gguf.GGUFValueType
_SCALARS = {VT.UINT8: "B", VT.INT8: "b", VT.UINT16: "H", VT.INT16: "h", VT.UINT32: "I", VT.INT32: "i",
            VT.FLOAT32: "f", VT.BOOL: "?", VT.UINT64: "Q", VT.INT64: "q", VT.FLOAT64: "d"}
MAX_KEPT_ARRAY = 64  # longer arrays (vocabularies, merges) are skipped and recorded as SkippedArray
MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclass(frozen=True)
class SkippedArray:
    item_type: str
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne[0] (the row length) first
    type: gguf.GGMLQuantizationType
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def n_bytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.type]
        return self.n_elements // block * type_size


@dataclass
class GGUFHeader:
    path: Path
    version: int
    kv: dict[str, object] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    def get(self, key: str, default=None):
        return self.kv.get(key, default)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def data_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)


class _Buf:
    """Sequential reads over a memory-mapped file, with every length checked against the file size."""

    def __init__(self, mm, size: int, path: Path):
        self.mm, self.size, self.path, self.pos = mm, size, path, 0

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise BadGGUF(f"{self.path} is truncated or damaged: needs {n} bytes at offset {self.pos} of "
                          f"{self.size}", "re-create or re-download it")

    def unpack(self, fmt: str):
        st = _STRUCTS[fmt]
        self._need(st.size)
        value = st.unpack_from(self.mm, self.pos)[0]
        self.pos += st.size
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        self._need(n)
        raw = self.mm[self.pos:self.pos + n]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadGGUF(f"{self.path} holds a string that is not UTF-8 at offset {self.pos}",
                          "the file is damaged; re-create it") from exc
        self.pos += n
        return text

    def skip(self, n: int) -> None:
        self._need(n)
        self.pos += n

    def skip_strings(self, count: int) -> None:
        """Skip ``count`` length-prefixed strings in one tight loop: a vocabulary holds tens of thousands, and
        walking them was most of a header read (quantize reads two headers per output)."""
        pos, size, mm = self.pos, self.size, self.mm
        length_at = _STRUCTS["Q"].unpack_from
        for _ in range(count):
            if pos + 8 > size:
                break
            pos += 8 + length_at(mm, pos)[0]
        else:
            if pos <= size:
                self.pos = pos
                return
        raise BadGGUF(f"{self.path} is truncated or damaged: an array of {count} strings at offset {self.pos} "
                      f"runs past the end of the file ({size} bytes)", "re-create or re-download it")


_STRUCTS = {f: struct.Struct("<" + f) for f in (*_SCALARS.values(), "Q", "I")}


def _value_type(buf: _Buf, raw: int) -> VT:
    try:
        return VT(raw)
    except ValueError:
        raise BadGGUF(f"{buf.path} is damaged: unknown value type {raw} at offset {buf.pos - 4}",
                      "re-create or re-download it") from None


def _value(buf: _Buf, vtype: VT, keep: bool = False):
    if vtype in _SCALARS:
        return buf.unpack(_SCALARS[vtype])
    if vtype == VT.STRING:
        return buf.string()
    item = _value_type(buf, buf.unpack("I"))
    length = buf.unpack("Q")
    if item == VT.ARRAY:
        raise BadGGUF(f"{buf.path} holds a nested array, which GGUF does not define", "re-create it")
    if length > MAX_KEPT_ARRAY and not keep:
        if item == VT.STRING:
            buf.skip_strings(length)
        else:
            buf.skip(length * _STRUCTS[_SCALARS[item]].size)
        return SkippedArray(item.name, length)
    return [_value(buf, item) for _ in range(length)]


def _parse(buf: _Buf, path: Path, size: int, keep: frozenset[str]) -> GGUFHeader:
    buf.pos = 4
    version = buf.unpack("I")
    if version not in (2, 3):
        raise BadGGUF(f"{path} is GGUF version {version}; llama.cpp reads versions 2 and 3",
                      "re-create it with a current converter")
    n_tensors, n_kv = buf.unpack("Q"), buf.unpack("Q")
    if n_tensors > size // 24 or n_kv > size // 12:  # each entry needs at least that many bytes
        raise BadGGUF(f"{path} is damaged: it claims {n_tensors} tensors and {n_kv} keys in {size} bytes",
                      "re-create or re-download it")
    header = GGUFHeader(path=path, version=version, file_size=size)
    for _ in range(n_kv):
        key = buf.string()
        header.kv[key] = _value(buf, _value_type(buf, buf.unpack("I")), key in keep)
    for _ in range(n_tensors):
        name = buf.string()
        n_dims = buf.unpack("I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise BadGGUF(f"{path} is damaged: tensor {name} has {n_dims} dimensions", "re-create it")
        shape = tuple(buf.unpack("Q") for _ in range(n_dims))
        raw_type = buf.unpack("I")
        try:
            qtype = gguf.GGMLQuantizationType(raw_type)
            gguf.GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise BadGGUF(f"{path}: tensor {name} has ggml type {raw_type}, which this gguf-py does not know",
                          "upgrade the gguf package, or re-create the file") from None
        header.tensors.append(TensorInfo(name, shape, qtype, buf.unpack("Q")))
    alignment = header.kv.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise BadGGUF(f"{path} has an invalid general.alignment {alignment!r}", "re-create it")
    header.data_offset = buf.pos + (-buf.pos % alignment)
    return header


def read_header(path: str | Path, keep: frozenset[str] = frozenset()) -> GGUFHeader:
    """Parse ``path``'s header; raise ``BadGGUF`` (one line) for anything that is not a complete GGUF.

    Arrays longer than MAX_KEPT_ARRAY are skipped unless their key is in ``keep`` (e.g. the vocabulary, for the
    load checks in ``loadcheck``)."""
    path = Path(path)
    if not path.exists():
        raise BadGGUF(f"{path} does not exist", "check the path")
    if not path.is_file():
        raise BadGGUF(f"{path} is not a file", "give the path of a .gguf file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < 8 or f.read(4) != b"GGUF":
            raise BadGGUF(f"{path} is not a GGUF file (it does not start with the GGUF magic)",
                          "convert Hugging Face checkpoints first: edgepack convert MODEL_DIR")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            header = _parse(_Buf(mm, size, path), path, size, keep)
    for t in header.tensors:
        block = gguf.GGML_QUANT_SIZES[t.type][0]
        if t.shape[0] % block:
            raise BadGGUF(f"{path} is damaged: tensor {t.name} has rows of {t.shape[0]}, not a multiple of "
                          f"{t.type.name}'s block of {block}", "re-create it")
        end = header.data_offset + t.offset + t.n_bytes
        if end > size:
            raise BadGGUF(f"{path} is truncated: tensor {t.name} ends at byte {end}, the file has {size}",
                          "re-create or re-download it")
    return header
