"""Bounds on every count and size that a user or a file can claim, in one place.

A number read from an option, a config.json or a GGUF decides how much memory and how many threads edgepack and
llama.cpp then ask for; a hostile or mistyped one must be refused with one line before it costs anything. Each
bound is llama.cpp's own hard limit where it has one (cited), or far above any real model otherwise.
"""

from __future__ import annotations

from .errors import UsageError

MAX_THREADS = 512  # GGML_MAX_N_THREADS (ggml/include/ggml.h): more aborts inside ggml
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS (src/llama-hparams.h): load_hparams asserts n_layer <= this
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS (src/llama-hparams.h)
# Chat templates: the largest published ones (tool-calling templates) are tens of KB. llama-cpp-python compiles
# the template on every load, at ~600x its size in memory (a 4 MB template cost 2.6 GB).
MAX_CHAT_TEMPLATE_BYTES = 256 * 1024
MAX_VOCAB = 4_000_000  # the largest vocabularies in use are ~262k tokens (Gemma 3/4)


def threads(value: int | None, option: str = "--threads") -> int:
    """A thread count from the user: 0/None means "every core" (returned as 0), else 1..MAX_THREADS."""
    if value is None or value == 0:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_THREADS:
        raise UsageError(f"{option} must be between 1 and {MAX_THREADS} (llama.cpp's limit), not {value!r}",
                         "use the number of CPU cores, or 0 for all of them")
    return value
