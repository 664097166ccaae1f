"""``edgepack report``."""

from __future__ import annotations

from pathlib import Path

import click

from ..report import write_report
from . import cli
from ._output import emit_json


@cli.command("report")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=Path("report"), show_default=True,
              help="Output folder for report.md, report.html and results.json.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def report_command(results: Path, out: Path, as_json: bool) -> None:
    """Write a Markdown and a self-contained HTML report (plots inline, no network) from fit/bench results.

    RESULTS is `edgepack fit --json` output, or a JSON object {"fit": ..., "bench": ...}.

    \b
    Examples:
      edgepack fit *.gguf --bench bench.json --json -o fit.json
      edgepack report fit.json -o report/
    """
    res = write_report(results, out)
    if as_json:
        emit_json(res)
        return
    click.echo(f"wrote {res.markdown}, {res.html} ({res.n_plots} plots), {res.json}")
