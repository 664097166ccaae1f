"""``edgepack build`` and ``edgepack plan``."""

from __future__ import annotations

import json
import sys

import click

from ..errors import ConstraintError
from ..pipeline import BASE_LINE, build, matrix, plan
from ..progress import Progress
from . import cli
from ._output import emit_json, emit_table
from .config import config_options


@cli.command("build")
@config_options
@click.option("--only", metavar="KEY", help="Run one unit of work from `edgepack plan --matrix` and stop.")
@click.option("--check", is_flag=True, help="Exit non-zero (14) when a constraint fails: a profile loses its "
                                            "pick, or a variant's KLD exceeds constraints.max_kld.")
@click.option("--json", "as_json", is_flag=True, help="Print the build result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def build_command(build_config, only: str | None, check: bool, as_json: bool, quiet: bool) -> None:
    """Build everything a config asks for: convert, quantize, adapters, eval, bench, fit, bundles, report.

    Every step is cached by the content hash of its inputs and settings (in OUTPUT/.edgepack-cache): a
    re-run with nothing changed does no work, changing one quant type redoes only that branch, and an
    interrupted build resumes. CONFIG is an edgepack.toml, a pyproject.toml with [tool.edgepack] or a folder
    holding one (default: the current folder).

    \b
    Examples:
      edgepack build examples/demo/edgepack.toml -o out/demo
      edgepack build --check                  # in CI: fail when a constraint fails
      edgepack plan --matrix > matrix.json    # fan out: one job per entry ...
      edgepack build --only q4_k_m            # ... each running one unit; a final plain build collects
    """
    result = build(build_config, only=only, progress=Progress(enabled=not (quiet or as_json)))
    if as_json:
        emit_json(result.to_json())
    else:
        _summary(build_config, result)
    if check and result.failures and only is None:
        raise ConstraintError(f"{len(result.failures)} constraint(s) failed: " + "; ".join(result.failures),
                               "relax constraints in edgepack.toml or add variants that meet them")


def _summary(config, result) -> None:
    echo = click.echo
    if result.nothing_to_do:
        echo("nothing to do: every step is up to date")
    else:
        by_step: dict[str, int] = {}
        for s in result.ran:
            by_step[s.step] = by_step.get(s.step, 0) + 1
        cached = sum(1 for s in result.steps if s.status == "cached")
        echo(f"ran {len(result.ran)} step(s) ({', '.join(f'{k} {v}' for k, v in by_step.items())}), "
             f"{cached} cached, in {result.seconds:.1f}s")
    for s in result.skipped:
        echo(f"SKIPPED {s.step} {s.label}: {s.reason}", err=True)
    if result.only:
        echo(f"unit {result.only} done; run `edgepack build` without --only to collect fit, bundles and report")
        return
    rows = []
    for name, v in result.variants.items():
        q, b = v.quality, v.bench or {}
        rows.append((name, f"{v.size_bytes / 1e6:.1f}", _fmt(q and q.ppl, ".2f"), _fmt(q and q.mean_kld, ".4f"),
                     _fmt(q and q.top1_agreement, ".3f"), _fmt(b.get("tg_tokens_per_s"), ".0f")))
    if rows:
        echo("")
        emit_table(["variant", "MB", "PPL", "KLD", "top-1", "tok/s here"], rows)
    if result.bundles:
        echo("")
        emit_table(["device", "pick", "bundle"],
                   [(b.profile + ("" if b.line == BASE_LINE else f" ({b.line})"), b.variant or "-",
                     str(b.archive or b.folder) if b.folder else b.reason) for b in result.bundles])
    if result.report:
        echo(f"\nreport: {result.report}")
    for f in result.failures:
        echo(f"constraint failed: {f}", err=True)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@cli.command("plan")
@config_options
@click.option("--matrix", "as_matrix", is_flag=True, help="Print a GitHub Actions job matrix (JSON) on one line.")
def plan_command(build_config, as_matrix: bool) -> None:
    """List the independent units of work of a build (one per variant and per adapter conversion).

    \b
    Examples:
      edgepack plan examples/demo/edgepack.toml
      echo "matrix=$(edgepack plan --matrix)" >> "$GITHUB_OUTPUT"
      edgepack build --only q4_k_m
    """
    if as_matrix:
        sys.stdout.write(json.dumps(matrix(build_config), separators=(",", ":")) + "\n")
        return
    emit_table(["key", "kind", "line", "what"],
               [(u.key, u.kind, u.line, u.quant or u.adapter) for u in plan(build_config)])
