"""The order of a build: source -> the vision projector (of a vision-language source) -> convert (and merges) ->
per unit: imatrix + quantize, or adapter -> eval per line -> bench -> fit -> per line and profile: bundle (made,
then published) -> report -> constraints.

``build`` calls every step itself, so `edgepack build` is three calls from any stage: ``cli.build`` ->
``build`` -> ``steps.<step>`` -> the stage."""

from __future__ import annotations

import time

from .. import cilog
from ..config import BuildConfig
from ..errors import UsageError
from ..fileio import folder_lock, prepare_output_dir, sweep_temp_files
from ..progress import QUIET, Progress
from .artifacts import AdapterGGUF, BuildResult, BundleSummary, Fits, Variant
from .context import BuildContext
from .plan import BASE_LINE, Unit, lines, plan
from .publish import publish_bundle, publish_report, remove_stale_bundles
from .steps.adapter import convert_lora
from .steps.bench import bench_variant
from .steps.bundle import make_bundle
from .steps.convert import convert_base
from .steps.evaluate import evaluate_line
from .steps.fit import constraint_failures, fit_lines
from .steps.imatrix import line_imatrix
from .steps.merge import merge_line
from .steps.mix import line_sensitivity, mix_variant
from .steps.mmproj import convert_projector
from .steps.quantize import quantize_variant
from .steps.report import build_report, bundle_report
from .steps.source import resolve_source


def build(config: BuildConfig, *, only: str | None = None, progress: Progress = QUIET) -> BuildResult:
    """Run the build described by ``config`` (see the package doc); ``only``: one unit of ``plan``. Raises
    ``EdgepackError`` subclasses."""
    ctx, started, cfg = BuildContext(config, progress), time.monotonic(), config
    with folder_lock(prepare_output_dir(cfg.output_dir), "build"):  # two builds in one folder would race
        units = _start(ctx, only)
        src = resolve_source(ctx)
        projector = convert_projector(ctx, src)  # first: what it refuses, it refuses before any other work
        bases = {BASE_LINE: convert_base(ctx, src)}
        bases |= {line.name: merge_line(ctx, src, line) for line in lines(cfg)[1:]
                  if any(u.line == line.name for u in units)}
        variants, adapters, imatrices, sensitivities = [], [], {}, {}
        for unit in units:
            if unit.kind == "adapter":
                adapters.append(convert_lora(ctx, next(a for a in cfg.adapters if a.name == unit.adapter), src))
                continue
            if unit.line not in imatrices:
                imatrices[unit.line] = line_imatrix(ctx, bases[unit.line])
            imatrix = imatrices[unit.line]
            if unit.kind == "variant":
                variants.append(quantize_variant(ctx, unit, bases[unit.line], imatrix))
                continue
            if unit.line not in sensitivities:  # a line's trials, measured once for all its devices
                sensitivities[unit.line] = line_sensitivity(ctx, bases[unit.line], imatrix, [
                    u.profile for u in units if u.kind == "mix" and u.line == unit.line], projector)
            variants.append(mix_variant(ctx, unit, bases[unit.line], imatrix, sensitivities[unit.line], projector))
        measured = {v.name: v for line, base in bases.items()  # one reference pass per line
                    for v in evaluate_line(ctx, [v for v in variants if v.line == line], base)}
        variants = [bench_variant(ctx, measured[v.name]) for v in variants]
        by_name = {v.name: v for v in variants}
        if only is not None:
            return _result(ctx, started, variants, adapters, only=only, projector=projector)
        fits = fit_lines(ctx, variants, projector)
        bundles: list[BundleSummary] = []
        for line, res in fits.lines.items() if fits else ():
            report_files = bundle_report(ctx, line, res.to_dict())
            for profile, pick in sorted(res.picks.items()):
                if pick is None:
                    bundles.append(BundleSummary(profile, line, None, None, reason=res.summary[profile]))
                    continue
                made = make_bundle(ctx, fits, line, profile, by_name[pick], src, adapters, report_files,
                                   projector)
                bundles.append(publish_bundle(ctx, made))
        remove_stale_bundles(ctx, bundles)
        report = build_report(ctx, fits, variants) if fits else None
        failures = constraint_failures(ctx, fits, variants)
        _ci_summary(ctx, fits, failures)
        return _result(ctx, started, variants, adapters, fits=fits, bundles=bundles, failures=failures,
                       projector=projector, report=publish_report(ctx, *report) if report else None)


def _start(ctx: BuildContext, only: str | None) -> list[Unit]:
    """Sweep what a killed build left (safe under the lock) and pick the units to run."""
    ctx.cache.sweep()
    for folder in (ctx.out / "bundles", ctx.out / "report"):
        for name in sweep_temp_files(folder):
            ctx.log(f"[build] removed {folder.name}/{name}, left by an interrupted build")
    units = [u for u in plan(ctx.config) if only is None or u.key == only]
    if only is not None and not units:
        raise UsageError(f"--only {only}: no such unit in this build",
                         f"`edgepack plan --matrix` lists them: {', '.join(u.key for u in plan(ctx.config))}")
    return units


def _ci_summary(ctx: BuildContext, fits: Fits | None, failures: list[str]) -> None:
    """Under GitHub Actions: failed constraints as warnings, the pick per device in the job summary."""
    for failure in failures:
        cilog.warning(f"constraint failed: {failure}")
    cilog.job_summary(cilog.picks_markdown(
        ctx.config.name, {k: r.to_dict() for k, r in fits.lines.items()} if fits else {}, BASE_LINE, failures,
        [f"[{s.step}] {s.label}: {s.reason}" for s in ctx.steps if s.status == "skipped"]))


def _result(ctx: BuildContext, started: float, variants: list[Variant], adapters: list[AdapterGGUF],
            **collected) -> BuildResult:
    return BuildResult(output_dir=ctx.out, steps=ctx.steps, variants={v.name: v for v in variants},
                       adapters={a.name: a for a in adapters}, seconds=round(time.monotonic() - started, 2),
                       **collected)
