"""The order of a build: source -> convert (and merges) -> per unit: imatrix, quantize, or adapter -> eval per
line -> bench -> fit -> bundles and report, published -> constraints, CI summary."""

from __future__ import annotations

import time

from .. import cilog
from ..config import BuildConfig
from ..errors import UsageError
from ..fileio import folder_lock, prepare_output_dir, sweep_temp_files
from ..progress import QUIET, Progress
from .artifacts import BuildResult, Variant
from .context import BuildContext
from .plan import BASE_LINE, lines, plan
from .publish import publish_report, write_bundles
from .steps.adapter import convert_lora
from .steps.bench import bench_variant
from .steps.convert import convert_base
from .steps.evaluate import evaluate_line
from .steps.fit import constraint_failures, fit_lines
from .steps.imatrix import line_imatrix
from .steps.merge import merge_line
from .steps.quantize import quantize_variant
from .steps.report import build_report
from .steps.source import resolve_source


def build(config: BuildConfig, *, only: str | None = None, progress: Progress = QUIET) -> BuildResult:
    """Run the build described by ``config`` (see the package doc). Raises ``EdgepackError`` subclasses."""
    out = prepare_output_dir(config.output_dir)
    with folder_lock(out, "build"):  # two builds into one folder would race on every step and bundle
        return _build(BuildContext(config, progress), only)


def _build(ctx: BuildContext, only: str | None) -> BuildResult:
    started, cfg = time.monotonic(), ctx.config
    ctx.cache.sweep()
    for folder in (ctx.out / "bundles", ctx.out / "report"):  # left by a kill -9; safe under the lock
        for name in sweep_temp_files(folder):
            ctx.log(f"[build] removed {folder.name}/{name}, left by an interrupted build")
    units = [u for u in plan(cfg) if only is None or u.key == only]
    if only is not None and not units:
        raise UsageError(f"--only {only}: no such unit in this build",
                         f"`edgepack plan --matrix` lists them: {', '.join(u.key for u in plan(cfg))}")
    src = resolve_source(ctx)
    bases = {BASE_LINE: convert_base(ctx, src)}
    for line in lines(cfg)[1:]:
        if any(u.line == line.name for u in units):
            bases[line.name] = merge_line(ctx, src, line)
    variants, adapters, imatrices = [], [], {}
    for unit in units:
        if unit.kind == "adapter":
            adapters.append(convert_lora(ctx, next(a for a in cfg.adapters if a.name == unit.adapter), src))
            continue
        if unit.line not in imatrices:
            imatrices[unit.line] = line_imatrix(ctx, bases[unit.line])
        variants.append(quantize_variant(ctx, unit, bases[unit.line], imatrices[unit.line]))
    measured: list[Variant] = []
    for line, base in bases.items():  # one reference pass per line for every missing eval
        measured += evaluate_line(ctx, [v for v in variants if v.line == line], base)
    by_name = {v.name: v for v in measured}
    variants = [bench_variant(ctx, by_name[v.name]) for v in variants]
    result = dict(output_dir=ctx.out, steps=ctx.steps, variants={v.name: v for v in variants},
                  adapters={a.name: a for a in adapters}, only=only)
    if only is None:
        fits = fit_lines(ctx, variants)
        bundles, report = [], None
        if fits is not None:
            bundles = write_bundles(ctx, fits, variants, adapters, src)
            made = build_report(ctx, fits, variants)
            report = publish_report(ctx, *made) if made else None
        failures = constraint_failures(ctx, fits, variants)
        for failure in failures:
            cilog.warning(f"constraint failed: {failure}")
        cilog.job_summary(cilog.picks_markdown(
            cfg.name, {k: r.to_dict() for k, r in fits.lines.items()} if fits else {}, BASE_LINE, failures,
            [f"[{s.step}] {s.label}: {s.reason}" for s in ctx.steps if s.status == "skipped"]))
        result.update(fits=fits, bundles=bundles, report=report, failures=failures)
    return BuildResult(**result, seconds=round(time.monotonic() - started, 2))
