"""Reading a Hugging Face model folder: config.json and safetensors, one tensor at a time.

The safetensors header is parsed here (it is 8 bytes of length + JSON) so that every error a user can meet
-- a missing shard, a truncated file, a garbled header, an index pointing at nothing -- becomes a
``BadCheckpoint`` with the file named, before a single byte is written. Tensor data is read with
``readinto`` into a fresh buffer per tensor: memory stays at one tensor whatever the model size (mmap'd
pages would accumulate in the resident set over a whole model). Nothing in the folder is executed: no
pickle, no remote code.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadCheckpoint
from ..fileio import parse_json

# safetensors dtype -> (numpy dtype used to hold the raw bytes, bytes per element).
# BF16 has no numpy type: it is carried as uint16 and widened exactly (see floats.bf16_to_f32).
SAFETENSORS_DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "F64": (np.dtype("<f8"), 8),
}

# The safetensors format allows 100 MiB, but Python's JSON parser turns that into gigabytes of objects. Real
# headers hold ~100 bytes per tensor: 16 MiB is >100,000 tensors in one file, far more than any checkpoint shard.
MAX_HEADER_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives on disk and what it is."""

    name: str
    dtype: str  # safetensors dtype string: F32, F16, BF16, ...
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in ``file``
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def load_json(path: Path, what: str) -> dict:
    """Load a JSON object, turning every failure into a BadCheckpoint naming the file."""
    if not path.is_file():
        raise BadCheckpoint(f"{what} not found: {path}", "is this a Hugging Face model folder?")
    data = parse_json(path.read_bytes(), path.name, BadCheckpoint, f"re-download {path.name}")
    if not isinstance(data, dict):
        raise BadCheckpoint(f"{path.name} is not a JSON object", f"re-download {path.name}")
    return data


def _ints(value) -> bool:
    """A list of non-negative integers (JSON numbers without a fraction; not booleans)."""
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate one safetensors file's header; return its tensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BadCheckpoint(f"{path.name} is truncated (no header)", f"re-download {path.name}")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise BadCheckpoint(f"{path.name} is not a safetensors file (bad header length)",
                                    f"re-download {path.name}")
            header_bytes = f.read(header_len)
    except OSError as exc:
        raise BadCheckpoint(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from exc
    header = parse_json(header_bytes, f"{path.name} has a garbled safetensors header", BadCheckpoint,
                        f"re-download {path.name}")
    if not isinstance(header, dict):
        raise BadCheckpoint(f"{path.name} has a garbled safetensors header", f"re-download {path.name}")

    data_start = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = (entry.get(k) for k in ("dtype", "shape", "data_offsets")) \
            if isinstance(entry, dict) else (None, None, None)
        if not (isinstance(dtype, str) and _ints(shape) and _ints(offsets) and len(offsets) == 2
                and offsets[0] <= offsets[1] and len(shape) <= 8):
            raise BadCheckpoint(f"{path.name}: malformed header entry for {name!r} (dtype, shape and data_offsets "
                                "must be a string, a list of non-negative integers and [begin, end])",
                                f"re-download {path.name}")
        shape, (begin, end) = tuple(shape), offsets
        if data_start + end > size:
            raise BadCheckpoint(f"{path.name} is truncated: {name} ends at byte {data_start + end}, file has {size}",
                                f"re-download {path.name}")
        tensors[name] = TensorInfo(name, dtype, shape, path, data_start + begin, end - begin)
    return tensors


class Checkpoint:
    """A model folder's safetensors, indexed by tensor name; reads one tensor at a time."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = self._find_files(folder)
        self.tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            for name, info in read_safetensors_header(file).items():
                if name in self.tensors:
                    raise BadCheckpoint(f"tensor {name} appears in two files ({self.tensors[name].file.name}, "
                                        f"{file.name})", "remove the stray safetensors file")
                self.tensors[name] = info
        self._check_index()

    @staticmethod
    def _find_files(folder: Path) -> list[Path]:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = load_json(index, "safetensors index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise BadCheckpoint(f"{index.name} has no weight_map", "re-download the index file")
            for file in weight_map.values():  # a shard is a file of this folder: never a path out of it
                if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
                    raise BadCheckpoint(f"{index.name} names the shard {file!r}, which is not a file name in "
                                        "this folder", "re-download the index file")
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise BadCheckpoint(f"missing safetensors shard(s): {', '.join(missing)}",
                                    "download every file listed in model.safetensors.index.json")
            return [folder / n for n in names]
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            others = sorted(p.name for p in folder.glob("*") if p.suffix in {".bin", ".pth", ".pt", ".ckpt", ".h5"})
            found = f" (found {', '.join(others[:4])})" if others else ""
            raise BadCheckpoint(f"no .safetensors weights in {folder}{found}",
                                "edgepack reads safetensors only (never pickle); save the model with "
                                "save_pretrained(safe_serialization=True)")
        return files

    def _check_index(self) -> None:
        index = self.folder / "model.safetensors.index.json"
        if not index.is_file():
            return
        weight_map = load_json(index, "safetensors index")["weight_map"]
        for name, file in weight_map.items():
            info = self.tensors.get(name)
            if info is None or info.file.name != file:
                raise BadCheckpoint(f"index says {name} is in {file}, but it is not there",
                                    "re-download the shard or the index")

    def read(self, name: str, start: int = 0, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Read one tensor (or ``shape`` elements of it from element ``start``) into a new array of its raw
        dtype (BF16 as uint16)."""
        return read_tensor(self.tensors[name], start, shape)


def read_tensor(info: TensorInfo, start: int = 0, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """One tensor from its file into a new array of its raw dtype (BF16 as uint16), shaped as stored; or only
    the contiguous block of ``shape`` elements that starts at element ``start`` (one expert of a fused tensor)."""
    name = info.name
    if info.dtype not in SAFETENSORS_DTYPES:
        raise BadCheckpoint(f"tensor {name} has dtype {info.dtype}, which edgepack cannot convert",
                            "supported source dtypes: " + ", ".join(SAFETENSORS_DTYPES))
    np_dtype, elem_bytes = SAFETENSORS_DTYPES[info.dtype]
    if info.nbytes != info.n_elements * elem_bytes:
        raise BadCheckpoint(f"tensor {name}: {info.nbytes} bytes do not match shape {list(info.shape)}",
                            f"re-download {info.file.name}")
    shape = info.shape if shape is None else shape
    nbytes = math.prod(shape) * elem_bytes
    if start < 0 or start * elem_bytes + nbytes > info.nbytes:
        raise ValueError(f"elements {start}..+{math.prod(shape)} lie outside {name}")  # a family bug, not user data
    out = np.empty(shape, dtype=np_dtype)
    with open(info.file, "rb", buffering=0) as f:
        f.seek(info.offset + start * elem_bytes)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise BadCheckpoint(f"{info.file.name} is truncated inside {name}", f"re-download {info.file.name}")
            got += n
    return out


def total_size_bytes(paths: list[Path]) -> int:
    return sum(os.path.getsize(p) for p in paths)
