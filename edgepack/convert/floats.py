"""Float format conversions for whole tensors, done by ggml's SIMD row converters.

llama.cpp ships ``ggml_cpu_bf16_to_fp32``, ``ggml_cpu_fp32_to_fp16`` and ``ggml_cpu_fp32_to_bf16`` in the
libggml-cpu library that llama-cpp-python installs; they are several times faster than numpy's casts and
round exactly as llama.cpp does. numpy is the fallback when the library cannot be loaded.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

CHUNK_ELEMENTS = 1 << 22  # numpy fallback: elements per step, bounding temporaries


@functools.lru_cache(maxsize=1)
def _ggml_cpu():
    try:
        import llama_cpp

        lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"))
        for name in ("ggml_cpu_bf16_to_fp32", "ggml_cpu_fp32_to_fp16", "ggml_cpu_fp32_to_bf16"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
            getattr(lib, name).restype = None
        return lib
    except (ImportError, OSError, AttributeError):
        return None


def _ggml_row_convert(data: np.ndarray, function: str, out_dtype, fallback) -> np.ndarray:
    """``data`` (contiguous) converted by ggml's row converter ``function`` into a new ``out_dtype`` array, or
    by ``fallback(data)`` (numpy) when the library cannot be loaded."""
    lib = _ggml_cpu()
    if lib is None:
        return fallback(data)
    out = np.empty(data.shape, dtype=out_dtype)
    getattr(lib, function)(data.ctypes.data, out.ctypes.data, data.size)
    return out


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """BF16 (carried as uint16) -> float32, exactly: BF16 is the top half of an IEEE float32."""
    return _ggml_row_convert(np.ascontiguousarray(raw), "ggml_cpu_bf16_to_fp32", np.float32,
                             lambda raw: (raw.astype(np.uint32) << 16).view(np.float32))


def f32_to_f16(data: np.ndarray) -> np.ndarray:
    return _ggml_row_convert(np.ascontiguousarray(data, dtype=np.float32), "ggml_cpu_fp32_to_fp16", np.float16,
                             lambda data: data.astype(np.float16))


def _f32_to_bf16_numpy(data: np.ndarray) -> np.ndarray:
    bits = data.view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(data), np.uint16(0x7FC0), rounded)


def f32_to_bf16(data: np.ndarray) -> np.ndarray:
    """float32 -> BF16 bits (uint16), round to nearest even with quiet NaNs, as ggml does."""
    return _ggml_row_convert(np.ascontiguousarray(data, dtype=np.float32), "ggml_cpu_fp32_to_bf16", np.uint16,
                             _f32_to_bf16_numpy)


def to_f32(data: np.ndarray, src_dtype: str) -> np.ndarray:
    if src_dtype == "BF16":
        return bf16_to_f32(data)
    return np.ascontiguousarray(data).astype(np.float32, copy=False)


def convert_chunked(flat: np.ndarray, src_dtype: str, out_dtype, narrow, *, inplace: bool = False) -> np.ndarray:
    """Widen ``flat`` to float32 and narrow it with ``narrow`` one chunk at a time: temporaries stay at one
    chunk instead of a float32 copy of the whole tensor. ``inplace``: the caller gives up ``flat``, and BF16 ->
    F16 (same width) is written over it chunk by chunk, so the tensor is held once, not twice."""
    lib = _ggml_cpu()
    same_width = inplace and src_dtype == "BF16" and out_dtype == np.float16 and flat.flags.c_contiguous \
        and flat.flags.writeable
    out = flat.view(np.float16) if same_width else np.empty(flat.shape, dtype=out_dtype)
    if lib is not None and src_dtype == "BF16" and out_dtype in (np.float16, np.float32):
        # ggml writes straight into the output: no per-chunk arrays, no extra copy. In place, each chunk is
        # widened into the scratch before its F16 values overwrite it.
        flat = np.ascontiguousarray(flat)
        if out_dtype == np.float32:
            lib.ggml_cpu_bf16_to_fp32(flat.ctypes.data, out.ctypes.data, flat.size)
            return out
        scratch = np.empty(min(flat.size, CHUNK_ELEMENTS), dtype=np.float32)
        for start in range(0, flat.size, CHUNK_ELEMENTS):
            n = min(CHUNK_ELEMENTS, flat.size - start)
            lib.ggml_cpu_bf16_to_fp32(flat.ctypes.data + 2 * start, scratch.ctypes.data, n)
            lib.ggml_cpu_fp32_to_fp16(scratch.ctypes.data, out.ctypes.data + 2 * start, n)
        return out
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        out[start:start + CHUNK_ELEMENTS] = narrow(to_f32(flat[start:start + CHUNK_ELEMENTS], src_dtype))
    return out
