"""``edgepack quantize``."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..progress import Progress
from ..quantize import QuantizeResult, quantize
from ..quants import IMATRIX_TENSOR_TYPES, QUANT_TYPES, TENSOR_TYPES, resolve_types
from . import cli
from ._output import emit_json, emit_table, human_bytes


def _list_types(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    status = {"offered": "yes", "imatrix": "with an imatrix", "unavailable": "no"}
    emit_table(["type", "bits", "base", "base bpw", "--bits", "offered", "note"],
               [(t.name, t.bits, t.base, f"{t.bpw:.2f}", t.bits if t.recommended else "", status[t.status], t.note)
                for t in QUANT_TYPES])
    ctx.exit(0)


def print_results(results: list[QuantizeResult]) -> None:
    """The table ``quantize`` and ``convert -q`` print: one row per type, then each fallback."""
    emit_table(["type", "file", "size", "bpw", "tensor types", "imatrix", "time"],
               [(r.type, r.output.name, human_bytes(r.size_bytes), f"{r.bpw:.2f}",
                 " ".join(f"{k}:{v}" for k, v in r.tensor_types.items()), r.imatrix or "-",
                 "up to date" if r.skipped else f"{r.seconds:.1f}s") for r in results])
    for r in results:
        for f in r.fallbacks:
            click.echo(f"{r.type}: {f.tensor} has rows of {f.ncols}, not a multiple of {f.wanted}'s block: "
                       f"llama.cpp used {f.used}")


@cli.command("quantize")
@click.argument("src", type=click.Path(path_type=Path), required=False)
@click.option("-t", "--type", "types", multiple=True, metavar="TYPE",
              help="Quantization type (repeatable, or comma-separated): Q4_K_M, Q8_0, Q5_K_M, ... "
                   "See --list-types.")
@click.option("--bits", multiple=True, type=int, metavar="N",
              help="A bit width instead of a type name (repeatable): 8, 6, 5, 4, 3, 2 pick Q8_0, Q6_K, Q5_K_M, "
                   "Q4_K_M, Q3_K_M, Q2_K; 16 picks F16.")
@click.option("-o", "--output-dir", "out_dir", type=click.Path(path_type=Path),
              help="Folder for the outputs (default: the source's folder). Files are named <Model>-<TYPE>.gguf.")
@click.option("--threads", type=int, default=0, show_default=True, help="Threads for llama.cpp (0: every core).")
@click.option("--output-tensor-type", metavar="T", type=click.Choice(TENSOR_TYPES + IMATRIX_TENSOR_TYPES, case_sensitive=False),
              help="ggml type for output.weight instead of the mix's choice (e.g. Q8_0).")
@click.option("--token-embedding-type", metavar="T", type=click.Choice(TENSOR_TYPES + IMATRIX_TENSOR_TYPES, case_sensitive=False),
              help="ggml type for token_embd.weight instead of the mix's choice.")
@click.option("--tensor-type", "tensor_types", multiple=True, metavar="PATTERN=TYPE",
              help="Give the tensors whose names match PATTERN (a regular expression, as llama-quantize's "
                   "--tensor-type) the ggml type TYPE instead of the mix's choice (repeatable; first match wins).")
@click.option("--imatrix", "imatrix", type=click.Path(path_type=Path), metavar="FILE",
              help="Importance matrix for this model (llama-imatrix's GGUF or .dat, or edgepack imatrix's), "
                   "used for every type; unlocks IQ1_*, IQ2_*, IQ3_XXS, IQ3_XS, Q2_K_S.")
@click.option("--calibration", metavar="TEXT",
              help="Compute the importance matrix first, on this UTF-8 text file ('builtin': edgepack's own "
                   "mixed set); kept as <Model>.imatrix.gguf in the output folder and reused.")
@click.option("--target-size", "target_size_mb", type=float, metavar="MB",
              help="Instead of -t: choose a type per tensor group so the file fits MB megabytes (10^6 bytes) with "
                   "the least KL divergence, from each group's measured sensitivity; reports the mix and its KLD.")
@click.option("--target-bpw", type=float, metavar="X",
              help="As --target-size, for a budget in bits per weight (tensor data, as llama.cpp reports it).")
@click.option("--eval-text", type=click.Path(path_type=Path), metavar="FILE",
              help="With --target-*: text the chosen mix's KLD is measured on (default: edgepack eval's built-in).")
@click.option("--pure", is_flag=True, help="No k-quant mix: every weight gets the type's base ggml type.")
@click.option("--allow-requantize", is_flag=True, help="Accept an already-quantized source (quality suffers).")
@click.option("--force", is_flag=True, help="Overwrite outputs that edgepack did not write.")
@click.option("--hash-source", is_flag=True,
              help="Also identify the source by its BLAKE3 (one extra read of it), so that a re-run keeps the "
                   "outputs when the source was rewritten with the same bytes (a copy, a re-download).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--list-types", is_flag=True, expose_value=False, is_eager=True, callback=_list_types,
              help="List the quantization types and exit.")
def quantize_command(src: Path | None, types: tuple[str, ...], bits: tuple[int, ...], out_dir: Path | None,
                     threads: int, output_tensor_type: str | None, token_embedding_type: str | None,
                     tensor_types: tuple[str, ...], imatrix: Path | None, calibration: str | None,
                     target_size_mb: float | None, target_bpw: float | None, eval_text: Path | None, pure: bool,
                     allow_requantize: bool, force: bool, hash_source: bool, as_json: bool) -> None:
    """Quantize an F16/BF16/F32 GGUF with llama.cpp's own quantizer.

    Each type is written to <Model>-<TYPE>.gguf (Model: the GGUF's general.name), through a temp file that
    is renamed only when complete. Re-running skips outputs that are complete and were made with the same
    settings from the same source file: same size, mtime and inode (or, with --hash-source, the same BLAKE3).

    An importance matrix (--imatrix FILE, or --calibration TEXT to compute one) makes every type keep the
    weights that meet large activations more exactly; types that llama.cpp only makes with one (IQ2_*, IQ1_*,
    IQ3_XXS, IQ3_XS, Q2_K_S) are refused without it. Tensors whose rows do not fit a type's blocks fall back
    to another type, as llama.cpp decides; they are listed after the table.

    \b
    Examples:
      edgepack quantize tinyllama-F16.gguf -t Q4_K_M -t Q8_0
      edgepack quantize tinyllama-F16.gguf -t Q4_K_M,Q5_K_M,Q6_K -o dist/ --json
      edgepack quantize tinyllama-F16.gguf --bits 4 --bits 8
      edgepack quantize tinyllama-F16.gguf -t Q4_K_M --output-tensor-type Q8_0
      edgepack quantize tinyllama-F16.gguf -t IQ3_XXS -t Q2_K -t Q4_K_M --calibration builtin
      edgepack quantize tinyllama-F16.gguf -t IQ2_XS --imatrix tinyllama.imatrix.gguf
      edgepack quantize tinyllama-F16.gguf --target-size 450 --calibration builtin
      edgepack quantize tinyllama-F16.gguf -t Q4_K_M --tensor-type 'attn_v=Q8_0' --tensor-type 'blk\\.0\\.=Q6_K'
      edgepack quantize --list-types
    """
    if src is None:
        raise click.UsageError("missing SRC (an F16/BF16/F32 .gguf file)")
    if target_size_mb is not None or target_bpw is not None:
        if types or bits or tensor_types or pure:
            raise UsageError("--target-size/--target-bpw choose the types themselves",
                             "drop -t, --bits, --tensor-type and --pure")
        _quantize_mix(src, out_dir, target_size_mb, target_bpw, imatrix, calibration, eval_text, threads, force,
                      as_json)
        return
    qtypes = resolve_types(types, bits)
    results = quantize(src, qtypes, out_dir, threads=threads, output_tensor_type=output_tensor_type,
                       token_embedding_type=token_embedding_type, pure=pure, allow_requantize=allow_requantize,
                       force=force, hash_source=hash_source, imatrix=imatrix, calibration=calibration,
                       tensor_types=tensor_types, progress=Progress(enabled=not as_json))
    if as_json:
        emit_json(results)
        return
    print_results(results)


def _quantize_mix(src, out_dir, target_size_mb, target_bpw, imatrix, calibration, eval_text, threads, force,
                  as_json) -> None:
    from ..mix import quantize_mix

    result = quantize_mix(src, out_dir, target_size_mb=target_size_mb, target_bpw=target_bpw, imatrix=imatrix,
                          calibration=calibration, eval_text=eval_text, threads=threads, force=force,
                          progress=Progress(enabled=not as_json))
    if as_json:
        emit_json({"plan": {k: v for k, v in vars(result.plan).items() if k != "options"},
                   "quantized": result.quantized, "evaluation": result.evaluation,
                   "size_bytes": result.size_bytes, "fits": result.fits})
        return
    plan = result.plan
    emit_table(["tensor group", "tensors", "type", "size", "KLD alone"],
               [(g.group, g.n_tensors, g.type, human_bytes(g.bytes), f"{g.kld_alone:.6f}") for g in plan.groups])
    e = result.evaluation
    click.echo(f"{result.quantized.output.name}: {human_bytes(result.size_bytes)} ({result.size_bytes / 1e6:.3f} MB, "
               f"{result.quantized.bpw:.2f} bpw) for a target of {plan.target}; mean KLD {e.mean_kld:.6f} ± "
               f"{e.mean_kld_err:.6f} on {e.text} (predicted {plan.predicted_kld:.6f})")
