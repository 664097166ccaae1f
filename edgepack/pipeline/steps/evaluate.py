"""Quality of each variant against its line's unquantized GGUF (PPL, KLD, top-1): one cached step per variant.

The variants whose step is not cached are measured together (``evaluate.evaluate_many``: one reference pass);
each result is then committed to its own step folder, so the cache stays one entry per branch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
from pathlib import Path

from ...fileio import sha256_file
from ..artifacts import BaseGGUF, Evaluation, Variant
from ..context import BuildContext


def evaluate_line(ctx: BuildContext, variants: list[Variant], base: BaseGGUF) -> list[Variant]:
    from ... import evaluate

    if not variants:
        return []
    cfg = ctx.config
    # the built-in text by its content too: a new text in a new release must not reuse old measurements
    text_sha = sha256_file(cfg.eval_text) if cfg.eval_text else hashlib.sha256(
        evaluate.builtin_text().encode()).hexdigest()
    ctx_tokens = max(16, min(cfg.ctx, 512) // 2 * 2)
    parts = {v.name: {"model": v.sha256, "ref": base.sha256, "text": text_sha, "tokens": cfg.eval_tokens,
                      "ctx": ctx_tokens} for v in variants}
    missing = [v for v in variants if not ctx.is_cached("eval", parts[v.name], __name__)]
    measured: dict[str, Evaluation] = {}
    started = time.monotonic()
    if missing:
        title = f"[eval] {', '.join(v.name for v in missing)} vs {base.path.name}"
        with ctx.group(title), tempfile.TemporaryDirectory(prefix="edgepack-build-") as tmp:
            ctx.log(f"{title} ...")
            text = None
            if cfg.eval_text is not None:
                text = Path(tmp) / "eval.txt"
                text.write_text(head_tokens(cfg.eval_text.read_text(encoding="utf-8"), cfg.eval_tokens),
                                encoding="utf-8")
            results = evaluate.evaluate_many([v.path for v in missing], base.path, text=text, ctx=ctx_tokens,
                                             threads=cfg.threads)
        measured = {v.name: Evaluation.of(r) for v, r in zip(missing, results)}
    share = round((time.monotonic() - started) / max(1, len(missing)), 2)  # the batch's time, shared out
    out = []
    for v in variants:
        done, _ = ctx.step("eval", v.name, parts[v.name], lambda tmp, name=v.name: dataclasses.asdict(measured[name]),
                           code=__name__, seconds=share)
        out.append(dataclasses.replace(v, quality=Evaluation.of(done)))
    return out


def head_tokens(text: str, n_tokens: int) -> str:
    """About ``n_tokens`` tokens of ``text`` (4 characters a token), cut at a line end: a bounded eval."""
    limit = n_tokens * 4
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit)
    return text[: cut if cut > 0 else limit]
