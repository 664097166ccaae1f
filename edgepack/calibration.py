"""Calibration text for the importance matrix: a user's file, or the set shipped with edgepack.

``--calibration FILE``: plain UTF-8 text, or, for a ``.jsonl`` file, one conversation per line
(``{"messages": [{"role": "user", "content": "..."}, ...]}``) rendered through the model's own chat template
(``tokenizer.chat_template`` in its GGUF) so a chat model is calibrated on what it will actually see; a model
without a template gets ``User: ...`` / ``Assistant: ...`` lines. Rendered chats are tokenized with special
tokens parsed (``<|im_start|>`` becomes the control token), plain text without.

``builtin``: ``edgepack/data/calibration.txt`` (about 48 K characters: English prose, code in eight
languages, paragraphs in eighteen languages) and ``calibration-chat.jsonl`` (twelve conversations); sources and
licences in ``edgepack/data/CALIBRATION.md``: the prose is Tolstoy's War and Peace (Maude translation, public
domain), everything else was written for edgepack and is licensed with it.

Everything is read in blocks (``TEXT_BLOCK_CHARS``), so memory does not grow with the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgepackError, UsageError
from .fileio import feed_file

TEXT_BLOCK_CHARS = 64 * 1024
BUILTIN = "builtin"
BUILTIN_FILES = ("calibration.txt", "calibration-chat.jsonl")


@dataclass(frozen=True)
class Calibration:
    files: tuple[Path, ...]  # read in order; ``.jsonl`` files are conversations
    label: str  # the dataset name recorded in the imatrix (imatrix.datasets)

    @property
    def sha256(self) -> str:
        """sha256 of the files' bytes, in order (for one file: the file's own sha256)."""
        digest = hashlib.sha256()
        for path in self.files:
            feed_file(path, digest)
        return digest.hexdigest()

    def blocks(self, chat_template: str | None = None, bos: str = "", eos: str = ""
               ) -> Iterator[tuple[str, bool]]:
        """(text, parse_special) blocks: plain files in pieces cut at line ends, conversations rendered."""
        for path in self.files:
            if path.suffix == ".jsonl":
                for text in render_chats(path, chat_template, bos, eos):
                    yield text, chat_template is not None
            else:
                for text in text_blocks(path):
                    yield text, False


def calibration(spec: str | Path) -> Calibration:
    """``--calibration`` -> a checked ``Calibration`` (every file readable UTF-8, every conversation well-formed),
    before any work."""
    if str(spec) == BUILTIN:
        from importlib import resources

        data = resources.files("edgepack").joinpath("data")
        return Calibration(tuple(Path(str(data.joinpath(name))) for name in BUILTIN_FILES), "edgepack:builtin")
    path = Path(spec)
    if path.is_dir():
        raise UsageError(f"calibration text {path} is a folder", "give a UTF-8 text file, or 'builtin'")
    try:
        with open(path, encoding="utf-8") as f:
            while f.read(TEXT_BLOCK_CHARS):
                pass
    except FileNotFoundError:
        raise UsageError(f"calibration text {path} does not exist", "give a UTF-8 text file, or 'builtin'") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"calibration text {path} is not UTF-8 ({exc.reason})", "convert it to UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read calibration text {path}: {exc.strerror}", "check the path") from None
    if path.suffix == ".jsonl":
        for _ in _conversations(path):
            pass
    return Calibration((path,), path.name)


def text_blocks(source: str | Path | io.TextIOBase, block_chars: int = TEXT_BLOCK_CHARS) -> Iterator[str]:
    """The text in blocks of about ``block_chars``, each cut after a line end (the whole text when shorter).
    Each block is tokenized on its own: a SentencePiece vocabulary may add its leading space at a block start,
    one token per ~64 K characters that can differ from tokenizing the whole text at once."""
    stream = source if isinstance(source, io.TextIOBase) else None
    if stream is None:
        stream = io.StringIO(source) if isinstance(source, str) else open(source, encoding="utf-8")
    with contextlib.closing(stream):
        pending = ""
        while True:
            piece = stream.read(block_chars)
            if not piece:
                break
            pending += piece
            cut = pending.rfind("\n") + 1
            if cut and len(pending) >= block_chars:
                yield pending[:cut]
                pending = pending[cut:]
        if pending:
            yield pending


def _conversations(path: Path) -> Iterator[list[dict]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
                if not messages or not all(isinstance(m["role"], str) and isinstance(m["content"], str)
                                           for m in messages):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise UsageError(f"{path.name}:{number} is not a conversation",
                                 'each line must be {"messages": [{"role": "user", "content": "..."}, ...]}') from None
            yield messages


def render_chats(path: Path, chat_template: str | None, bos: str = "", eos: str = "") -> Iterator[str]:
    """Each conversation as the model would see it: through its chat template (a Jinja2 sandbox, as
    llama.cpp's and transformers' templates are written), or as ``Role: content`` lines without one. A template
    that rejects system messages gets them folded into the first user turn."""
    if chat_template is None:
        for messages in _conversations(path):
            yield "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "\n"
        return
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        template = env.from_string(chat_template)
    except TemplateError as exc:
        raise EdgepackError(f"the model's chat template does not parse: {exc}",
                            "calibrate with a plain text file instead of conversations") from None
    for number, messages in enumerate(_conversations(path), 1):
        try:
            yield template.render(messages=messages, add_generation_prompt=False, bos_token=bos, eos_token=eos)
            continue
        except TemplateError:
            pass
        folded = _fold_system(messages)
        try:
            yield template.render(messages=folded, add_generation_prompt=False, bos_token=bos, eos_token=eos)
        except TemplateError as exc:
            raise EdgepackError(f"the model's chat template rejects conversation {number} of {path.name}: {exc}",
                                "calibrate with a plain text file instead of conversations") from None


def _fold_system(messages: list[dict]) -> list[dict]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest
