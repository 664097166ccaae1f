"""Speed here: each variant's load time, prompt and generation tokens/s and peak RSS (``bench.bench_one``), and
this host's facts for the report (``hostfacts``; its copy bandwidth measured once per host). Timings go to the
report, never into a manifest or a fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..artifacts import Variant
from ..context import BuildContext


def bench_variant(ctx: BuildContext, v: Variant) -> Variant:
    from ...bench import bench_one
    from ...hostfacts import host_id

    cfg = ctx.config
    n_prompt, n_gen = min(128, cfg.ctx // 2), min(32, cfg.ctx // 4)

    def work(tmp: Path) -> dict:
        m = bench_one(v.path, n_ctx=cfg.ctx, n_prompt=n_prompt, n_gen=n_gen, reps=2, threads=cfg.threads)
        return {**dataclasses.asdict(m), "path": v.path.name, "pp_tokens_per_s": m.pp_tokens_per_s,
                "tg_tokens_per_s": m.tg_tokens_per_s, "threads": cfg.threads, "host": host_id()}

    done, _ = ctx.step("bench", v.name, {"model": v.sha256, "ctx": cfg.ctx, "threads": cfg.threads,
                                         "host": host_id()}, work, code=__name__)
    return dataclasses.replace(v, bench=done)


def host_facts(ctx: BuildContext) -> dict:
    """This host's facts for the report (copy bandwidth measured once per host, cached)."""
    from ...hostfacts import HostInfo, host_id

    threads = ctx.config.threads

    def work(tmp: Path) -> dict:
        return dataclasses.asdict(HostInfo.current(threads))

    done, _ = ctx.step("host", "measure copy bandwidth", {"host": host_id(), "threads": threads}, work,
                       code=__name__)
    return done
