"""What llama.cpp would abort on, refused before a model is loaded.

llama.cpp reports most damage in a GGUF as an exception (llama-cpp-python turns it into a ValueError), but some of
it reaches a GGML_ASSERT or an unchecked read and ends the whole process with SIGABRT (exit 134) or SIGSEGV, with
no chance to print edgepack's one-line error. The facts below are from the llama.cpp that llama-cpp-python 0.3.36
vendors:

* ``src/llama-model.cpp`` (load_hparams) asserts ``0 < block_count <= LLAMA_MAX_LAYERS`` (512) and
  ``expert_count <= LLAMA_MAX_EXPERTS``; an unknown ``rope.scaling.type`` becomes "unspecified", which later
  code cannot handle;
* ``src/llama-vocab.cpp`` asserts that every token string is unique (the token -> id map must be as large as the
  list); SentencePiece (``llama``) and Unigram (``t5``) vocabularies index the scores array per token; a
  ``none``/``no_vocab`` tokenizer leaves no tokens, on which llama-cpp-python's tokenizer calls fail;
* hyperparameters are used without a finiteness check (a NaN ``layer_norm_rms_epsilon`` turns every logit NaN or
  trips an assert in the norm kernels);
* ``general.alignment`` must be a power of two, and tensor data aligned to less than GGML_MEM_ALIGN (16 bytes on
  64-bit hosts, ggml/include/ggml.h) makes the loader abort (seen here: 1 and 8 abort, 16 and up load).

``check_loadable`` refuses all of that from the header alone (milliseconds: the vocabulary is read as one array).
Whatever else kills llama.cpp is caught by loading in a child process (``edgepack.isolate``; ``probe`` here).
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from .errors import BadGGUF
from .ggufheader import GGUFHeader, read_header
from .limits import MAX_CHAT_TEMPLATE_BYTES, MAX_EXPERTS, MAX_LAYERS, MAX_VOCAB

ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # LLAMA_ROPE_SCALING_TYPES, src/llama-model.cpp
# tokenizer.ggml.model values llama-vocab.cpp builds a tokenizer for ("none"/"no_vocab" build none).
TOKENIZER_MODELS = ("llama", "bert", "gpt2", "t5", "rwkv", "plamo2", "gemma4", "hybriddna", "whitespace")
NEEDS_SCORES = ("llama", "t5")  # SentencePiece BPE and Unigram read a score per token
MIN_ALIGNMENT = 16  # GGML_MEM_ALIGN on 64-bit hosts

_VOCAB_KEYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"})
_HINT = "the file is damaged or hand-edited: re-create it (edgepack convert) or re-download it"


def _fail(path: Path, what: str) -> BadGGUF:
    return BadGGUF(f"{path}: {what}; llama.cpp would abort on it", _HINT)


def check_loadable(path: str | Path) -> GGUFHeader:
    """Read ``path``'s header and refuse what llama.cpp would crash on (``BadGGUF``, one line); the header."""
    path = Path(path)
    header = read_header(path, keep=_VOCAB_KEYS)
    arch = header.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise BadGGUF(f"{path} names no general.architecture", _HINT)
    alignment = header.get("general.alignment", 32)
    if alignment < MIN_ALIGNMENT:
        raise _fail(path, f"general.alignment is {alignment} (tensor data must be at least {MIN_ALIGNMENT}-byte "
                          "aligned)")
    _check_hparams(path, header, arch)
    _check_vocab(path, header)
    return header


def _check_hparams(path: Path, header: GGUFHeader, arch: str) -> None:
    n_layer = header.get(f"{arch}.block_count")
    if not isinstance(n_layer, int) or not 0 < n_layer <= MAX_LAYERS:
        raise _fail(path, f"{arch}.block_count is {n_layer!r} (llama.cpp accepts 1 to {MAX_LAYERS})")
    n_expert = header.get(f"{arch}.expert_count", 0)
    if isinstance(n_expert, int) and not 0 <= n_expert <= MAX_EXPERTS:
        raise _fail(path, f"{arch}.expert_count is {n_expert} (llama.cpp accepts at most {MAX_EXPERTS})")
    for key, value in header.kv.items():
        if not key.startswith(f"{arch}."):
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) not in (0, n_layer) and key.endswith(
                ("head_count", "head_count_kv", "feed_forward_length")):
            raise _fail(path, f"{key} has {len(value)} entries for {n_layer} layers")
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise _fail(path, f"{key} is {v}")
            if isinstance(v, int) and not isinstance(v, bool) and v < 0 and key.endswith(
                    ("_length", "_count", "head_count_kv", "head_count")):
                raise _fail(path, f"{key} is {v}")
    scaling = header.get(f"{arch}.rope.scaling.type")
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise _fail(path, f"{arch}.rope.scaling.type is {scaling!r} (llama.cpp knows {', '.join(ROPE_SCALING_TYPES)})")


def _check_vocab(path: Path, header: GGUFHeader) -> None:
    model = header.get("tokenizer.ggml.model")
    if model not in TOKENIZER_MODELS:
        raise BadGGUF(f"{path}: tokenizer.ggml.model is {model!r}: edgepack needs a vocabulary llama.cpp can "
                      f"tokenize with ({', '.join(TOKENIZER_MODELS)})", _HINT)
    tokens = header.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise _fail(path, "tokenizer.ggml.tokens is missing or not a list of strings")
    if len(tokens) > MAX_VOCAB:
        raise _fail(path, f"the vocabulary has {len(tokens)} tokens (at most {MAX_VOCAB} are accepted)")
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        dup = next(t for t in tokens if t in seen or seen.add(t))
        raise _fail(path, f"the vocabulary lists the token {dup!r} twice")
    scores = header.get("tokenizer.ggml.scores")
    if model in NEEDS_SCORES and (not isinstance(scores, list) or len(scores) < len(tokens)):
        raise _fail(path, f"a {model!r} vocabulary needs a score per token "
                          f"({len(scores) if isinstance(scores, list) else 0} scores for {len(tokens)} tokens)")
    if isinstance(scores, list) and not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
        raise _fail(path, "tokenizer.ggml.scores holds a non-finite or non-numeric score")
    types = header.get("tokenizer.ggml.token_type")
    if types is not None and (not isinstance(types, list) or len(types) < len(tokens)):
        raise _fail(path, "tokenizer.ggml.token_type has fewer entries than tokens")
    template = header.get("tokenizer.chat_template")
    if isinstance(template, str) and len(template.encode()) > MAX_CHAT_TEMPLATE_BYTES:
        raise BadGGUF(f"{path}: its chat template is {len(template.encode())} bytes (at most "
                      f"{MAX_CHAT_TEMPLATE_BYTES} are accepted: llama-cpp-python compiles it on every load)", _HINT)


def vocab_only_load(path: str) -> int:
    """Child-process side of ``probe``: load hyperparameters and vocabulary as llama.cpp does; the vocab size."""
    import llama_cpp

    try:
        with quiet_stderr():
            llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise BadGGUF(f"llama.cpp cannot load {path}: {exc}", _HINT) from None
    n_vocab = llm.n_vocab()
    llm.close()
    return n_vocab


def probe(path: str | Path) -> GGUFHeader:
    """``check_loadable``, then a vocabulary-only load by llama.cpp in a child process: a file that would crash
    llama.cpp while its hyperparameters or vocabulary are read becomes one ``BadGGUF`` line."""
    from . import isolate

    header = check_loadable(path)
    isolate.call(vocab_only_load, str(path), what=str(path))
    return header


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp logs to fd 2 while loading; keep the CLI's one-line error promise."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
