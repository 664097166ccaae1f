"""``edgepack fit``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UsageError
from ..fit import (Variant, config_name, describe_config, describe_gguf, describe_projector, fit, load_config,
                   projector_bytes, variants_from_bench)
from ..profiles import get_profile, load_profiles
from . import cli
from ._output import emit_table, save_and_emit


@cli.command("fit")
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("-p", "--profile", "profile_names", multiple=True,
              help="Device profile name or .toml file (repeatable; default: all shipped profiles).")
@click.option("--profiles", "extra", multiple=True, type=click.Path(path_type=Path),
              help="Extra profile file or folder (repeatable).")
@click.option("--config", "config",
              help="A config.json (or folder holding one), or a Hub repo id (org/name[@rev]: only its config.json "
                   "is fetched), instead of GGUF files.")
@click.option("--quant", "quants", multiple=True, help="With --config: quant types to size (e.g. Q4_K_M Q8_0).")
@click.option("--bench", "bench_json", type=click.Path(path_type=Path, exists=True),
              help="Results of `edgepack bench --json`: quality (KLD) and host calibration per file.")
@click.option("--ctx", "n_ctx", type=int, default=2048, show_default=True, help="Context length to plan for.")
@click.option("--min-tps", type=float, help="Minimum projected generation tokens/s.")
@click.option("--max-kld", type=float, help="Maximum KLD vs the reference (needs --bench with quality).")
@click.option("--backend", help="cpu, metal, vulkan, opencl (Adreno), cuda, hexagon (Qualcomm NPU), or auto: the "
              "fastest one where the variant fits. Used where the profile has it, else the profile's default; every "
              "row also lists each backend's projection (by_backend) and the recommended one (best_backend).")
@click.option("--flash-attn", is_flag=True, help="Plan for flash attention (smaller compute buffer).")
@click.option("--mmproj", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The models' vision projector (edgepack convert --mmproj): its weights and the compute buffer "
                   "libmtmd reserves for it (measured by loading it here) count in every variant's memory, and each "
                   "row projects the time one image (the projector's tile) adds before the first token.")
@click.option("-t", "--threads", type=int,
              help="CPU threads the app will use (default: each profile's cpu.threads); speeds scale with the "
                   "clocks of that many cores, fastest first.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), help="Also write the JSON result here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def fit_command(models, profile_names, extra, config, quants, bench_json, n_ctx, min_tps, max_kld, backend,
                flash_attn, mmproj, threads, out, as_json) -> None:
    """Pick the best variant for each device: memory, projected speed, quality, reasons.

    MODELS are GGUF files (variants of one model). Or describe a model without files with --config and
    --quant: sizes come from the architecture and llama.cpp's per-tensor quant mix.

    \b
    Examples:
      edgepack fit model-Q4_K_M.gguf model-Q8_0.gguf -p pixel-8 -p iphone-15-pro --ctx 2048
      edgepack bench *.gguf --ref model-F16.gguf --json > bench.json
      edgepack fit *.gguf --bench bench.json --min-tps 8 --max-kld 0.05 --json
      edgepack fit --config Llama-3.1-8B/config.json --quant Q4_K_M --quant Q8_0 -p pixel-8
      edgepack fit --config meta-llama/Llama-3.1-8B --quant Q4_K_M -p pixel-8 -p macbook-air-m2
      edgepack fit model-Q4_0.gguf -p galaxy-s23 --threads 4       # what a 4-thread app gets
      edgepack fit gemma3-Q4_K_M.gguf --mmproj mmproj-gemma-3-4b-it-F16.gguf -p pixel-8   # with its projector

    \b
    JSON memory parts are in megabytes (1e6 bytes): memory.weights_mb, kv_cache_mb, compute_mb, output_mb,
    overhead_mb, state_mb (recurrent state of hybrid models), projector_mb (with --mmproj), and memory_total_mb /
    usable_mb; with --mmproj, image: {image_tokens, encode_s, prefill_s, ttft_s}.
    """
    if n_ctx <= 0:
        raise UsageError("--ctx must be positive", "e.g. --ctx 2048")
    variants = []
    if config:
        if models:
            raise UsageError("give GGUF files or --config, not both", "drop one of them")
        if not quants:
            raise UsageError("--config needs --quant", "e.g. --quant Q4_K_M --quant Q8_0")
        cfg = load_config(config)
        variants = [Variant(describe_config(cfg, q, config_name(config))) for q in quants]
    else:
        if not models:
            raise UsageError("no models given", "give GGUF files, or --config config.json --quant TYPE")
        bench = variants_from_bench(json.loads(bench_json.read_text())) if bench_json else {}
        for m in models:
            desc = describe_gguf(m)
            q, host = bench.get(str(m.resolve()), (None, None))
            variants.append(Variant(desc, q or Variant(desc).quality, host))
    profiles = ([get_profile(n, extra) for n in profile_names] if profile_names
                else list(load_profiles(extra).values()))
    result = fit(variants, profiles, n_ctx=n_ctx, min_tps=min_tps, max_kld=max_kld, backend=backend,
                 flash_attn=flash_attn, threads=threads,
                 projector_bytes=projector_bytes(mmproj) if mmproj else 0,
                 image=describe_projector(mmproj) if mmproj else None)
    if save_and_emit(result.to_dict(), out, as_json):
        return
    emit_table(["profile", "variant", "memory MB (usable)", "fits", "tg tok/s", "pp tok/s", "KLD", "verdict"],
               [(r.profile, r.variant, f"{r.memory_total_mb:.0f} ({r.usable_mb:.0f})", "yes" if r.fits else "no",
                 f"{r.tg_tokens_per_s:.1f}", f"{r.pp_tokens_per_s:.0f}", "-" if r.mean_kld is None else f"{r.mean_kld:.4f}",
                 r.verdict) for r in result.rows])
    click.echo("")
    for name, line in result.summary.items():
        click.echo(f"{name}: {line}")
    for r in result.rows:
        if r.image:
            i = r.image
            click.echo(f"{r.profile} {r.variant} ({r.backend}): one image ({i['image_tokens']} tokens) adds "
                       f"{i['ttft_s']:.2f} s before the first token (encoding {i['encode_s']:.2f} s, its tokens "
                       f"{i['prefill_s']:.2f} s)")
