"""How fast a model runs on a device's backend (``project``): generation from the bandwidth roofline x the
efficiency of the device's class (and on a CPU the cores' weights rate, whichever is slower) plus a per-token
floor; prompt from the class's GFLOP/s per compute unit x the device's size / FLOPs per token. docs/fit.md has
the model, edgepack/data/speed-calibration.toml the class factors.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..profiles import Profile
from .describe import ModelDesc
from .memory import kv_cache_bytes


@dataclass
class HostCalibration:
    """What ``edgepack bench`` measured on this host for one variant."""
    tg_tokens_per_s: float
    pp_tokens_per_s: float
    bandwidth_gb_s: float  # measured copy bandwidth of this host

    def per_token_overhead_s(self, model: ModelDesc) -> float:
        """Time per generated token beyond streaming the weights at this host's measured bandwidth: graph
        building, thread sync, sampling. It does not shrink with bandwidth, so it carries over to devices."""
        roofline = model.bytes_read_per_token / (self.bandwidth_gb_s * 1e9)
        return max(0.0, 1.0 / self.tg_tokens_per_s - roofline)


@dataclass
class Projection:
    backend: str
    tg_tokens_per_s: float
    pp_tokens_per_s: float
    bytes_per_token: int
    flops_per_token: float
    efficiency: float
    gflops: float
    overhead_ms_per_token: float


def flops_per_token(model: ModelDesc, n_ctx: int) -> float:
    """2 FLOPs per matmul parameter + attention over the context (QK^T and AV; a sliding layer sees at most its
    window)."""
    attn = sum(2 * 2 * layer.n_head * layer.head_dim_k * (min(n_ctx, layer.sliding_window) or n_ctx)
               for layer in model.layer_sizes())
    return 2.0 * model.matmul_params + attn


# The time every generated token costs whatever the model's size: building and scheduling the graph, syncing the
# threads after each op or launching each kernel, sampling. It is what keeps a 3 MB model from projecting
# 90,000 tok/s. seconds = base + per_layer x layers, per backend kind; ``edgepack fit --bench`` replaces it by the
# overhead measured on the host (HostCalibration), which contains it.
TOKEN_FLOOR = {
    "cpu": {"base_s": 0.25e-3, "per_layer_s": 0.06e-3, "kind": "estimate",
            "source": "estimate: about 25 graph ops per layer, each ending in a thread barrier of a few microseconds "
                      "on phone and laptop cores, plus graph build and sampling; benchmarks/token_floor.py measures it "
                      "with tiny models (it could not be measured on the shared 2-core CI host: another job's load "
                      "made a 2-layer model run at 5 tok/s)"},
    "gpu": {"base_s": 0.5e-3, "per_layer_s": 0.1e-3, "kind": "estimate",
            "source": "estimate: about ten kernel launches per layer at ~10 us each plus one command-buffer submit "
                      "and the logits copy; no published tiny-model GPU measurement was found"},
}


def token_floor_ms(backend: str, profile: Profile | None = None) -> tuple[float, float]:
    """(base ms, ms per layer) of the per-token floor on ``backend``: the profile's own ``[token_floor]`` where it
    has one (measured on the device), else TOKEN_FLOOR's estimate for the backend kind."""
    if profile is not None and backend in profile.token_floor_ms:
        return profile.token_floor_ms[backend]
    f = TOKEN_FLOOR["cpu" if backend == "cpu" else "gpu"]
    return f["base_s"] * 1e3, f["per_layer_s"] * 1e3


def token_floor_s(model: ModelDesc, backend: str, profile: Profile | None = None) -> float:
    """Seconds per generated token that do not shrink with the model (token_floor_ms)."""
    base_ms, per_layer_ms = token_floor_ms(backend, profile)
    return (base_ms + per_layer_ms * model.n_layer) / 1e3


def project(model: ModelDesc, profile: Profile, backend: str | None = None, n_ctx: int = 512,
            host: HostCalibration | None = None, threads: int | None = None, floor: bool = True) -> Projection:
    """Projected generation and prompt speed of ``model`` on ``profile``'s ``backend``.

    Generation reads every weight (and the KV cache so far) once per token: t = bytes / (bandwidth x
    efficiency) + a per-token floor (the host-measured overhead with ``host``, else TOKEN_FLOOR; ``floor=False``
    leaves it out, for calibration). On the CPU backend the cores must also dequantize and multiply every weight:
    when the profile gives that rate (weights per second per core-GHz, for the model's main quant type or its
    family), t is the longer of the memory time and weights / (rate x core-GHz of the threads). Prompt processing
    is compute-bound: tokens/s = GFLOP/s (for the backend and the weights' quant type, else family) / FLOPs per
    token. The average context during a pp512/tg128 run is used for the KV and attention terms. ``threads`` (CPU
    backend) replaces the profile's thread count: the core-GHz of that many threads, fastest cores first, scale
    both."""
    backend = backend or profile.default_backend
    if backend not in profile.backends:
        raise UsageError(f"profile {profile.name} has no {backend} backend", f"choose one of {', '.join(profile.backends)}")
    family, key = model.quant_family, model.quant_key
    eff = profile.efficiency(backend, family, key).value
    kv_avg = kv_cache_bytes(model, min(n_ctx, 512), 1) // 2
    bytes_tok = model.bytes_read_per_token + kv_avg
    if host:
        overhead = host.per_token_overhead_s(model)
    else:
        overhead = token_floor_s(model, backend, profile) if floor else 0.0
    seconds = bytes_tok / (profile.bandwidth_gb_s.value * 1e9 * eff)
    rate = profile.cpu_weights_rate(family, key) if backend == "cpu" else None
    core_ghz = profile.core_ghz(threads)
    if rate is not None:  # the cores, not the memory, may be what limits a CPU
        seconds = max(seconds, model.matmul_params / (rate.value * 1e9 * core_ghz))
    tg = 1.0 / (seconds + overhead)
    gflops = profile.gflops(backend, family, key).value
    if backend == "cpu" and threads:  # the profile's prompt GFLOP/s are for its own thread count
        gflops *= core_ghz / profile.core_ghz()
    fpt = flops_per_token(model, 256)
    pp = gflops * 1e9 / fpt
    return Projection(backend, tg, pp, bytes_tok, fpt, eff, gflops, overhead * 1e3)
