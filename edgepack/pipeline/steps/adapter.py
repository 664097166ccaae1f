"""A LoRA adapter converted to a GGUF adapter file (``adapters.convert_adapter``), shipped beside the base."""

from __future__ import annotations

from pathlib import Path

from ...errors import BadCheckpoint
from ...fileio import sha256_file
from ..artifacts import AdapterGGUF, ResolvedSource
from ..context import BuildContext


def adapter_sha256(ctx: BuildContext, spec) -> str:
    """The content hash of a PEFT adapter folder (``[[adapters]] path``)."""
    if not spec.path.is_dir():
        raise BadCheckpoint(f"adapter folder {spec.path} does not exist", "fix [[adapters]] path in edgepack.toml")
    return ctx.folder_sha256(spec.path)


def convert_lora(ctx: BuildContext, spec, src: ResolvedSource) -> AdapterGGUF:
    from ...adapters import convert_adapter

    source_sha = adapter_sha256(ctx, spec)

    def work(tmp: Path) -> dict:
        out = tmp / f"{spec.name}.gguf"
        res = convert_adapter(spec.path, src.folder, out, progress=ctx.progress)
        return {"file": out.name, "sha256": sha256_file(out), "size_bytes": res.size_bytes, "n_pairs": res.n_pairs}

    done, folder = ctx.step("adapter", f"LoRA {spec.name} -> GGUF", {"adapter": source_sha, "source": src.sha256},
                            work, code=__name__)
    return AdapterGGUF(name=spec.name, path=folder / done["file"], sha256=done["sha256"],
                       size_bytes=done["size_bytes"], n_pairs=done["n_pairs"], scales=tuple(spec.scales),
                       source_sha256=source_sha)
