"""Importance matrix (imatrix): which input columns of each weight matrix carry the most signal.

llama.cpp's low-bit quantizers weigh each weight's rounding error by how large the activations it multiplies
are. The statistic is, for every weight matrix W used in a matrix product W·x, the sum over calibration tokens
of x_j² for each input column j, and the number of tokens (llama.cpp's tools/imatrix/imatrix.cpp, whose facts
this module follows; the code is edgepack's own):

- the model runs over the calibration text in chunks of ``ctx`` tokens, each chunk from an empty cache, its
  first token replaced by BOS when the vocabulary adds one, every position's logits requested (otherwise
  llama.cpp skips the last layer's FFN for all but the last token);
- the scheduler's eval callback (``cb_eval``) sees every graph node: a ``MUL_MAT`` whose weight is a
  ``blk.*`` tensor (and ``output.weight`` with ``process_output``) over at least 16 F32 rows, and every
  ``MUL_MAT_ID`` (mixture-of-experts: the input of each token goes to the experts its router chose, so sums and
  counts are kept per expert) is collected; the tensor's name is the weight's, without backend prefixes;
- the per-column importance the quantizer uses is in_sum2 / count (per expert), 1 where an expert never ran.

Memory: the sums (float64, one per weight column per expert) plus one chunk's activations and logits; the text
is read and tokenized in blocks (edgepack.calibration), so a long calibration file costs no more than a short
one.

File: llama.cpp's GGUF imatrix (``general.type = imatrix``; per weight ``<name>.in_sum2``, F32, shape
[n_cols, n_mat] in ggml order, and ``<name>.counts``, F32, [1, n_mat]; ``imatrix.datasets``,
``imatrix.chunk_count``, ``imatrix.chunk_size``), which ``llama-quantize --imatrix`` reads. edgepack adds
``edgepack.imatrix.*`` keys (calibration sha256, model identity) that llama.cpp ignores. The legacy ``.dat``
format of older llama-imatrix builds is read too.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import BadGGUF, EdgepackError, ImatrixError, UsageError
from .calibration import Calibration, text_blocks
from .calibration import calibration as load_calibration
from .fileio import atomic_path
from .ggufheader import read_header
from .progress import QUIET, Progress

DEFAULT_CTX = 512  # llama-imatrix's default chunk size
MIN_ROWS = 16  # llama-imatrix ignores products over fewer rows (tiny batches say little)
KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
KEY_CALIBRATION = "edgepack.imatrix.calibration_sha256"
KEY_MODEL = "edgepack.imatrix.model"
KEY_MODEL_FINGERPRINT = "edgepack.imatrix.model_fingerprint"
KEY_PROCESS_OUTPUT = "edgepack.imatrix.process_output"


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


@dataclass(frozen=True)
class ImatrixResult:
    output: Path
    entries: int
    chunks: int
    chunk_size: int
    tokens: int
    seconds: float
    calibration_sha256: str


# ---------------------------------------------------------------------------------------------------------------
# Calibration text (edgepack.calibration) tokenized into chunks


def token_chunks(tokenize, blocks: Iterable[tuple[str, bool]], ctx: int, bos: int | None) -> Iterator[np.ndarray]:
    """Chunks of ``ctx`` token ids from (text, parse_special) blocks (BOS added at the text's start and put
    first in every chunk when ``bos`` is given, as llama-imatrix does); a last partial chunk is dropped."""
    buf = np.empty(0, np.int32)
    first = True
    for block, special in blocks:
        ids = np.asarray(tokenize(block.encode("utf-8"), first and bos is not None, special), np.int32)
        first = False
        buf = np.concatenate([buf, ids])
        while len(buf) >= ctx:
            chunk = buf[:ctx].copy()
            if bos is not None:
                chunk[0] = bos
            buf = buf[ctx:]
            yield chunk


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


# ---------------------------------------------------------------------------------------------------------------
# Computing


def compute(model: str | Path, text: Calibration | Path | str, output: str | Path, *, ctx: int = 0, chunks: int = 0,
            threads: int = 0, process_output: bool = False, dataset: str = "", progress: Progress = QUIET,
            ) -> ImatrixResult:
    """Run ``model`` over the calibration ``text`` (a ``Calibration``, a text file as ``Path``, or the text itself
    as ``str``) and write its
    importance matrix to ``output`` (GGUF, atomically).

    ``ctx``: tokens per chunk (0: 512, or the model's training context when smaller); ``chunks``: stop after
    this many (0: the whole text); ``dataset``: the name recorded in ``imatrix.datasets`` (default: the file's
    name). Raises ``EdgepackError`` subclasses.
    """
    model = Path(model)
    header = read_header(model)
    if header.get("general.type") == "adapter":
        raise BadGGUF(f"{model} is a LoRA adapter, not a model", "compute the imatrix of the base model")
    if ctx < 0 or chunks < 0 or threads < 0:
        raise UsageError("--ctx, --chunks and --threads must be >= 0", "0 picks the default")
    if isinstance(text, Path):
        text = Calibration((text,), text.name)
    if isinstance(text, Calibration):
        digest, dataset = text.sha256, dataset or text.label
    else:
        digest, dataset = hashlib.sha256(text.encode("utf-8")).hexdigest(), dataset or "text"
    threads = threads or (os.cpu_count() or 1)
    started = time.monotonic()
    collector = Collector(process_output)
    with _context(model, ctx, threads, collector) as (llm_ctx, vocab, n_ctx):
        import llama_cpp

        bos = llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        try:
            blocks = _blocks(text, header.get("tokenizer.chat_template"), vocab)
            done = _run(llm_ctx, vocab, batch, blocks, n_ctx, bos, chunks, collector, progress, model.name)
        finally:
            llama_cpp.llama_batch_free(batch)
    if done == 0:
        raise UsageError(f"the calibration text is shorter than one chunk of {n_ctx} tokens",
                         "give a longer text (a few hundred KB is usual) or a smaller --ctx")
    imatrix = Imatrix(entries=collector.result(), datasets=[dataset], chunk_count=done, chunk_size=n_ctx,
                      calibration_sha256=digest, model=str(header.get("general.name") or model.stem),
                      model_fingerprint=_fingerprint(model), process_output=process_output)
    if not imatrix.entries:
        raise EdgepackError(f"no matrix products of {model.name} were seen", "is it a text model llama.cpp runs?")
    write(imatrix, output)
    return ImatrixResult(output=Path(output), entries=len(imatrix.entries), chunks=done, chunk_size=n_ctx,
                         tokens=done * n_ctx, seconds=round(time.monotonic() - started, 3),
                         calibration_sha256=digest)


def ensure(model: str | Path, calibration: str | Path, output: str | Path, *, threads: int = 0, ctx: int = 0,
           process_output: bool = False, progress: Progress = QUIET) -> Imatrix:
    """The imatrix of ``model`` on ``calibration`` (``--calibration``'s value) at ``output``: the existing file
    when it was made from the same model file (size, mtime, inode) and the same text (sha256) with the same
    settings, else computed."""
    model, output = Path(model), Path(output)
    cal = load_calibration(calibration)
    if output.exists():
        with contextlib.suppress(EdgepackError):
            found = read(output)
            if (found.calibration_sha256 == cal.sha256 and found.model_fingerprint == _fingerprint(model)
                    and found.process_output == process_output and (not ctx or found.chunk_size == ctx)):
                if progress.enabled:
                    progress.start(f"imatrix {output.name} is up to date", 1)
                    progress.finish("(reused)")
                return found
    compute(model, cal, output, ctx=ctx, threads=threads, process_output=process_output, progress=progress)
    return read(output)


def _blocks(text: Calibration | str, chat_template, vocab) -> Iterator[tuple[str, bool]]:
    if isinstance(text, str):
        return ((block, False) for block in text_blocks(text))
    template = chat_template if isinstance(chat_template, str) and chat_template.strip() else None
    return text.blocks(template, _piece(vocab, "bos"), _piece(vocab, "eos"))


def _piece(vocab, which: str) -> str:
    """The text of the BOS/EOS token (for chat templates that write ``{{ bos_token }}``), "" when none."""
    import llama_cpp

    token = getattr(llama_cpp, f"llama_vocab_{which}")(vocab)
    if token < 0:
        return ""
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    return buf.raw[:max(n, 0)].decode("utf-8", "replace")


def _fingerprint(path: Path) -> str:
    from .quantize import source_fingerprint

    return source_fingerprint(path)


@contextlib.contextmanager
def _context(model: Path, ctx: int, threads: int, collector: Collector | None):
    """A llama.cpp model + context whose scheduler calls ``collector`` for every graph node (none: plain)."""
    import llama_cpp

    mparams = llama_cpp.llama_model_default_params()
    mparams.use_extra_bufts = False  # no repacked weight buffers (see evaluate.open_llama)
    _quiet_log(llama_cpp)
    handle = llama_cpp.llama_model_load_from_file(str(model).encode(), mparams)
    if not handle:
        raise BadGGUF(f"llama.cpp cannot load {model}", "check that it is a complete model GGUF")
    try:
        n_train = llama_cpp.llama_model_n_ctx_train(handle)
        n_ctx = ctx or min(DEFAULT_CTX, n_train if n_train > 0 else DEFAULT_CTX)
        if n_ctx < MIN_ROWS:
            raise UsageError(f"--ctx {n_ctx} is too small", f"use at least {MIN_ROWS} tokens per chunk")
        if n_train > 0 and n_ctx > n_train:  # positions past the training context give meaningless activations
            raise UsageError(f"--ctx {n_ctx} is longer than {model.name}'s training context ({n_train})",
                             f"use --ctx {n_train} or less")
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = n_ctx
        cparams.n_ubatch = min(n_ctx, 512)
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = threads
        if collector is not None:
            cparams.cb_eval = collector.callback
            cparams.cb_eval_user_data = None
        llm_ctx = llama_cpp.llama_init_from_model(handle, cparams)
        if not llm_ctx:
            raise EdgepackError(f"llama.cpp could not create a context of {n_ctx} tokens for {model.name}",
                                "try a smaller --ctx")
        try:
            yield llm_ctx, llama_cpp.llama_model_get_vocab(handle), n_ctx
        finally:
            llama_cpp.llama_free(llm_ctx)
    finally:
        llama_cpp.llama_model_free(handle)


_LOG_CALLBACK = None


def _quiet_log(llama_cpp) -> None:
    """llama.cpp's loader logs to stderr by default; keep edgepack's output clean (as Llama(verbose=False))."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def _tokenizer(vocab):
    import llama_cpp

    def tokenize(data: bytes, add_bos: bool, special: bool) -> np.ndarray:
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, capacity, add_bos, special)
        if n < 0:
            raise EdgepackError("llama.cpp could not tokenize the calibration text", "check that it is UTF-8 text")
        return np.frombuffer(buf, dtype=np.int32, count=n).copy()

    return tokenize


def _decode(llm_ctx, batch, chunk: np.ndarray) -> None:
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm_ctx), True)
    n = len(chunk)
    batch.n_tokens = n
    ctypes.memmove(batch.token, chunk.ctypes.data, n * 4)
    positions = np.arange(n, dtype=np.int32)  # kept alive until copied
    ctypes.memmove(batch.pos, positions.ctypes.data, n * 4)
    ctypes.memset(batch.logits, 1, n)  # every position: see the module docstring
    for i in range(n):
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
    status = llama_cpp.llama_decode(llm_ctx, batch)
    if status != 0:
        raise EdgepackError(f"llama.cpp failed to evaluate a chunk (llama_decode returned {status})",
                            "try a smaller --ctx")


def _run(llm_ctx, vocab, batch, blocks, n_ctx, bos, max_chunks, collector, progress, label) -> int:
    """Decode chunk after chunk (on a worker thread, so Ctrl-C reaches the caller at once); returns the count."""
    from .quantize import _run_interruptibly

    state = {"done": 0}

    def work():
        for chunk in token_chunks(_tokenizer(vocab), blocks, n_ctx, bos):
            if not state["done"]:  # started at the first chunk: a too-short text prints only its error
                progress.start(f"imatrix of {label}", max_chunks or 0)
            _decode(llm_ctx, batch, chunk)
            if collector.error is not None:
                raise collector.error
            state["done"] += 1
            progress.advance()
            if max_chunks and state["done"] >= max_chunks:
                break

    _run_interruptibly(work)
    if state["done"]:
        progress.finish(f"{state['done']} chunks of {n_ctx} tokens")
    return state["done"]


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
        writer.add_string("edgepack.version", __version__)
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
