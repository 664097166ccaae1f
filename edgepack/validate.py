"""Checks for strings from untrusted places that end up in file paths or requests.

Each check returns the value when it is acceptable and raises ``ValueError`` with a short reason otherwise;
the caller wraps the reason in its own error type with the place the value came from (``file:line``,
the option, the manifest key), so one rule serves the config, the CLI, the Hub client and the bundle writer.
"""

from __future__ import annotations

import re

NAME_MAX_BYTES = 100  # a name becomes part of longer file names (<name>-<line>-<QUANT>.gguf); 255 is the OS limit
REVISION_MAX_BYTES = 255

# Characters that separate or mean something to a file system somewhere a bundle may be unpacked (POSIX,
# Windows), plus ASCII control characters. A name is one path component, portable everywhere.
_NAME_FORBIDDEN = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f]')
# git check-ref-format: no control characters, space, ~ ^ : ? * [ or backslash anywhere.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def safe_name(value: object, what: str = "name") -> str:
    """``value`` if it can be used as one file-name component everywhere: a non-empty string, at most
    ``NAME_MAX_BYTES`` bytes of UTF-8, no path separator or other reserved character, no control character,
    not starting with '.' (hidden files, '.' and '..') or '-' (read as an option by shell tools), not ending
    with '.' or a space (Windows drops them)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    bad = _NAME_FORBIDDEN.search(value)
    if bad:
        raise ValueError(f"{what} {value!r} contains {bad.group()!r}: a name is one file-name component "
                         "(letters, digits, '.', '_', '-', no path separators or control characters)")
    if value[0] in ".-":
        raise ValueError(f"{what} {value!r} starts with {value[0]!r}: names may not be hidden files, '..' or "
                         "look like an option")
    if value[-1] in ". ":
        raise ValueError(f"{what} {value!r} ends with {value[-1]!r}")
    if len(value.encode("utf-8")) > NAME_MAX_BYTES:
        raise ValueError(f"{what} is {len(value.encode('utf-8'))} bytes long; at most {NAME_MAX_BYTES}")
    return value


def git_revision(value: object) -> str:
    """``value`` if git and the Hub accept it as a revision: a branch or tag name (git check-ref-format rules:
    components separated by single '/', none starting with '.' or ending with '.lock', no '..', no '@{', no
    control characters, space, ~ ^ : ? * [ or backslash, not ending with '.' or '/'), or a (short) commit sha,
    which those rules admit too. A revision is never a path: it cannot start with '/' or hold '..'."""
    if not isinstance(value, str) or not value:
        raise ValueError("a revision must be a non-empty string")
    if len(value.encode("utf-8")) > REVISION_MAX_BYTES:
        raise ValueError(f"revision is {len(value.encode('utf-8'))} bytes long; at most {REVISION_MAX_BYTES}")
    bad = _REF_FORBIDDEN.search(value)
    reason = None
    if bad:
        reason = f"contains {bad.group()!r}"
    elif value == "@" or "@{" in value:
        reason = "contains '@{' or is '@'"
    elif value.startswith("/") or value.endswith("/") or "//" in value:
        reason = "starts or ends with '/' or holds '//'"
    elif ".." in value:
        reason = "contains '..'"
    elif value.endswith("."):
        reason = "ends with '.'"
    else:
        for part in value.split("/"):
            if part.startswith(".") or part.endswith(".lock"):
                reason = f"has a component {part!r} starting with '.' or ending with '.lock'"
                break
    if reason:
        raise ValueError(f"revision {value!r} is not a branch, tag or commit name: it {reason}")
    return value
