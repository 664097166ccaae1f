"""The build's log lines, and what GitHub Actions adds to them.

Outside CI a build prints plain step lines to stderr (``line``) and nothing else changes. Under GitHub Actions
(``GITHUB_ACTIONS=true``, set by the runner) it also
* folds each step that runs into a group (``::group::`` / ``::endgroup::``), its timing on the line after the
  fold so it shows while folded;
* turns skipped steps and failed constraints into ``::warning::`` annotations, shown on the run's page;
* appends a Markdown table of the pick per device to the file named by ``$GITHUB_STEP_SUMMARY`` (the job
  summary).
Workflow commands are read from stdout and stderr alike; they go to stderr so ``--json`` stays clean on stdout.
Annotations and the job summary are written even with ``--quiet`` or ``--json``: they are not progress lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

TITLE = "edgepack build"


def in_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _escape(text: str) -> str:
    """A workflow command's message: %, CR and LF are escaped, or the runner cuts or misreads the line."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape(text).replace(":", "%3A").replace(",", "%2C")


@contextlib.contextmanager
def group(title: str, enabled: bool = True) -> Iterator[None]:
    """Fold what is printed inside into one group under GitHub Actions; nothing otherwise."""
    fold = enabled and in_github_actions()
    if fold:
        line(f"::group::{_escape(title)}")
    try:
        yield
    finally:
        if fold:
            line("::endgroup::")


def warning(message: str) -> None:
    """A warning annotation under GitHub Actions (the caller prints its own plain line as well)."""
    if in_github_actions():
        line(f"::warning title={_escape_property(TITLE)}::{_escape(message)}")


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def picks_markdown(name: str, fit_lines: dict, base_line: str, failures: list[str], skipped: list[str]) -> str:
    """The job summary: one row per device (and adapter line) with its pick, or why there is none."""
    out = [f"### {TITLE}: {_cell(name)}", "",
           "| device | variant | size (MB) | projected tok/s | reason |", "|---|---|--:|--:|---|"]
    for line_name, res in fit_lines.items():
        for profile, pick in sorted(res["picks"].items()):
            device = profile if line_name == base_line else f"{profile} ({line_name})"
            reason = res["summary"][profile]
            if pick is None:
                out.append(f"| {_cell(device)} | - | - | - | {_cell(reason)} |")
                continue
            row = next(r for r in res["rows"] if r["profile"] == profile and r["variant"] == pick)
            reason = reason.removeprefix(f"{pick}: ")  # the summary starts with the pick's name
            out.append(f"| {_cell(device)} | {_cell(pick)} | {row['size_mb']:.1f} | {row['tg_tokens_per_s']:.1f} "
                       f"| {_cell(reason)} |")
    out += [""] + [f"- :warning: constraint failed: {_cell(f)}" for f in failures]
    out += [f"- skipped: {_cell(s)}" for s in skipped]
    return "\n".join(out).rstrip("\n") + "\n\n"


def job_summary(markdown: str) -> None:
    """Append to ``$GITHUB_STEP_SUMMARY`` (the runner sets it per step; appends from one step accumulate)."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not in_github_actions() or not path:
        return
    with open(Path(path), "a", encoding="utf-8") as f:
        f.write(markdown)


__all__ = ["in_github_actions", "line", "group", "warning", "picks_markdown", "job_summary"]
