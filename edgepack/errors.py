"""One error hierarchy for everything a user can get wrong or the world can break.

Every error carries a one-line ``message`` (what happened) and a ``hint`` (what to do about it). The CLI
prints both and exits with the class's ``exit_code``; tracebacks are only shown with ``--debug``.
Where a stdlib type is the natural thing to catch, the error subclasses it too (as huggingface_hub does).
"""

from __future__ import annotations


class EdgepackError(Exception):
    """Base of all errors edgepack reports to users."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line, always
        return self.message.replace("\n", " ")


class UsageError(EdgepackError, ValueError):
    """Bad option values or combinations."""

    exit_code = 2


class BadCheckpoint(EdgepackError):
    """The model folder is missing files, or holds files that are truncated, garbled or inconsistent."""

    exit_code = 3


class UnsupportedArchitecture(EdgepackError):
    """The checkpoint's architecture (or one of its settings) has no converter."""

    exit_code = 4


class TokenizerError(EdgepackError):
    """Tokenizer files are missing or use a scheme edgepack cannot reproduce exactly."""

    exit_code = 5


class OutputError(EdgepackError, OSError):
    """The output cannot be written: it exists, the folder is read-only, the disk is full."""

    exit_code = 6


class HubError(EdgepackError):
    """Talking to the Hugging Face Hub failed."""

    exit_code = 7


class BadGGUF(EdgepackError):
    """A file given as GGUF is not one, is truncated, or is not what the command needs."""

    exit_code = 8


class QuantizeError(EdgepackError):
    """llama.cpp's quantizer refused or failed."""

    exit_code = 9


class ProfileError(EdgepackError):
    """A device profile is malformed (file, key and reason in the message)."""

    exit_code = 10


class ConfigError(EdgepackError):
    """A pipeline config (edgepack.toml) is malformed (file:line in the message)."""

    exit_code = 11


class AdapterError(EdgepackError):
    """A LoRA adapter does not fit its base, or uses something edgepack cannot carry."""

    exit_code = 12


class VerifyError(EdgepackError):
    """A bundle failed verification (hash mismatch, missing file, GGUF does not load)."""

    exit_code = 13


class ConstraintError(EdgepackError):
    """``edgepack build --check``: a constraint failed (a profile lost its pick, a KLD limit was exceeded)."""

    exit_code = 14


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM: ``timeout``, CI cancellation, ``kill``). Raised by the CLI's
    signal handler; a KeyboardInterrupt, so every cleanup that runs on Ctrl-C (temp files, temp folders,
    locks) runs for it too. The CLI exits with 143 (128 + SIGTERM)."""

    exit_code = 143


class ImatrixError(EdgepackError):
    """An importance matrix that cannot be read, or that was made for another model."""

    exit_code = 15
