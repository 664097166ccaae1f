"""The vision projector of a vision-language source (``convert.mmproj``): llama.cpp's mmproj GGUF, shipped in every
bundle beside the text model. ``quantize.mmproj`` = "auto" writes it in F16 when edgepack converts the source
class's projector and skips it for a text-only source; a projector type asks for it (and is refused for a source
without one); "none" leaves it out."""

from __future__ import annotations

from pathlib import Path

from ...errors import UnsupportedArchitecture
from ..artifacts import ProjectorGGUF, ResolvedSource
from ..context import BuildContext

AUTO_OUTTYPE = "f16"  # llama.cpp's converter's default for projectors


def convert_projector(ctx: BuildContext, src: ResolvedSource) -> ProjectorGGUF | None:
    from ...convert.checkpoint import load_json
    from ...convert.mmproj import convert_mmproj, supported_projectors
    from ...fileio import sha256_file

    cfg = ctx.config
    if cfg.mmproj == "none":
        return None
    architecture = (load_json(src.folder / "config.json", "config.json").get("architectures") or [None])[0]
    if architecture not in supported_projectors():
        if cfg.mmproj == "auto":
            return None
        raise UnsupportedArchitecture(
            f"quantize.mmproj = {cfg.mmproj!r}, but {architecture} has no vision projector edgepack converts",
            f"projectors: {', '.join(sorted(supported_projectors()))}; set quantize.mmproj = \"none\" (or \"auto\")")
    outtype = AUTO_OUTTYPE if cfg.mmproj == "auto" else cfg.mmproj

    def work(tmp: Path) -> dict:
        res = convert_mmproj(src.folder, tmp / f"mmproj-{cfg.name}-{outtype.upper()}.gguf", outtype=outtype,
                             progress=ctx.progress)
        return {"file": res.output.name, "sha256": sha256_file(res.output), "projector_type": res.projector_type,
                "outtype": outtype, "size_bytes": res.size_bytes, "compute_bytes": res.compute_bytes}

    done, folder = ctx.step("mmproj", f"{cfg.name} -> projector {outtype}", {"source": src.sha256, "outtype": outtype,
                                                                             "name": cfg.name}, work, code=__name__)
    return ProjectorGGUF(path=folder / done["file"], sha256=done["sha256"], projector_type=done["projector_type"],
                         outtype=done["outtype"], size_bytes=done["size_bytes"], compute_bytes=done["compute_bytes"])
