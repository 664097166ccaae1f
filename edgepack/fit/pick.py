"""The fit: every variant on every profile's backends (memory, speed, fits or not), then one pick per profile: the
best quality that fits and meets the constraints, the fastest among equals, with why each other variant lost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..evaluate import Quality
from ..profiles import Profile
from .describe import ModelDesc
from .image import ProjectorDesc, image_ttft_s
from .memory import MB, MemoryParts, memory_needed
from .speed import HostCalibration, project

DEFAULT_BATCHES = (512, 256, 128, 64, 32)


@dataclass
class Variant:
    model: ModelDesc
    quality: Quality = field(default_factory=Quality)
    host: HostCalibration | None = None


@dataclass
class FitRow:
    variant: str
    profile: str
    backend: str
    memory: dict
    memory_total_mb: float
    usable_mb: float
    fits: bool
    tg_tokens_per_s: float
    pp_tokens_per_s: float
    mean_kld: float | None  # evaluate.Quality's, as measured for the variant (None: not measured)
    bits_per_weight: float
    size_mb: float
    verdict: str  # "pick", or why it lost
    settings: dict
    best_backend: str = ""  # the profile's backend with the fastest generation among those where it fits
    by_backend: dict = field(default_factory=dict)  # backend -> {tg_tokens_per_s, pp_tokens_per_s, memory_total_mb, fits}
    # with image=: {image_tokens, encode_s, prefill_s, ttft_s} for one image of the projector's tile (image.py)
    image: dict | None = None


@dataclass
class FitResult:
    n_ctx: int
    min_tps: float | None
    max_kld: float | None
    rows: list[FitRow]
    picks: dict[str, str | None]  # profile -> variant (None: nothing fits)
    summary: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)


def _quality_key(v: Variant) -> tuple:
    """Higher is better: measured KLD when present (lower KLD wins), else bits per weight as the proxy."""
    if v.quality.mean_kld is not None:
        return (1, -v.quality.mean_kld)
    return (0, v.model.bits_per_weight)


def _on_backend(v: Variant, profile: Profile, be: str, n_ctx: int, flash_attn: bool, n_threads: int,
                projector: int = 0):
    """(memory parts, n_batch, projection) of variant ``v`` (with ``projector`` bytes of vision projector beside it)
    on one backend of ``profile``: the largest batch that fits (or 512 when none does)."""
    overhead = int(profile.runtime_overhead_mb.value * MB)

    def mem(b: int) -> MemoryParts:
        return memory_needed(v.model, n_ctx, b, flash_attn, overhead, backend=be, isa=profile.isa,
                             projector_bytes=projector)

    batch = next((b for b in DEFAULT_BATCHES if mem(b).total_bytes <= profile.usable_bytes), DEFAULT_BATCHES[0])
    return mem(batch), batch, project(v.model, profile, be, n_ctx, v.host, n_threads)


def fit(variants: list[Variant], profiles: list[Profile], n_ctx: int = 2048, min_tps: float | None = None,
        max_kld: float | None = None, backend: str | None = None, flash_attn: bool = False,
        threads: int | None = None, projector_bytes: int = 0, image: ProjectorDesc | None = None) -> FitResult:
    """For every (variant, profile): memory, projected speed, fits or not; then one pick per profile.
    ``projector_bytes``: a vision projector shipped beside every variant (``memory.projector_bytes``). ``image``:
    that projector described (``image.describe_projector``): each row also projects the time one image adds
    before the first token.

    Every backend of a profile is projected (``by_backend``) and the fastest one where the variant fits is
    recommended (``best_backend``). The row itself is for ``backend`` where the profile has it, ``"auto"`` for
    the recommended one, else the profile's default backend. ``threads``: CPU threads the app will use (default:
    each profile's own ``cpu.threads``; capped at a profile's core count)."""
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}", "e.g. --threads 4")
    if not variants:
        raise UsageError("no variants to fit", "give GGUF files, or --config with --quant")
    rows: list[FitRow] = []
    picks: dict[str, str | None] = {}
    summary: dict[str, str] = {}
    for profile in profiles:
        n_threads = min(threads, profile.n_cores) if threads else int(profile.threads.value)
        usable = profile.usable_bytes
        cands = []
        for v in variants:
            per_backend = {b: _on_backend(v, profile, b, n_ctx, flash_attn, n_threads, projector_bytes)
                           for b in profile.backends}
            by_backend = {b: {"tg_tokens_per_s": round(p.tg_tokens_per_s, 2), "pp_tokens_per_s": round(p.pp_tokens_per_s, 2),
                              "memory_total_mb": round(m.total_bytes / MB, 2), "fits": m.total_bytes <= usable}
                          for b, (m, _, p) in per_backend.items()}
            best = max(by_backend, key=lambda b: (by_backend[b]["fits"], by_backend[b]["tg_tokens_per_s"],
                                                  by_backend[b]["pp_tokens_per_s"]))
            if backend == "auto":
                be = best
            else:
                be = backend if backend and backend in profile.backends else profile.default_backend
            mem, batch, proj = per_backend[be]
            fits = mem.total_bytes <= usable
            reasons = []
            if not fits:
                reasons.append(f"too big by {(mem.total_bytes - usable) / MB:.0f} MB "
                               f"({mem.total_bytes / MB:.0f} MB needed, {usable / MB:.0f} MB usable)")
            if min_tps is not None and proj.tg_tokens_per_s < min_tps:
                reasons.append(f"too slow ({proj.tg_tokens_per_s:.1f} tok/s < {min_tps:g})")
            if max_kld is not None and v.quality.mean_kld is not None and v.quality.mean_kld > max_kld:
                reasons.append(f"too lossy (KLD {v.quality.mean_kld:.4f} > {max_kld:g})")
            settings = {"threads": n_threads, "n_ctx": n_ctx, "n_batch": batch,
                        "backend": be, "flash_attn": flash_attn}
            row = FitRow(variant=v.model.name, profile=profile.name, backend=be,
                         memory=mem.as_mb(),
                         memory_total_mb=round(mem.total_bytes / MB, 2), usable_mb=round(usable / MB, 1), fits=fits,
                         tg_tokens_per_s=round(proj.tg_tokens_per_s, 2), pp_tokens_per_s=round(proj.pp_tokens_per_s, 2),
                         mean_kld=v.quality.mean_kld, bits_per_weight=round(v.model.bits_per_weight, 3),
                         size_mb=round(v.model.weight_bytes / MB, 2), verdict="; ".join(reasons), settings=settings,
                         best_backend=best, by_backend=by_backend)
            if image:
                timing = image_ttft_s(image, profile.gflops(be, image.quant_family).value, proj.pp_tokens_per_s)
                row.image = {k: round(x, 6) if isinstance(x, float) else x for k, x in timing.items()}
            rows.append(row)
            if not reasons:
                cands.append((v, row))
        if cands:
            best_q = max(_quality_key(v) for v, _ in cands)
            tied = [(v, r) for v, r in cands if _quality_key(v) == best_q]
            v, r = max(tied, key=lambda vr: vr[1].tg_tokens_per_s)
            r.verdict = "pick"
            picks[profile.name] = r.variant
            for v2, r2 in cands:
                if r2 is not r:
                    r2.verdict = ("lower quality than " + r.variant if _quality_key(v2) < best_q
                                  else f"same quality, slower than {r.variant}")
            hint = "" if r.best_backend == r.backend else f" (fastest here: --backend {r.best_backend})"
            summary[profile.name] = (f"{r.variant}: {r.tg_tokens_per_s:.1f} tok/s generation, "
                                     f"{r.pp_tokens_per_s:.0f} tok/s prompt, {r.memory_total_mb:.0f} of "
                                     f"{r.usable_mb:.0f} MB; threads={r.settings['threads']} "
                                     f"n_ctx={n_ctx} n_batch={r.settings['n_batch']} backend={r.backend}{hint}")
        else:
            picks[profile.name] = None
            summary[profile.name] = "nothing fits: " + "; ".join(
                f"{r.variant}: {r.verdict}" for r in rows if r.profile == profile.name)
    return FitResult(n_ctx=n_ctx, min_tps=min_tps, max_kld=max_kld, rows=rows, picks=picks, summary=summary)


def variants_from_bench(results: dict) -> dict[str, tuple[Quality, HostCalibration]]:
    """Quality and host calibration per GGUF path from an ``edgepack bench --json`` result."""
    out = {}
    host_bw = results.get("host", {}).get("bandwidth_gb_s")
    for m in results.get("models", []):
        q = m.get("quality") or {}
        cal = None
        if host_bw and m.get("tg_tokens_per_s"):
            cal = HostCalibration(m["tg_tokens_per_s"], m.get("pp_tokens_per_s") or 0.0, host_bw)
        out[str(Path(m["path"]).resolve())] = (Quality.from_json(q), cal)
    return out


def nice_mb(n: float) -> str:
    return f"{n:.0f} MB" if n < 10_000 else f"{n / 1000:.1f} GB"
