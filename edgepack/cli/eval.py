"""``edgepack eval``."""

from __future__ import annotations

from pathlib import Path

import click

from ..evaluate import DEFAULT_CTX, evaluate_many
from ..progress import Progress
from . import cli
from ._output import emit_json, emit_table


@cli.command("eval")
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("--ref", "ref", type=click.Path(path_type=Path), required=True,
              help="The reference GGUF, usually the F16/BF16/F32 file the models were quantized from.")
@click.option("--text", "text", type=click.Path(path_type=Path),
              help="UTF-8 text to measure on (default: a built-in War and Peace excerpt, ~6,000 tokens).")
@click.option("--ctx", type=int, default=DEFAULT_CTX, show_default=True,
              help="Tokens per chunk; the second half of each chunk is scored, as llama-perplexity does.")
@click.option("--threads", type=int, default=0, show_default=True, help="Threads for llama.cpp (0: every core).")
@click.option("--mmproj", type=click.Path(path_type=Path),
              help="The models' multimodal projector (convert --mmproj); with --image.")
@click.option("--image", type=click.Path(path_type=Path),
              help="An image file: compare the models on the text read after this image instead (PNG, JPEG, ...).")
@click.option("--image-tokens", type=int, default=256, show_default=True,
              help="With --image: text tokens after the image to compare.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def eval_command(models: tuple[Path, ...], ref: Path, text: Path | None, ctx: int, threads: int, mmproj: Path | None,
                 image: Path | None, image_tokens: int, as_json: bool) -> None:
    """Measure what quantization cost: perplexity, KL divergence and top-1 agreement against --ref.

    For each MODEL: its perplexity (PPL) on the text, the reference's, their difference, the mean
    KL divergence KL(ref || model) of the next-token distributions over every scored position, and
    the share of positions where both models' most likely next token agree -- the measures
    llama.cpp's `llama-perplexity --kl-divergence` reports, computed the same way. ± is one
    standard error.

    \b
    Examples:
      edgepack eval tinyllama-Q4_K_M.gguf --ref tinyllama-F16.gguf
      edgepack eval dist/*-Q*.gguf --ref tinyllama-F16.gguf --ctx 256 --json
      edgepack eval model-Q8_0.gguf --ref model-F16.gguf --text wiki.test.raw
      edgepack eval gemma3-Q4_K_M.gguf --ref gemma3-F16.gguf --mmproj mmproj-gemma3-F16.gguf --image photo.jpg

    With --mmproj and --image, the prompt is the image (as llama.cpp's libmtmd encodes it) followed by the
    first --image-tokens tokens of the text, and the models are compared at every text position after it.
    """
    if not models:
        raise click.UsageError("missing MODEL (one or more .gguf files to compare with --ref)")
    if (mmproj is None) != (image is None):
        raise click.UsageError("--image and --mmproj go together")
    if image is not None:
        from ..evaluate_image import evaluate_image

        found = evaluate_image(list(models), ref, mmproj=mmproj, image=image, text=text, n_tokens=image_tokens,
                               threads=threads)
        if as_json:
            emit_json(found)
            return
        click.echo(f"reference {ref.name} with {image.name} ({found[0].image_tokens} image tokens) before "
                   f"{found[0].n_scored} text tokens: PPL {found[0].ref_ppl:.4f}")
        emit_table(["model", "PPL", "mean KLD", "top-1 agree"],
                   [(r.model.name, f"{r.ppl:.4f}", f"{r.mean_kld:.6f} ± {r.mean_kld_err:.6f}",
                     f"{100 * r.top1_agreement:.2f}%") for r in found])
        return
    results = evaluate_many(list(models), ref, text=text, ctx=ctx, threads=threads,
                            progress=Progress(enabled=not as_json))
    if as_json:
        emit_json(results)
        return
    first = results[0]
    click.echo(f"reference {first.reference.name}: PPL {first.ref_ppl:.4f} ± {first.ref_ppl_err:.4f} on "
               f"{first.text} ({first.n_scored} positions, {first.n_chunks} chunks of {first.ctx})")
    emit_table(["model", "PPL", "ΔPPL", "mean KLD", "99% KLD", "top-1 agree"],
               [(r.model.name, f"{r.ppl:.4f} ± {r.ppl_err:.4f}", f"{r.delta_ppl:+.4f}",
                 f"{r.mean_kld:.6f} ± {r.mean_kld_err:.6f}", f"{r.p99_kld:.6f}",
                 f"{100 * r.top1_agreement:.2f}% ± {100 * r.top1_agreement_err:.2f}") for r in results])
