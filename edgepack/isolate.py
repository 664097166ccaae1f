"""Run one function in a child Python, so that a crash in llama.cpp becomes one error line, not a dead process.

llama.cpp ends the whole process (GGML_ASSERT -> abort, or a segfault) on some damaged or hostile GGUFs that no
header check can rule out in advance. Commands that load files a stranger wrote (``verify``, ``eval``) do that
load in a child: ``call(load_logits, ...)`` runs that function there, passes JSON arguments in and the JSON
result back. The caller hands over the function itself (a reader and a type checker follow it); the child finds
it again by its module and name, since a function cannot travel to another process as anything but its name. A signal in the child is reported as ``error_type`` with the signal's name; an
``EdgepackError`` raised in the child is raised again here with its class, message and hint.

The child is ``python -m edgepack.isolate MODULE:FUNCTION ARGS_JSON`` (no pickling, no shell): it prints one
JSON line on stdout, and exits 0 (``{"result": ...}``) or 3 (``{"error": ..., "hint": ..., "type": ...}``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
import json
import signal
import subprocess
import sys

from . import errors
from .errors import BadGGUF, EdgepackError

_ERROR_EXIT = 3


def call(fn: Callable, *args, what: str, error_type: type[EdgepackError] = BadGGUF,
         hint: str = "the file is damaged or was made for another llama.cpp: re-create it",
         timeout_s: float | None = None):
    """``fn(*args)`` in a child process; its JSON result, or one typed error. ``fn`` is a module-level function
    (the child imports it by ``fn.__module__`` and ``fn.__qualname__``) taking and returning JSON-able values.
    ``timeout_s``: the child is killed after that long and the call fails."""
    if not callable(fn) or "." in fn.__qualname__ or "<" in fn.__qualname__:
        raise TypeError(f"isolate.call needs a module-level function (the function itself), not {fn!r}")
    cmd = [sys.executable, "-m", "edgepack.isolate", f"{fn.__module__}:{fn.__qualname__}", json.dumps(list(args))]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise error_type(f"{what} did not finish within {timeout_s:g} s", hint) from None
    last = (res.stdout.strip().splitlines() or [""])[-1]
    if res.returncode in (0, _ERROR_EXIT):
        try:
            payload = json.loads(last)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and res.returncode == 0 and "result" in payload:
            return payload["result"]
        if isinstance(payload, dict) and "error" in payload:
            cls = getattr(errors, str(payload.get("type")), None)
            cls = cls if isinstance(cls, type) and issubclass(cls, EdgepackError) else error_type
            raise cls(payload["error"], payload.get("hint"))
    if res.returncode < 0:
        try:
            name = signal.Signals(-res.returncode).name
        except ValueError:
            name = f"signal {-res.returncode}"
        raise error_type(f"llama.cpp crashed ({name}) on {what}", hint)
    tail = (res.stderr.strip().splitlines() or ["no output"])[-1][:300]
    raise error_type(f"llama.cpp failed on {what} (exit {res.returncode}: {tail})", hint)


def _main(argv: list[str]) -> int:
    target, raw_args = argv
    module, _, function = target.partition(":")
    fn = getattr(importlib.import_module(module), function)
    try:
        result = fn(*json.loads(raw_args))
    except EdgepackError as exc:
        print(json.dumps({"error": exc.message, "hint": exc.hint, "type": type(exc).__name__}))
        return _ERROR_EXIT
    print(json.dumps({"result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
