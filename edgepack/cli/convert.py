"""``edgepack convert``."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..convert import OUTTYPES, convert, supported_architectures
from ..fileio import check_output_path
from ..hub import parse_source, resolve_source
from ..progress import Progress
from ..quantize import quantize, refuse_without_imatrix, resolve_types
from . import cli
from .quantize import print_results
from ._output import emit_json, emit_table, human_bytes


def _list_architectures(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    emit_table(["Hugging Face class", "llama.cpp architecture"], list(supported_architectures().items()))
    ctx.exit(0)


@cli.command("convert")
@click.argument("src", required=False)
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Output .gguf file (default: <folder name>-<OUTTYPE>.gguf in the current folder).")
@click.option("--outtype", type=click.Choice(OUTTYPES), default="auto", show_default=True,
              help="Weight type: auto keeps the source's 16-bit type (BF16 stays BF16, else F16).")
@click.option("--vocab-only", is_flag=True, help="Write hyperparameters and tokenizer only, no weights.")
@click.option("--pre-tokenizer", metavar="NAME",
              help="Override the llama.cpp pre-tokenizer detected from tokenizer.json (e.g. llama-bpe).")
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@click.option("--token", metavar="TOKEN", help="Hub token for a gated or private Hub SRC (default: $HF_TOKEN).")
@click.option("--merge-lora", "merge_lora", metavar="PEFT_DIR",
              help="Merge this PEFT LoRA adapter into SRC first (as `edgepack adapter merge`), convert the result.")
@click.option("-q", "--quantize", "quant_types", metavar="TYPES",
              help="Then quantize to these types (comma-separated, e.g. Q4_K_M,Q8_0) beside the output, as "
                   "`edgepack quantize` does; the F16/BF16 intermediate is removed unless --keep.")
@click.option("--keep", is_flag=True, help="With -q: keep the F16/BF16 intermediate GGUF.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--list-architectures", is_flag=True, expose_value=False, is_eager=True,
              callback=_list_architectures, help="List supported architectures and exit.")
def convert_command(src: str | None, out: Path | None, outtype: str, vocab_only: bool, pre_tokenizer: str | None,
                    force: bool, token: str | None, merge_lora: str | None, quant_types: str | None, keep: bool,
                    as_json: bool) -> None:
    """Convert a Hugging Face model folder (safetensors + tokenizer) to GGUF.

    SRC is a local folder with config.json, *.safetensors (sharded or not) and tokenizer files
    (tokenizer.model or tokenizer.json), or a Hub repo: org/name, org/name@REVISION or
    hf://org/name@REVISION (fetched as by `edgepack pull`; the commit sha and the licence go into the
    GGUF metadata). Nothing in it is executed. The output is written to a temp file and renamed only
    when complete.

    \b
    Examples:
      edgepack convert ./TinyLlama-1.1B-Chat -o tinyllama-F16.gguf --outtype f16
      edgepack convert hf://HuggingFaceTB/SmolLM2-135M@main -o smollm2-F16.gguf
      edgepack convert ./SmolLM2-135M --outtype q8_0 --json
      edgepack convert --list-architectures
      edgepack convert ./SmolLM2-135M -q Q4_K_M,Q8_0 --keep
    """
    if src is None:
        raise click.UsageError("missing SRC (a Hugging Face model folder)")
    qtypes = resolve_types([quant_types]) if quant_types else []  # refuse bad types before any work
    refuse_without_imatrix(qtypes, "convert first, then: edgepack quantize MODEL.gguf -t TYPE --calibration TEXT")
    if qtypes and (vocab_only or outtype == "q8_0"):
        raise click.UsageError("-q needs weights in an F32/F16/BF16 intermediate (not --vocab-only or --outtype q8_0)")
    hub_source = src.startswith("hf://") or (not Path(src).exists() and parse_source(src) is not None)
    if out is None:
        name = src.split("@")[0].rstrip("/").rsplit("/", 1)[-1] if hub_source else Path(src).resolve().name
        resolved = outtype.upper() if outtype != "auto" else "auto"
        out = Path(f"{name}-{resolved}.gguf" if not vocab_only else f"{name}-vocab.gguf")
    if hub_source:
        check_output_path(out, force)  # before a download, not after it
    folder, provenance = resolve_source(src, token=token, progress=Progress(enabled=not as_json))
    run = convert
    if merge_lora:  # adapters.convert_merged: merge into a temp folder beside the output, then convert that
        from ..adapters import convert_merged
        run = functools.partial(convert_merged, merge_lora)
    result = run(folder, out, outtype=outtype, vocab_only=vocab_only, force=force, pre_tokenizer=pre_tokenizer,
                 provenance=provenance, progress=Progress(enabled=not as_json))
    if qtypes:
        quantized = quantize(result.output, qtypes, result.output.parent, force=force, hash_source=True,
                             progress=Progress(enabled=not as_json))
        if not keep:
            result.output.unlink()
    if as_json:
        emit_json({"convert": result, "quantize": quantized} if qtypes else result)
        return
    click.echo(f"wrote {result.output} ({human_bytes(result.size_bytes)}, {result.outtype.upper()}, "
               f"{result.n_tensors} tensors, {result.n_params:,} params) in {result.seconds:.1f}s")
    click.echo(f"architecture {result.architecture} -> {result.gguf_architecture}; tokenizer: {result.tokenizer}, "
               f"{result.vocab_size} tokens")
    if result.dropped:
        parts = ", ".join(f"{part} ({n} tensors)" for part, n in sorted(result.dropped.items()))
        click.echo(f"note: converted the text model only; not converted: {parts}")
    if qtypes:
        print_results(quantized)
        if not keep:
            click.echo(f"removed the intermediate {result.output} (--keep keeps it)")
