"""A merged line's unquantized GGUF: the source with an adapter merged at one scale (``adapters.merge_adapter``),
then converted (``convert``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ...fileio import sha256_file
from ..artifacts import BaseGGUF, ResolvedSource
from ..context import BuildContext
from ..plan import Line, fmt_scale
from .adapter import adapter_sha256


def merge_line(ctx: BuildContext, src: ResolvedSource, line: Line) -> BaseGGUF:
    from ...adapters import merge_adapter
    from ...convert import convert

    spec, outtype = line.adapter, ctx.config.outtype

    def work(tmp: Path) -> dict:
        merged = tmp / "merged"
        merge_adapter(spec.path, src.folder, merged, scale=line.scale, progress=ctx.progress)
        out = tmp / f"{ctx.config.name}-{line.name}-{outtype.upper()}.gguf"
        res = convert(merged, out, outtype=outtype, provenance=src.provenance, progress=ctx.progress)
        shutil.rmtree(merged)
        return {"file": out.name, "sha256": sha256_file(out), "outtype": res.outtype}

    done, folder = ctx.step("merge", f"merge {spec.name} x{fmt_scale(line.scale)} -> GGUF",
                            {"source": src.sha256, "adapter": adapter_sha256(ctx, spec), "scale": line.scale,
                             "outtype": outtype}, work, code=__name__)
    return BaseGGUF(line=line.name, path=folder / done["file"], sha256=done["sha256"], outtype=done["outtype"])
