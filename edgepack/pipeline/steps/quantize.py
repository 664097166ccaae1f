"""One variant: a line's GGUF quantized to one type by llama.cpp's own quantizer (``quantize.quantize``)."""

from __future__ import annotations

import os
from pathlib import Path

from ...fileio import sha256_file
from ..artifacts import BaseGGUF, Imatrix, Variant
from ..context import BuildContext
from ..plan import Unit, variant_name


def quantize_variant(ctx: BuildContext, unit: Unit, base: BaseGGUF, imatrix: Imatrix | None) -> Variant:
    from ...quantize import quantize

    name = variant_name(ctx.config, unit)
    if unit.imatrix is False:  # "compare": the unit built without the line's imatrix
        imatrix = None

    def work(tmp: Path) -> dict:
        [res] = quantize(base.path, [unit.quant], out_dir=tmp, threads=ctx.config.threads,
                         imatrix=imatrix.path if imatrix else None, progress=ctx.progress)
        out = keep_only(tmp, res.output, name)
        return {"file": out.name, "sha256": sha256_file(out), "size_bytes": out.stat().st_size}

    done, folder = ctx.step("quantize", name, {"base": base.sha256, "quant": unit.quant,
                                               "imatrix": imatrix.sha256 if imatrix else None}, work, code=__name__)
    return Variant(name=name, line=unit.line, quant=unit.quant, unit=unit.key, path=folder / done["file"],
                   sha256=done["sha256"], size_bytes=done["size_bytes"], imatrix=imatrix)


def keep_only(tmp: Path, made: Path, name: str) -> Path:
    """``made`` renamed ``<name>.gguf`` in the step folder ``tmp``, and nothing else left there (the quantizer's
    own re-run sidecar: the step cache does that job)."""
    out = tmp / f"{name}.gguf"
    os.replace(made, out)
    for stray in tmp.iterdir():
        if stray != out:
            stray.unlink()
    return out
