"""``edgepack bench``."""

from __future__ import annotations

from pathlib import Path

import click

from ..bench import bench
from ..progress import Progress
from . import cli
from ._output import emit_table, human_bytes, save_and_emit


@cli.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--ref", type=click.Path(path_type=Path), help="Reference GGUF (e.g. F16) for quality: PPL, KLD, top-1.")
@click.option("--ctx", "n_ctx", type=int, default=1024, show_default=True, help="Context size of the run.")
@click.option("--n-prompt", type=int, default=512, show_default=True, help="Prompt tokens (pp512 equivalent).")
@click.option("--n-gen", type=int, default=128, show_default=True, help="Generated tokens (tg128 equivalent).")
@click.option("--reps", type=int, default=3, show_default=True, help="Repetitions (median, min and max reported).")
@click.option("--threads", type=int, help="llama.cpp threads (default: cores, at most 8).")
@click.option("--eval-ctx", type=int, default=512, show_default=True,
              help="With --ref: context of the quality measurement (llama-perplexity's chunk size).")
@click.option("--text", "eval_text", type=click.Path(path_type=Path),
              help="With --ref: UTF-8 text to measure quality on (default: the built-in excerpt).")
@click.option("--mmproj", type=click.Path(path_type=Path),
              help="The models' multimodal projector (edgepack convert --mmproj); with --image.")
@click.option("--image", type=click.Path(path_type=Path),
              help="An image file (PNG, JPEG, ...): also time the first token of a prompt holding it.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), help="Also write the JSON result here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_command(models, ref, n_ctx, n_prompt, n_gen, reps, threads, eval_ctx, eval_text, mmproj, image, out,
                  as_json) -> None:
    """Measure GGUF variants on this machine: load time, pp/tg tokens/s, peak RSS, size, quality.

    Each model runs in its own process so peak RSS is per model. The host's memory bandwidth is measured
    too; `edgepack fit --bench` uses both to calibrate projections onto device profiles.

    \b
    Examples:
      edgepack bench model-Q4_K_M.gguf model-Q8_0.gguf --ref model-F16.gguf
      edgepack bench *.gguf --reps 5 --json -o bench.json
      edgepack bench gemma3-Q4_K_M.gguf --mmproj mmproj-gemma-3-4b-it-F16.gguf --image photo.jpg

    With --mmproj and --image, the time to first token of a prompt holding the image (the image encoded by
    the projector, then the prompt decoded) and the image's share of it, as an app on this host waits.
    """
    result = bench(list(models), ref=ref, n_ctx=n_ctx, n_prompt=n_prompt, n_gen=n_gen, reps=reps, threads=threads,
                   eval_ctx=eval_ctx, eval_text=eval_text, mmproj=mmproj, image=image,
                   progress=Progress(enabled=not as_json))
    if save_and_emit(result.to_dict(), out, as_json):
        return
    h = result.host
    click.echo(f"host: {h.cpu}, {h.threads_used} threads, copy bandwidth {h.bandwidth_gb_s} GB/s")
    emit_table(["model", "size", "bpw", "load s", f"pp{n_prompt} tok/s", f"tg{n_gen} tok/s", "peak RSS MB", "KLD", "PPL (Δ)", "top-1"],
               [(m.name, human_bytes(m.size_bytes), f"{m.bits_per_weight:.2f}", f"{m.load_s.median:.2f}",
                 f"{m.pp.median:.1f} ({m.pp.min:.1f}-{m.pp.max:.1f})", f"{m.tg.median:.1f} ({m.tg.min:.1f}-{m.tg.max:.1f})",
                 f"{m.peak_rss_mb:.0f}", *_quality_cells(m.quality))
                for m in result.models])
    if result.quality_note:
        click.echo(result.quality_note)
    for m in result.models:
        if m.image:
            i = m.image
            click.echo(f"{m.name}: image {Path(i['image']).name} = {i['image_tokens']} tokens "
                       f"({i['image_chunks']} chunks) in a {i['prompt_tokens']}-token prompt: time to first token "
                       f"{i['ttft_s'].median:.3f} s ({i['ttft_s'].min:.3f}-{i['ttft_s'].max:.3f}), "
                       f"of which encoding the image {i['encode_s'].median:.3f} s")


def _quality_cells(q: dict | None) -> tuple[str, str, str]:
    if not q:
        return "-", "-", "-"
    return f"{q['mean_kld']:.4f}", f"{q['ppl']:.2f} ({q['delta_ppl']:+.2f})", f"{100 * q['top1_agreement']:.1f}%"
