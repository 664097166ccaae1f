"""How much a quantized model differs from its source: the measures llama.cpp's perplexity tool reports.

Method (as ``llama-perplexity`` and its ``--kl-divergence`` mode, tools/perplexity/perplexity.cpp): the text is
tokenized with the reference model's tokenizer (BOS added), cut into chunks of ``ctx`` tokens, each chunk's
first token replaced by BOS; each chunk is evaluated from an empty cache, and only the second half of its
positions is scored (each scored token has at least ctx/2 tokens of context). At every scored position:

- negative log-likelihood of the next token under each model -> perplexity (PPL) of each, their ratio/difference;
- KL divergence KL(P_ref || P_model) between the two full next-token distributions (all n_vocab entries);
- whether the two models' most likely tokens agree (llama.cpp's "same top p").

Logits come from llama-cpp-python (``Llama(logits_all=True)``), i.e. the same llama.cpp that runs the model on
the device. The reference's log-probabilities are kept in a temporary file (float32, one row per scored
position), so memory stays at one model and one chunk however long the text; several models are measured
against one reference pass.

The built-in text (``edgepack/data/war-and-peace-excerpt.txt``) is Book Ten, chapters XXII-XXV of Tolstoy's War
and Peace (Louise and Aylmer Maude's English translation, public domain), about 23,500 characters.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import BadGGUF, EdgepackError, OutputError, UsageError
from .ggufheader import read_header
from . import limits
from .loadcheck import check_loadable, probe
from .progress import QUIET, Progress

DEFAULT_CTX = 512
BUILTIN_TEXT = "war-and-peace-excerpt.txt"


@dataclass(frozen=True)
class Quality:
    """A model's quality against its reference, in the one set of names edgepack uses for it everywhere (fit,
    bench, bundles, reports): the headline figures of an ``EvalResult``. None: not measured."""

    mean_kld: float | None = None  # nats per token
    ppl: float | None = None
    ref_ppl: float | None = None
    delta_ppl: float | None = None  # ppl - ref_ppl
    top1_agreement: float | None = None  # fraction of positions where both models' argmax agree

    @classmethod
    def from_json(cls, data) -> Quality:
        """From a mapping with these names (a bench result's, a cached step's) or an object with these attributes
        (an ``EvalResult``); missing ones are None."""
        get = data.get if isinstance(data, dict) else (lambda k: getattr(data, k, None))
        return cls(**{f.name: get(f.name) for f in fields(cls)}) if data else cls()

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class EvalResult:
    """One model against the reference. Uncertainties (``*_err``) are one standard error, as llama.cpp's."""

    model: Path
    reference: Path
    text: str  # "built-in: ..." or the file's path
    ctx: int
    n_chunks: int
    n_scored: int  # token positions scored
    ppl: float
    ppl_err: float
    ref_ppl: float
    ref_ppl_err: float
    delta_ppl: float  # ppl - ref_ppl
    ln_ppl_ratio: float  # mean ln(PPL(model)/PPL(ref))
    ln_ppl_ratio_err: float
    mean_kld: float  # nats per token
    mean_kld_err: float
    median_kld: float
    p99_kld: float
    max_kld: float
    top1_agreement: float  # fraction of positions where both models' argmax agree
    top1_agreement_err: float
    rms_delta_p: float  # RMS of p_model(next) - p_ref(next)
    seconds: float

    @property
    def quality(self) -> Quality:
        return Quality.from_json(self)


def builtin_text() -> str:
    return resources.files("edgepack").joinpath("data", BUILTIN_TEXT).read_text(encoding="utf-8")


def read_text(path: str | Path | None) -> tuple[str, str]:
    """(text, label) for ``--text FILE``, or the built-in text."""
    if path is None:
        return builtin_text(), f"built-in: {BUILTIN_TEXT}"
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"text file {path} does not exist", "give a UTF-8 text file with --text") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"text file {path} is not UTF-8 ({exc.reason} at byte {exc.start})",
                         "convert it to UTF-8 first") from None
    except OSError as exc:
        raise UsageError(f"cannot read text file {path}: {exc.strerror}", "check the path") from None
    return text, str(path)


def evaluate(model: str | Path, ref: str | Path, *, text: str | Path | None = None, ctx: int = DEFAULT_CTX,
             threads: int = 0, progress: Progress = QUIET) -> EvalResult:
    """Compare ``model`` with ``ref`` (e.g. Q4_K_M vs its F16 source) on ``text`` (a file; default built-in)."""
    return evaluate_many([model], ref, text=text, ctx=ctx, threads=threads, progress=progress)[0]


def evaluate_many(models: list[str | Path], ref: str | Path, *, text: str | Path | None = None,
                  ctx: int = DEFAULT_CTX, threads: int = 0, progress: Progress = QUIET) -> list[EvalResult]:
    """``evaluate`` for several models against one reference pass."""
    ref = Path(ref)
    models = [Path(m) for m in models]
    if ctx < 16 or ctx % 2:
        raise UsageError(f"--ctx must be an even number >= 16, not {ctx}", "llama.cpp's default is 512")
    ref_header = _check_model(ref)
    for m in models:
        _check_same_vocab(ref, ref_header, m, _check_model(m))
    body, label = read_text(text)
    threads = limits.threads(threads) or (os.cpu_count() or 1)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgepack-eval-") as tmp:
        with _load(ref, ctx, threads) as llm:
            tokens = _chunks(llm, body, ctx, label)
            n_chunks, first = len(tokens), ctx // 2
            n_scored = ctx - 1 - first
            n_vocab = llm.n_vocab()
            store = _reference_store(Path(tmp) / "ref.npy", n_chunks * n_scored, n_vocab)
            ref_nll = np.empty(n_chunks * n_scored, np.float64)
            ref_top = np.empty(n_chunks * n_scored, np.int64)
            progress.start(f"reference {ref.name}", n_chunks)
            for i, chunk in enumerate(tokens):
                logp = _log_softmax(_logits(llm, chunk)[first:ctx - 1])
                rows = slice(i * n_scored, (i + 1) * n_scored)
                store[rows] = logp
                ref_nll[rows] = -logp[np.arange(n_scored), chunk[first + 1:]]
                ref_top[rows] = logp.argmax(-1)
                progress.advance()
            progress.finish()
        ref_seconds = time.monotonic() - started

        results = []
        for m in models:
            m_started = time.monotonic()
            nll = np.empty_like(ref_nll)
            kld = np.empty_like(ref_nll)
            same = np.empty(ref_nll.shape, bool)
            with _load(m, ctx, threads) as llm:
                progress.start(f"measuring {m.name}", n_chunks)
                for i, chunk in enumerate(tokens):
                    logq = _log_softmax(_logits(llm, chunk)[first:ctx - 1])
                    rows = slice(i * n_scored, (i + 1) * n_scored)
                    logp = np.asarray(store[rows])
                    nll[rows] = -logq[np.arange(n_scored), chunk[first + 1:]]
                    # KL(P||Q) = sum_v p_v (log p_v - log q_v), in float64 for the sum over the vocabulary.
                    kld[rows] = np.einsum("ij,ij->i", np.exp(logp), logp - logq, dtype=np.float64)
                    same[rows] = logq.argmax(-1) == ref_top[rows]
                    progress.advance()
                progress.finish()
            results.append(_summary(m, ref, label, ctx, n_chunks, nll, ref_nll, kld, same,
                                    ref_seconds + time.monotonic() - m_started))
    return results


def _reference_store(path: Path, rows: int, n_vocab: int) -> np.ndarray:
    """The reference's log-probabilities, memory-mapped in a temp file with its space reserved up front: writing
    into a sparse mapping on a full disk kills the process with SIGBUS instead of raising an error."""
    need = rows * n_vocab * 4
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise OutputError(f"evaluation needs {need / 1e6:,.0f} MB of temp space for the reference logits, "
                          f"{path.parent} has {free / 1e6:,.0f} MB free",
                          "free space, point TMPDIR at a larger disk, or use a shorter --text / smaller --ctx")
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, n_vocab))
    try:
        _reserve(path)
    except OSError as exc:
        raise OutputError(f"cannot reserve {need / 1e6:,.0f} MB of temp space in {path.parent} ({exc.strerror})",
                          "free space, or point TMPDIR at a larger disk") from None
    return store


def _reserve(path: Path) -> None:
    """Allocate the file's blocks now (posix_fallocate; where the OS lacks it, the free-space check stands)."""
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _check_model(path: Path):
    """The model's header, after the checks that keep llama.cpp from crashing on it: ``loadcheck.probe`` refuses
    what would abort llama.cpp and loads the vocabulary in a child process (the file may be a stranger's)."""
    header = read_header(path)
    if header.get("general.type") == "adapter":
        raise BadGGUF(f"{path} is a LoRA adapter, not a model", "evaluate the base model (with the adapter merged)")
    if not any(len(t.shape) >= 2 for t in header.tensors):
        raise BadGGUF(f"{path} has no weights (a vocab-only GGUF?)", "give a model GGUF")
    return probe(path)


def _check_same_vocab(ref: Path, ref_header, model: Path, header) -> None:
    def vocab(h):  # headers from loadcheck.probe: the token list is kept
        return h.get("tokenizer.ggml.model"), len(h.get("tokenizer.ggml.tokens"))

    same_tokens = ref_header.get("tokenizer.ggml.tokens") == header.get("tokenizer.ggml.tokens")
    if vocab(ref_header) != vocab(header) or not same_tokens:
        raise UsageError(f"{model.name} and {ref.name} do not share a vocabulary ({vocab(header)} vs "
                         f"{vocab(ref_header)})", "compare a model with the GGUF it was quantized from")


@contextlib.contextmanager
def open_llama(path: str | Path, **kwargs):
    """``llama_cpp.Llama(path, verbose=False, **kwargs)`` without llama.cpp's extra-buffer weight repacking.

    With llama-cpp-python 0.3.36 on AMX hosts, the repacked (AMX) buffers of Q8_0/Q4_K/Q6_K/... weights segfault
    on the first decode; plain CPU buffers compute the same model. The default-params hook is swapped only while
    the model loads, and the model is closed on exit.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as lib

    default_params = lib.llama_model_default_params

    def no_repack():
        params = default_params()
        params.use_extra_bufts = False
        return params

    check_loadable(path)
    lib.llama_model_default_params = no_repack
    try:
        llm = llama_cpp.Llama(str(path), verbose=False, **kwargs)
    except (ValueError, RuntimeError) as exc:
        raise BadGGUF(f"llama.cpp cannot load {path}: {exc}", "check that it is a complete model GGUF") from exc
    finally:
        lib.llama_model_default_params = default_params
    try:
        yield llm
    finally:
        llm.close()


def _load(path: Path, ctx: int, threads: int):
    return open_llama(path, n_ctx=ctx, n_batch=min(ctx, 512), n_ubatch=min(ctx, 512), logits_all=True,
                      n_threads=threads, n_threads_batch=threads)


def _chunks(llm, text: str, ctx: int, label: str) -> list[np.ndarray]:
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if len(tokens) < ctx:
        raise UsageError(f"the text ({label}) is only {len(tokens)} tokens; --ctx {ctx} needs at least {ctx}",
                         "use a longer --text or a smaller --ctx")
    add_bos, bos = llm._model.add_bos_token(), llm.token_bos()
    chunks = []
    for i in range(len(tokens) // ctx):
        chunk = np.array(tokens[i * ctx:(i + 1) * ctx], dtype=np.int64)
        if add_bos:
            chunk[0] = bos
        chunks.append(chunk)
    return chunks


def _logits(llm, chunk: np.ndarray) -> np.ndarray:
    llm.reset()
    llm.eval(chunk.tolist())
    return np.asarray(llm.scores[:len(chunk)], dtype=np.float32)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _mean_err(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    mean = float(values.mean())
    return mean, float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def _summary(model: Path, ref: Path, label: str, ctx: int, n_chunks: int, nll: np.ndarray, ref_nll: np.ndarray,
             kld: np.ndarray, same: np.ndarray, seconds: float) -> EvalResult:
    log_ppl, log_ppl_err = _mean_err(nll)
    ref_log_ppl, ref_log_ppl_err = _mean_err(ref_nll)
    ratio, ratio_err = _mean_err(nll - ref_nll)
    kld_mean, kld_err = _mean_err(kld)
    top1, n = float(same.mean()), len(same)
    ppl, ref_ppl = math.exp(log_ppl), math.exp(ref_log_ppl)
    delta_p = np.exp(-nll) - np.exp(-ref_nll)
    if not np.isfinite(kld_mean) or not np.isfinite(log_ppl):
        raise EdgepackError(f"{model.name} produced non-finite logits on the text", "the model file is broken")
    return EvalResult(
        model=model, reference=ref, text=label, ctx=ctx, n_chunks=n_chunks, n_scored=n,
        ppl=ppl, ppl_err=ppl * log_ppl_err, ref_ppl=ref_ppl, ref_ppl_err=ref_ppl * ref_log_ppl_err,
        delta_ppl=ppl - ref_ppl, ln_ppl_ratio=ratio, ln_ppl_ratio_err=ratio_err,
        mean_kld=kld_mean, mean_kld_err=kld_err, median_kld=float(np.median(kld)),
        p99_kld=float(np.quantile(kld, 0.99)), max_kld=float(kld.max()),
        top1_agreement=top1, top1_agreement_err=math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else 0.0,
        rms_delta_p=float(np.sqrt(np.mean(delta_p ** 2))), seconds=round(seconds, 3))
