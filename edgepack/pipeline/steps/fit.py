"""The fit of each line's variants onto the device profiles (``fit.fit``), and the constraints a build checks
(``--check``). Not cached: it reads only GGUF headers and profiles, and its result decides which bundles exist."""

from __future__ import annotations

import time

from ...errors import UsageError
from ..artifacts import Fits, ProjectorGGUF, Variant
from ..context import BuildContext
from ..plan import BASE_LINE, lines


def fit_lines(ctx: BuildContext, variants: list[Variant], projector: ProjectorGGUF | None = None) -> Fits | None:
    """Each line's variants on every profile; ``projector``: shipped beside every variant, so its memory counts."""
    from ... import fit as fit_mod

    if not variants:
        ctx.skip("fit", "all variants", "no quantized variant was built")
        return None
    cfg = ctx.config
    profiles = build_profiles(ctx)
    projector_bytes = shipped_projector_bytes(projector)
    started = time.monotonic()
    results = {}
    for line in lines(cfg):
        vs = []
        for v in variants:
            if v.line != line.name:
                continue
            desc = fit_mod.describe_gguf(v.path)
            desc.name = v.name
            # no host calibration: the fit (and so the manifests) must not depend on timing noise
            vs.append(fit_mod.Variant(desc, fit_mod.Quality.from_json(v.quality)))
        if vs:
            results[line.name] = fit_mod.fit(vs, profiles, n_ctx=cfg.ctx, min_tps=cfg.min_tps, max_kld=cfg.max_kld,
                                             projector_bytes=projector_bytes)
    ctx.record("fit", f"{len(variants)} variants x {len(profiles)} profiles", "", "computed", started)
    return Fits(lines=results, profiles={p.name: {"name": p.name, "display_name": p.display_name, "kind": p.kind}
                                        for p in profiles})


def shipped_projector_bytes(projector: ProjectorGGUF | None) -> int:
    """A shipped vision projector's memory on the device, which fit counts beside every variant (0: none)."""
    from ... import fit as fit_mod

    return fit_mod.projector_bytes(projector.path, projector.compute_bytes) if projector else 0


def build_profiles(ctx: BuildContext) -> list:
    """The profiles a build fits onto: those named under [profiles] names (every shipped one when none is)."""
    from ...profiles import load_profiles

    cfg = ctx.config
    available = load_profiles([str(p) for p in cfg.profile_paths])
    names = list(cfg.profiles) or sorted(available)
    missing = [n for n in names if n not in available]
    if missing:
        raise UsageError(f"unknown device profile {missing[0]!r}",
                         "`edgepack profiles list` shows them: " + ", ".join(sorted(available)))
    return [available[n] for n in names]


def constraint_failures(ctx: BuildContext, fits: Fits | None, variants: list[Variant]) -> list[str]:
    """What ``build --check`` fails on: a profile (of a line) without a pick, a variant over ``max_kld``."""
    if fits is None:
        return ["no fit was made (see the skipped steps)"]
    failures = []
    for line, res in fits.lines.items():
        for profile, pick in sorted(res.picks.items()):
            if pick is None:
                failures.append(f"{profile}{'' if line == BASE_LINE else ' (' + line + ')'}: {res.summary[profile]}")
    max_kld = ctx.config.max_kld
    if max_kld is not None:
        for v in variants:
            if v.quality is not None and v.quality.mean_kld > max_kld:
                failures.append(f"{v.name}: KLD {v.quality.mean_kld:.4f} exceeds max_kld {max_kld:g}")
    return failures
