"""``edgepack imatrix``."""

from __future__ import annotations

from pathlib import Path

import click

from ..calibration import calibration as load_calibration
from ..imatrix import compute
from ..progress import Progress
from . import cli
from ._output import emit_json


@cli.command("imatrix")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--calibration", metavar="TEXT", default="builtin", show_default=True,
              help="UTF-8 calibration text, or a .jsonl of conversations (rendered through the model's chat "
                   "template); 'builtin' is edgepack's own mixed set (prose, code, 18 languages, chat turns).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="The imatrix file to write (default: <model stem>.imatrix.gguf beside the model).")
@click.option("--ctx", type=int, default=0, help="Tokens per chunk (default 512, or the model's context if less).")
@click.option("--chunks", type=int, default=0, help="Stop after this many chunks (default: the whole text).")
@click.option("--process-output", is_flag=True,
              help="Also collect output.weight (llama-imatrix's --process-output; off by default there too).")
@click.option("--threads", type=int, default=0, show_default=True, help="Threads for llama.cpp (0: every core).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def imatrix_command(model: Path | None, calibration: str, output: Path | None, ctx: int, chunks: int,
                    process_output: bool, threads: int, as_json: bool) -> None:
    """Compute an importance matrix: how strongly each input column of each weight matrix is driven.

    Runs MODEL (GGUF, preferably the F16/BF16 one) over the calibration text in chunks, as llama.cpp's
    llama-imatrix does, and writes llama.cpp's GGUF imatrix format, which both `edgepack quantize
    --imatrix` and `llama-quantize --imatrix` read. Memory does not grow with the text's length.

    \b
    Examples:
      edgepack imatrix tinyllama-F16.gguf -o tinyllama.imatrix.gguf
      edgepack imatrix tinyllama-F16.gguf --calibration my-domain.txt --chunks 100 -o tinyllama.imatrix.gguf
      edgepack quantize tinyllama-F16.gguf -t IQ2_XS --imatrix tinyllama.imatrix.gguf
    """
    if model is None:
        raise click.UsageError("missing MODEL (a .gguf file)")
    text = load_calibration(calibration)
    output = output or model.with_name(f"{model.stem}.imatrix.gguf")
    result = compute(model, text, output, ctx=ctx, chunks=chunks, threads=threads, process_output=process_output,
                     progress=Progress(enabled=not as_json))
    if as_json:
        emit_json(result)
        return
    click.echo(f"wrote {result.output} ({result.entries} weight matrices, {result.chunks} chunks of "
               f"{result.chunk_size} tokens, {result.seconds:.1f}s)")
