"""The best mix per device (``[quantize] device_mixes``): a line's sensitivity trials, measured once (one cached
step, ``mix.measure`` on the calibration text), then for each named profile the mix of least predicted KLD that
fits it (``devicemix.device_mix``), a variant like the others: evaluated, benched, and picked or not by fit."""

from __future__ import annotations

from pathlib import Path

from ...fileio import sha256_file
from ..artifacts import BaseGGUF, Imatrix, ProjectorGGUF, Variant
from ..cache import content_key
from ..context import BuildContext
from ..plan import Unit, variant_name
from .fit import build_profiles, shipped_projector_bytes
from .quantize import keep_only


def line_sensitivity(ctx: BuildContext, base: BaseGGUF, imatrix: Imatrix | None, profiles: list[str],
                     projector: ProjectorGGUF | None) -> dict:
    """The sensitivity table of a line (``mix.Sensitivity.to_dict``). A named device whose memory cannot hold
    even the smallest mix is refused first, before the trials."""
    from ...devicemix import device_budget, refuse_unreachable_devices
    from ...mix import default_candidates, measure, sensitivity_text_of

    cfg = ctx.config
    projector_bytes = shipped_projector_bytes(projector)
    budgets = [device_budget(base.path, p, cfg.ctx, projector_bytes) for p in _profiles(ctx, profiles)]
    refuse_unreachable_devices(base.path, budgets, with_imatrix=imatrix is not None)
    text = sensitivity_text_of(cfg.calibration)

    def work(tmp: Path) -> dict:
        return measure(base.path, work_dir=tmp, imatrix=imatrix.path if imatrix else None, sensitivity_text=text,
                       threads=cfg.threads, progress=ctx.progress).to_dict()

    done, _ = ctx.step("sensitivity", f"tensor groups of {base.path.name}",
                       {"base": base.sha256, "imatrix": imatrix.sha256 if imatrix else None, "text": sha256_file(text),
                        "candidates": default_candidates(imatrix is not None)}, work, code=__name__)
    return done


def mix_variant(ctx: BuildContext, unit: Unit, base: BaseGGUF, imatrix: Imatrix | None, sens: dict,
                projector: ProjectorGGUF | None) -> Variant:
    """The mix for ``unit.profile``: chosen from ``sens``, quantized, checked against the device with fit."""
    from ...devicemix import device_mix
    from ...mix import Sensitivity

    cfg = ctx.config
    name = variant_name(cfg, unit)
    [profile] = _profiles(ctx, [unit.profile])

    def work(tmp: Path) -> dict:
        made = device_mix(base.path, Sensitivity.from_dict(sens), profile, cfg.ctx, tmp, unit.quant,
                          imatrix=imatrix.path if imatrix else None, projector_bytes=shipped_projector_bytes(projector),
                          threads=cfg.threads, progress=ctx.progress)
        out = keep_only(tmp, made.quantized.output, name)
        return {"file": out.name, "sha256": sha256_file(out), "size_bytes": out.stat().st_size,
                "mix": made.plan.tensor_types(), "predicted_kld": made.plan.predicted_kld,
                "budget": made.budget.describe()}

    done, folder = ctx.step("quantize", name, {"base": base.sha256, "sensitivity": content_key(sens=sens),
                                               "profile": profile.raw, "ctx": cfg.ctx,
                                               "imatrix": imatrix.sha256 if imatrix else None,
                                               "projector": projector.sha256 if projector else None}, work,
                           code=__name__)
    return Variant(name=name, line=unit.line, quant=unit.quant, unit=unit.key, path=folder / done["file"],
                   sha256=done["sha256"], size_bytes=done["size_bytes"], imatrix=imatrix)


def _profiles(ctx: BuildContext, names: list[str]):
    by_name = {p.name: p for p in build_profiles(ctx)}
    return [by_name[n] for n in names]
