"""Reports (``report.write_report``): the one shipped in every bundle of a line (fit and quality only, no host
timings, so it is reproducible byte for byte) and the build's own, with this host's measurements."""

from __future__ import annotations

import json
from pathlib import Path

from ...fileio import sha256_file
from ..artifacts import Fits, Variant
from ..cache import content_key
from ..context import BuildContext
from ..plan import BASE_LINE
from .bench import host_facts

REPORT_FILES = ("report.md", "report.html", "results.json")


def bundle_report(ctx: BuildContext, line: str, fit: dict) -> dict[str, Path]:
    """{name in the bundle: file} of a line's bundle report; {} when reports are off."""
    from ...report import write_report

    if not ctx.config.report:
        return {}

    def work(tmp: Path) -> dict:
        rep = write_report({"fit": fit}, tmp)
        return {"html": rep.html.name, "markdown": rep.markdown.name}

    done, folder = ctx.step("bundle-report", line, {"fit": fit}, work, code=__name__)
    return {"report.html": folder / done["html"], "report.md": folder / done["markdown"]}


def build_report(ctx: BuildContext, fits: Fits, variants: list[Variant]) -> tuple[Path, dict[str, str]] | None:
    """The build's report, made in its step folder (``publish.publish_report`` copies it out): (the folder,
    {file name: sha256}); None when reports are off."""
    from ...report import write_report

    if not ctx.config.report:
        return None
    fit_json = {line: res.to_dict() for line, res in fits.lines.items()}
    data: dict = {"fit": fit_json[BASE_LINE] if BASE_LINE in fit_json else next(iter(fit_json.values()))}
    models = [bench_row(v) for v in variants if v.line == BASE_LINE and v.bench]
    if models:
        data["bench"] = {"host": host_facts(ctx), "models": models, "reference": None, "quality_note": ""}
    if len(fit_json) > 1:
        data["lines"] = fit_json

    def work(tmp: Path) -> dict:
        write_report(data, tmp)
        return {"files": {name: sha256_file(tmp / name) for name in REPORT_FILES}}

    digest = content_key(data=json.dumps(data, sort_keys=True, default=str))
    done, folder = ctx.step("report", "report", {"data": digest}, work, code=__name__)
    return folder, done["files"]


def bench_row(v: Variant) -> dict:
    """A variant's row in the report's measurements table."""
    from ...evaluate import Quality

    quality = Quality.from_json(v.quality).to_json()
    return {**v.bench, "path": str(v.path), "name": v.name, "quant": v.quant,
            "imatrix": v.imatrix.file if v.imatrix else None,
            "quality": quality}
