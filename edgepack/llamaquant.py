"""One run of llama.cpp's quantizer (``llama_model_quantize`` through llama-cpp-python's ctypes bindings): the
parameters, the metadata written into the output (kv overrides), the importance matrix as the C API takes it
(``llama_model_imatrix_data``, since March 2026), the tensor-type overrides, and llama.cpp's log, read for
progress, fallbacks and the failure reason. ``edgepack.quantize`` decides what to run; this module only runs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError


@dataclass(frozen=True)
class Fallback:
    """A tensor llama.cpp gave another type than the mix asked for, because its rows do not fit the blocks."""

    tensor: str
    ncols: int
    wanted: str
    used: str


# llama.cpp's log lines (src/llama-quant.cpp): one "[  i/  n] name ..." per tensor, and a warning per fallback.
_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")
_FALLBACK = re.compile(r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by\s+\d+ \(required for type\s+(\S+)\)"
                       r".*?-> falling back to\s+(\S+)", re.S)
_FAILED = re.compile(r"failed to quantize: (.*)")


def run_interruptibly(call, name: str = "llama-cpp"):
    """Run a long C call on a daemon thread and wait for it here, so Ctrl-C reaches this (main) thread at once.

    Called directly, the C quantizer holds the main thread: a Ctrl-C would land inside the Python log callback,
    where ctypes can only print "Exception ignored" and carry on. llama.cpp's quantizer has no abort hook, so on
    Ctrl-C the thread is abandoned (it dies with the process) and the caller's temp file is removed as usual.
    """
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the waiting thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class LlamaLog:
    """Routes llama.cpp's log to Python while the quantizer runs: counts tensors for the progress bar, keeps the
    text for the fallback report and the failure reason. The default logger is restored afterwards."""

    def __init__(self, on_tensor):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._on_tensor = on_tensor
        self.chunks: list[str] = []
        self.status = 0  # llama_model_quantize's return value
        self._callback = llama_cpp.llama_log_callback(self._log)  # kept referenced while installed

    def _log(self, _level: int, text: bytes, _user_data) -> None:
        line = text.decode("utf-8", "replace")
        self.chunks.append(line)
        if _TENSOR_LINE.match(line):
            self._on_tensor()

    @contextlib.contextmanager
    def installed(self) -> Iterator[LlamaLog]:
        llama_cpp = self._llama_cpp
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        try:
            yield self
        finally:
            default = getattr(getattr(llama_cpp, "_logger", None), "llama_log_callback", None)
            if default is not None:
                llama_cpp.llama_log_set(default, ctypes.c_void_p(0))

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def fallbacks(self) -> list[Fallback]:
        return [Fallback(m[0], int(m[1]), m[2].upper(), m[3].upper()) for m in _FALLBACK.findall(self.text)]

    def failure(self) -> str:
        found = _FAILED.findall(self.text)
        return found[-1].strip() if found else "no reason given (see --debug)"


def _kv_overrides(llama_cpp, pairs: dict[str, str | int]):
    """A zero-terminated ``llama_model_kv_override`` array of string and integer values (llama.cpp writes them
    to the output: llama_model_quantize_impl, "kv_overrides")."""
    arr = (llama_cpp.llama_model_kv_override * (len(pairs) + 1))()
    for item, (key, value) in zip(arr, pairs.items()):
        item.key = key.encode()
        if isinstance(value, int):
            item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            item.value.val_i64 = value
            continue
        item.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
        encoded = value.encode()
        if len(encoded) >= 128:
            raise UsageError(f"metadata value for {key} is too long for llama.cpp ({len(encoded)} bytes)")
        item.value.val_str = encoded
    return arr


def _c_imatrix(llama_cpp, values: dict[str, np.ndarray]):
    """The NULL-name-terminated ``llama_model_imatrix_data`` array, and the buffers it points into (keep both)."""
    arr = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()
    keep = []
    for item, (name, data) in zip(arr, sorted(values.items())):
        encoded = name.encode()
        keep += [encoded, data]
        item.name = encoded
        item.data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        item.size = data.size
    return arr, keep


def llama_quantize(src: Path, dst: Path, *, ftype: int, threads: int, output_tensor_type: int | None = None,
                   token_embedding_type: int | None = None, pure: bool = False, allow_requantize: bool = False,
                   metadata: dict[str, str | int] | None = None, importance: dict[str, np.ndarray] | None = None,
                   overrides: list[tuple[str, int]] = (), on_tensor=lambda: None) -> LlamaLog:
    """Quantize ``src`` into ``dst`` to llama_ftype ``ftype``; the log, whose ``status`` is llama.cpp's return
    value (0: done). ``importance``: per weight the per-column importance (``Imatrix.importance``);
    ``overrides``: (regex, ggml type) pairs, first match wins; ``on_tensor`` is called once per tensor."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    if output_tensor_type is not None:
        params.output_tensor_type = output_tensor_type
    if token_embedding_type is not None:
        params.token_embedding_type = token_embedding_type
    params.pure = pure
    params.allow_requantize = allow_requantize
    if importance is not None:
        c_imatrix, _buffers = _c_imatrix(llama_cpp, importance)  # referenced until the call returns
        params.imatrix = ctypes.cast(c_imatrix, type(params.imatrix))
    kv = _kv_overrides(llama_cpp, metadata or {})
    params.kv_overrides = ctypes.cast(kv, type(params.kv_overrides))
    if overrides:
        patterns = [p.encode() for p, _ in overrides]
        tt = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for item, pattern, (_, ggml_type) in zip(tt, patterns, overrides):
            item.pattern, item.type = pattern, ggml_type
        params.tt_overrides = ctypes.cast(tt, type(params.tt_overrides))
    log = LlamaLog(on_tensor)
    with log.installed():
        log.status = run_interruptibly(
            lambda: llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)),
            name="llama-quantize")
    return log
