"""The model source: resolved (a local folder, or pulled from the Hub into its cache) and hashed. Not a cached
step: the Hub stage keeps its own cache, and the content hash is what every later key is built on."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ...errors import BadCheckpoint
from ..artifacts import Source
from ..context import BuildContext


def resolve_source(ctx: BuildContext) -> Source:
    from ... import hub

    cfg = ctx.config
    started = time.monotonic()
    if cfg.source.kind == "hub":
        spec = f"{cfg.source.repo_id}@{cfg.source.revision}" if cfg.source.revision else cfg.source.repo_id
        folder, prov = hub.resolve_source(spec, progress=ctx.progress)
    else:
        folder = Path(cfg.source.path)
        if not folder.is_dir():
            raise BadCheckpoint(f"source folder {folder} does not exist",
                                "set source in edgepack.toml to a model folder or org/repo@revision")
        prov = hub.local_provenance(folder)
    digest = ctx.folder_sha256(folder)
    facts = {"kind": cfg.source.kind, "name": cfg.name, "sha256": digest}
    if cfg.source.kind == "local":
        facts["folder"] = folder.resolve().name
    if prov is not None:
        facts.update({k: v for k, v in asdict(prov).items() if v is not None})
    ctx.record("pull", str(cfg.source), digest[:20], "checked", started)
    return Source(folder=folder, sha256=digest, facts=facts, provenance=prov)
