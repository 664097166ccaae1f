"""Computing an imatrix: the model run over calibration text in chunks, the collector listening (``compute``),
and the cached form ``quantize --calibration`` uses (``ensure``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..calibration import Calibration, text_blocks
from ..calibration import calibration as load_calibration
from ..errors import BadGGUF, EdgepackError, UsageError
from ..fileio import stat_fingerprint
from ..ggufheader import read_header
from ..progress import QUIET, Progress
from .collect import MIN_ROWS, Collector
from .data import Imatrix, read, write

DEFAULT_CTX = 512  # llama-imatrix's default chunk size


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
                      model_fingerprint=stat_fingerprint(model), process_output=process_output)
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
            if (found.calibration_sha256 == cal.sha256 and found.model_fingerprint == stat_fingerprint(model)
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
    from ..llamaquant import run_interruptibly

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

    run_interruptibly(work, name="imatrix")
    if state["done"]:
        progress.finish(f"{state['done']} chunks of {n_ctx} tokens")
    return state["done"]
