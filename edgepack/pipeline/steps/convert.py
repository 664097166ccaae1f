"""The base line's unquantized GGUF: the source converted (``convert``)."""

from __future__ import annotations

from pathlib import Path

from ...fileio import sha256_file
from ..artifacts import BaseGGUF, ResolvedSource
from ..context import BuildContext
from ..plan import BASE_LINE


def convert_base(ctx: BuildContext, src: ResolvedSource) -> BaseGGUF:
    from ...convert import convert

    name, outtype = ctx.config.name, ctx.config.outtype

    def work(tmp: Path) -> dict:
        out = tmp / f"{name}-{outtype.upper()}.gguf"
        res = convert(src.folder, out, outtype=outtype, provenance=src.provenance, progress=ctx.progress)
        return {"file": out.name, "sha256": sha256_file(out), "outtype": res.outtype, "n_params": res.n_params,
                "size_bytes": res.size_bytes}

    done, folder = ctx.step("convert", f"{name} -> GGUF {outtype}", {"source": src.sha256, "outtype": outtype,
                                                                     "name": name}, work, code=__name__)
    return BaseGGUF(line=BASE_LINE, path=folder / done["file"], sha256=done["sha256"], outtype=done["outtype"])
