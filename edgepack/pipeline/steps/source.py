"""The model source (``edgepack.source``): resolved to a local folder (a repo is pulled into the Hub cache) and
hashed. Not a cached step: the Hub stage keeps its own cache, and the content hash is what every later key is
built on."""

from __future__ import annotations

import time
from dataclasses import asdict

from ...errors import BadCheckpoint
from ..artifacts import ResolvedSource
from ..context import BuildContext


def resolve_source(ctx: BuildContext) -> ResolvedSource:
    cfg = ctx.config
    started = time.monotonic()
    if cfg.source.kind == "local" and not cfg.source.path.is_dir():
        raise BadCheckpoint(f"source folder {cfg.source.path} does not exist",
                            "set source in edgepack.toml to a model folder or org/repo@revision")
    folder, prov = cfg.source.resolve(progress=ctx.progress)
    digest = ctx.folder_sha256(folder)
    facts = {"kind": cfg.source.kind, "name": cfg.name, "sha256": digest}
    if cfg.source.kind == "local":
        facts["folder"] = folder.resolve().name
    if prov is not None:
        facts.update({k: v for k, v in asdict(prov).items() if v is not None})
    ctx.record("pull", str(cfg.source), digest[:20], "checked", started)
    return ResolvedSource(folder=folder, sha256=digest, facts=facts, provenance=prov)
