"""The importance matrix a line's variants are quantized with (``[quantize] imatrix``): none, the file given, or
("auto") one computed on the calibration text (``imatrix.compute``), cached per line base and text."""

from __future__ import annotations

from pathlib import Path

from ...fileio import sha256_file
from ..artifacts import BaseGGUF, Imatrix
from ..context import BuildContext
from ..plan import BASE_LINE

IMATRIX_COMPUTED = ("auto", "compare")  # config.options: the values that mean "computed on the calibration text"


def line_imatrix(ctx: BuildContext, base: BaseGGUF) -> Imatrix | None:
    from ...calibration import calibration
    from ...imatrix import compute, read

    cfg = ctx.config
    if cfg.imatrix is None:
        return None
    if cfg.imatrix not in IMATRIX_COMPUTED:
        path = Path(cfg.imatrix)
        return Imatrix(file=path.name, path=path, sha256=sha256_file(path),
                       calibration_sha256=read(path).calibration_sha256)
    cal = calibration(cfg.calibration)
    name = f"{cfg.name}.imatrix.gguf" if base.line == BASE_LINE else f"{cfg.name}-{base.line}.imatrix.gguf"

    def work(tmp: Path) -> dict:
        res = compute(base.path, cal, tmp / name, threads=cfg.threads, progress=ctx.progress)
        return {"file": name, "sha256": sha256_file(res.output), "calibration_sha256": res.calibration_sha256,
                "chunks": res.chunks}

    done, folder = ctx.step("imatrix", name, {"base": base.sha256, "calibration": cal.sha256}, work, code=__name__)
    return Imatrix(file=done["file"], path=folder / done["file"], sha256=done["sha256"],
                   calibration_sha256=done["calibration_sha256"])
