"""The eval callback that collects an imatrix: which graph nodes count and how their inputs are summed.

The scheduler's eval callback (``cb_eval``) sees every graph node: a ``MUL_MAT`` whose weight is a ``blk.*``
tensor (and ``output.weight`` with ``process_output``) over at least ``MIN_ROWS`` F32 rows, and every
``MUL_MAT_ID`` (mixture-of-experts: sums and counts per expert) is collected, as llama.cpp's
tools/imatrix/imatrix.cpp does (its facts; the code is edgepack's own).
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..errors import EdgepackError
from .data import Entry

MIN_ROWS = 16  # llama-imatrix ignores products over fewer rows (tiny batches say little)


# ---------------------------------------------------------------------------------------------------------------
# The ggml side: the tensor struct and the few helpers the eval callback needs


class _Tensor(ctypes.Structure):
    """``struct ggml_tensor`` (ggml/include/ggml.h: GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10,
    GGML_MAX_NAME 64); its size is checked against the library at load (``_Ggml``)."""


_Tensor._fields_ = [
    ("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
    ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(_Tensor) * 10), ("view_src", ctypes.POINTER(_Tensor)), ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]
_OP_OFFSET = _Tensor.op.offset
_GGML_OBJECT_SIZE = 32  # struct ggml_object (ggml.c): offs, size, next, type, padding[4]
_GGML_TYPE_F32 = 0
# enum ggml_op positions (ggml.h); checked by name against ggml_op_name at load.
_OPS = {"MUL_MAT": 29, "MUL_MAT_ID": 30}


class _Ggml:
    """The ggml functions the collector calls, bound from the library llama-cpp-python ships."""

    _instance: _Ggml | None = None

    def __init__(self):
        from llama_cpp import _ggml

        lib = _ggml.libggml
        self.is_host = lib.ggml_backend_buffer_is_host
        self.is_host.argtypes, self.is_host.restype = [ctypes.c_void_p], ctypes.c_bool
        self.tensor_get = lib.ggml_backend_tensor_get
        self.tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.tensor_get.restype = None
        self.nbytes = lib.ggml_nbytes
        self.nbytes.argtypes, self.nbytes.restype = [ctypes.c_void_p], ctypes.c_size_t
        op_name = lib.ggml_op_name
        op_name.argtypes, op_name.restype = [ctypes.c_int], ctypes.c_char_p
        overhead = lib.ggml_tensor_overhead
        overhead.argtypes, overhead.restype = [], ctypes.c_size_t
        if overhead() != _GGML_OBJECT_SIZE + ctypes.sizeof(_Tensor):
            raise EdgepackError("this llama-cpp-python build's ggml_tensor layout is not the one edgepack knows",
                                "install the pinned llama-cpp-python (0.3.36)")
        for name, value in _OPS.items():
            if op_name(value) != name.encode():
                raise EdgepackError(f"ggml op {value} is not {name} in this llama-cpp-python build",
                                    "install the pinned llama-cpp-python (0.3.36)")

    @classmethod
    def get(cls) -> _Ggml:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def weight_name(raw: bytes) -> str:
    """``CUDA0#blk.0.attn_k.weight#0`` -> ``blk.0.attn_k.weight`` (copies on other backends carry prefixes)."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#")[1]
    return name


class Collector:
    """The eval callback: accumulates squared inputs per weight column (see the module docstring)."""

    def __init__(self, process_output: bool = False):
        self.ggml = _Ggml.get()
        self.process_output = process_output
        self.sums: dict[str, np.ndarray] = {}  # float64 (n_mat, n_cols)
        self.counts: dict[str, np.ndarray] = {}  # int64 (n_mat,)
        self.error: BaseException | None = None
        self.callback = _eval_callback_type()(self._callback)  # kept referenced while the context lives

    def _wanted(self, t: _Tensor) -> bool:
        if t.op == _OPS["MUL_MAT_ID"]:
            return True
        src1 = t.src[1].contents
        if src1.ne[1] < MIN_ROWS or src1.type != _GGML_TYPE_F32:
            return False
        name = weight_name(t.src[0].contents.name)
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def _callback(self, t_ptr, ask, _user_data) -> bool:
        try:
            op = ctypes.c_int.from_address(t_ptr + _OP_OFFSET).value
            if op != _OPS["MUL_MAT"] and op != _OPS["MUL_MAT_ID"]:
                return False
            t = _Tensor.from_address(t_ptr)
            if ask:
                return self._wanted(t)
            if op == _OPS["MUL_MAT_ID"]:
                self._collect_experts(t)
            else:
                self._collect_dense(t)
            return True
        except BaseException as exc:  # noqa: BLE001 - raised again after the decode (C cannot take it)
            self.error = self.error or exc
            return True

    def _array(self, t: _Tensor, dtype) -> np.ndarray:
        """A tensor's data as a numpy array of shape (ne3, ne2, ne1, ne0), copied off-host when needed."""
        ne, nb = list(t.ne), list(t.nb)
        span = sum((n - 1) * s for n, s in zip(ne, nb)) + np.dtype(dtype).itemsize
        addr = ctypes.addressof(t)
        if t.buffer and t.data and self.ggml.is_host(t.buffer):
            raw = (ctypes.c_char * span).from_address(t.data)
            base = np.frombuffer(raw, dtype=np.uint8)
        else:
            nbytes = self.ggml.nbytes(addr)
            base = np.empty(nbytes, np.uint8)
            self.ggml.tensor_get(addr, base.ctypes.data, 0, nbytes)
        return _strided(base, dtype, ne, nb)

    def _entry(self, name: str, n_mat: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
        sums = self.sums.get(name)
        if sums is None:
            sums = self.sums[name] = np.zeros((n_mat, n_cols), np.float64)
            self.counts[name] = np.zeros(n_mat, np.int64)
        elif sums.shape != (n_mat, n_cols):
            raise EdgepackError(f"{name} is multiplied with inputs of two sizes ({sums.shape} vs {(n_mat, n_cols)})",
                                "report this model as a bug")
        return sums, self.counts[name]

    def _collect_dense(self, t: _Tensor) -> None:
        src0, src1 = t.src[0].contents, t.src[1].contents
        name = weight_name(src0.name)
        x = self._array(src1, np.float32)  # (ne3, ne2, ne1, ne0)
        n2, n3 = src0.ne[2], src0.ne[3]
        sums, counts = self._entry(name, n2 * n3, src1.ne[0])
        sq = np.einsum("abij,abij->abj", x, x)  # (ne3, ne2, ne0): summed over rows
        if n2 == 1 and n3 == 1:
            sums[0] += sq.sum((0, 1), dtype=np.float64)
        else:  # a 3D+ weight: activations broadcast over its matrices
            for i3 in range(sq.shape[0]):
                for i2 in range(sq.shape[1]):
                    sums[(i3 % n3) * n2 + (i2 % n2)] += sq[i3, i2]
        counts += int(np.prod(list(src1.ne)[1:])) // (n2 * n3)
        _check_finite(name, sums)

    def _collect_experts(self, t: _Tensor) -> None:
        src0, src1, ids_t = t.src[0].contents, t.src[1].contents, t.src[2].contents
        name = weight_name(src0.name)
        n_experts = src0.ne[0 + 2]
        x = self._array(src1, np.float32)[0]  # (n_tokens, ne1, n_cols); ne1 is n_used or 1 (broadcast)
        ids = self._array(ids_t, np.int32)[0, 0]  # (n_tokens, n_used)
        if src1.ne[3] != 1 or ids.shape[0] != x.shape[0]:
            raise EdgepackError(f"{name}: expert inputs of an unexpected shape {tuple(src1.ne)}",
                                "report this model as a bug")
        n_tokens, n_used = ids.shape
        rows = x[:, np.arange(n_used) % x.shape[1]].reshape(n_tokens * n_used, -1)
        experts = ids.reshape(-1).astype(np.int64)
        if experts.min(initial=0) < 0 or experts.max(initial=0) >= n_experts:
            raise EdgepackError(f"{name}: router chose an expert outside 0..{n_experts - 1}", "report this as a bug")
        sums, counts = self._entry(name, n_experts, src1.ne[0])
        order = np.argsort(experts, kind="stable")
        sorted_experts = experts[order]
        starts = np.flatnonzero(np.r_[True, sorted_experts[1:] != sorted_experts[:-1]])
        sq = np.square(rows[order], dtype=np.float32)
        sums[sorted_experts[starts]] += np.add.reduceat(sq, starts, axis=0, dtype=np.float64)
        counts += np.bincount(experts, minlength=n_experts)
        _check_finite(name, sums)

    def result(self) -> dict[str, Entry]:
        return {name: Entry(self.sums[name], self.counts[name]) for name in sorted(self.sums)}


def _strided(base: np.ndarray, dtype, ne: list[int], nb: list[int]) -> np.ndarray:
    typed = base[: (len(base) // np.dtype(dtype).itemsize) * np.dtype(dtype).itemsize].view(dtype)
    return np.lib.stride_tricks.as_strided(typed, shape=tuple(ne[::-1]), strides=tuple(nb[::-1]), writeable=False)


def _check_finite(name: str, sums: np.ndarray) -> None:
    if not np.isfinite(sums).all():
        raise EdgepackError(f"non-finite activations reached {name}", "the model file is broken")


def _eval_callback_type():
    import llama_cpp

    return llama_cpp.ggml_backend_sched_eval_callback

