"""One bundle (``bundle.write_bundle``): the variant a profile picked, the line's adapters, the line's report and
the manifest, with its archive, made in the step folder like every other step (``publish`` copies it out)."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from ...errors import BadGGUF
from ..artifacts import AdapterGGUF, Bundle, Fits, ProjectorGGUF, ResolvedSource, Variant
from ..context import BuildContext
from ..plan import BASE_LINE, bundle_folder_name, line_model_name

FIT_FIELDS = ("memory_total_mb", "usable_mb", "fits", "tg_tokens_per_s", "pp_tokens_per_s", "memory", "backend",
              "bits_per_weight", "size_mb")


def make_bundle(ctx: BuildContext, fits: Fits, line: str, profile_name: str, variant: Variant, src: ResolvedSource,
                adapters: list[AdapterGGUF], report_files: dict[str, Path],
                projector: ProjectorGGUF | None = None) -> Bundle:
    """The bundle of ``variant``, the pick of ``profile_name`` on ``line``. ``adapters``: shipped beside the base
    line's model; ``report_files``: {name in the bundle: file}; ``projector``: the source's vision projector,
    shipped beside every line's model (role ``mmproj``)."""
    from ...bundle import MANIFEST, BundleAdapter, tool_versions, write_bundle
    from ...evaluate import Quality
    from ...fileio import sha256_file

    cfg = ctx.config
    profile = fits.profiles[profile_name]
    fit_row = asdict(next(r for r in fits.lines[line].rows if r.profile == profile_name and r.variant == variant.name))
    name = bundle_folder_name(profile_name, line)
    shipped = [BundleAdapter(name=a.name, file=a.path, scale=a.scales[0], sha256=a.sha256,
                             source_sha256=a.source_sha256) for a in adapters] if line == BASE_LINE else []
    quality = Quality.from_json(variant.quality).to_json() if variant.quality else {}
    fit = {k: fit_row[k] for k in FIT_FIELDS}
    runtime = dict(fit_row["settings"])
    parts = {"model": variant.sha256, "adapters": [(a.name, a.scale, str(a.source_sha256)) for a in shipped],
             "adapter_files": [a.sha256 for a in shipped], "fit": fit, "quality": quality, "runtime": runtime,
             "source": src.facts, "profile": profile, "archive": cfg.archive, "tools": tool_versions(),
             "report": {k: sha256_file(f) for k, f in report_files.items()}}
    if projector is not None:  # absent otherwise: a text model's bundle keys stay as they were
        parts["mmproj"] = projector.sha256

    def work(tmp: Path) -> dict:
        b = write_bundle(tmp / name, model=variant.path, quant=variant.quant, profile=profile, source=src.facts,
                         adapters=shipped, extra_files=report_files, fit=fit, quality=quality, runtime=runtime,
                         report="report.html" if report_files else None, model_name=line_model_name(cfg, line),
                         archive=cfg.archive, model_sha256=variant.sha256,
                         mmproj=projector.path if projector else None,
                         mmproj_sha256=projector.sha256 if projector else None)
        files = {f"{name}/{f['path']}": f["sha256"] for f in b.manifest["files"]}
        files[f"{name}/{MANIFEST}"] = sha256_file(b.folder / MANIFEST)
        if b.archive:
            files[b.archive.name] = sha256_file(b.archive)
        return {"folder": name, "archive": b.archive.name if b.archive else None, "files": files}

    try:
        done, folder = ctx.step("bundle", name, parts, work, code=__name__)
    except BadGGUF as exc:  # a cached GGUF damaged behind the memo's back (same size and mtime)
        damaged = Path(getattr(exc, "path", "")).parent
        if ctx.cache.root.resolve() in damaged.resolve().parents:
            shutil.rmtree(damaged, ignore_errors=True)
            raise BadGGUF(exc.message, "the damaged step was removed from the cache: run the build "
                                       "again to redo it") from None
        raise
    prefix = f"{name}/"
    archive = done["archive"]
    return Bundle(name=name, profile=profile_name, line=line, variant=variant.name, folder=folder / name,
                  files={k.removeprefix(prefix): v for k, v in done["files"].items() if k.startswith(prefix)},
                  manifest_sha256=done["files"][f"{name}/{MANIFEST}"],
                  archive=folder / archive if archive else None,
                  archive_sha256=done["files"][archive] if archive else None)
