"""``edgepack convert``."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..convert import OUTTYPES, convert, supported_architectures
from ..convert.mmproj import (MMPROJ_OUTTYPES, check_mmproj, convert_mmproj, default_mmproj_path,
                              supported_projectors)
from ..fileio import check_output_path
from ..progress import Progress
from ..quantize import quantize
from ..quants import refuse_without_imatrix, resolve_types
from ..source import parse
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
@click.option("--mmproj", "mmproj", is_flag=False, flag_value="", default=None, metavar="[PATH]",
              help="Also write the vision tower + projector of a vision-language SRC as llama.cpp's mmproj GGUF "
                   "(default PATH: mmproj-<name>-<TYPE>.gguf beside the output). Gemma 3, Gemma 4, SmolVLM/Idefics3, "
                   "LFM2-VL, Qwen3-VL, Qwen3.5.")
@click.option("--mmproj-outtype", type=click.Choice(MMPROJ_OUTTYPES), default="f16", show_default=True,
              help="Projector weight type (norms, biases and embeddings stay F32; with q8_0 what llama.cpp "
                   "cannot quantize stays F16).")
@click.option("--allow-unsafe-chat-template", is_flag=True,
              help="Ship a chat template that uses constructs able to reach outside Jinja's sandbox (underscore "
                   "attributes, imports, ...): refused by default; the bundle manifest records it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--list-architectures", is_flag=True, expose_value=False, is_eager=True,
              callback=_list_architectures, help="List supported architectures and exit.")
def convert_command(src: str | None, out: Path | None, outtype: str, vocab_only: bool, pre_tokenizer: str | None,
                    force: bool, token: str | None, merge_lora: str | None, quant_types: str | None, keep: bool,
                    mmproj: str | None, mmproj_outtype: str, allow_unsafe_chat_template: bool,
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
      edgepack convert ./gemma-3-4b-it -o gemma3-4b-F16.gguf --mmproj   # + mmproj-gemma-3-4b-it-F16.gguf
    """
    if src is None and mmproj and Path(mmproj).is_dir():
        raise click.UsageError(f"--mmproj took {mmproj} as its output PATH: put --mmproj after SRC")
    if src is None:
        raise click.UsageError("missing SRC (a Hugging Face model folder)")
    qtypes = resolve_types([quant_types]) if quant_types else []  # refuse bad types before any work
    refuse_without_imatrix(qtypes, "convert first, then: edgepack quantize MODEL.gguf -t TYPE --calibration TEXT")
    if qtypes and (vocab_only or outtype == "q8_0"):
        raise click.UsageError("-q needs weights in an F32/F16/BF16 intermediate (not --vocab-only or --outtype q8_0)")
    source = parse(src)
    if out is None:
        name = source.name
        resolved = outtype.upper() if outtype != "auto" else "auto"
        out = Path(f"{name}-{resolved}.gguf" if not vocab_only else f"{name}-vocab.gguf")
    if source.kind == "hub":
        check_output_path(out, force)  # before a download, not after it
    if mmproj is not None and (vocab_only or merge_lora):
        raise click.UsageError("--mmproj converts the checkpoint's own vision tower: not with --vocab-only or "
                               "--merge-lora")
    folder, provenance = source.resolve(token=token, progress=Progress(enabled=not as_json))
    mmproj_out = None
    if mmproj is not None:  # refuse a projector llama.cpp cannot reproduce before converting the text model
        mmproj_out = Path(mmproj) if mmproj else default_mmproj_path(folder, out.parent, mmproj_outtype)
        check_mmproj(folder, mmproj_outtype)
        check_output_path(mmproj_out, force)
    run = convert
    if merge_lora:  # adapters.convert_merged: merge into a temp folder beside the output, then convert that
        from ..adapters import convert_merged
        run = functools.partial(convert_merged, merge_lora)
    result = run(folder, out, outtype=outtype, vocab_only=vocab_only, force=force, pre_tokenizer=pre_tokenizer,
                 provenance=provenance, allow_unsafe_chat_template=allow_unsafe_chat_template,
                 progress=Progress(enabled=not as_json))
    if qtypes:
        quantized = quantize(result.output, qtypes, result.output.parent, force=force, hash_source=True,
                             progress=Progress(enabled=not as_json))
        if not keep:
            result.output.unlink()
    projector = None
    if mmproj_out is not None:
        projector = convert_mmproj(folder, mmproj_out, outtype=mmproj_outtype, force=force,
                                   progress=Progress(enabled=not as_json))
    if as_json:
        extra = {"quantize": quantized} if qtypes else {}
        extra.update({"mmproj": projector} if projector else {})
        emit_json({"convert": result, **extra} if extra else result)
        return
    click.echo(f"wrote {result.output} ({human_bytes(result.size_bytes)}, {result.outtype.upper()}, "
               f"{result.n_tensors} tensors, {result.n_params:,} params) in {result.seconds:.1f}s")
    click.echo(f"architecture {result.architecture} -> {result.gguf_architecture}; tokenizer: {result.tokenizer}, "
               f"{result.vocab_size} tokens")
    if result.dropped:
        parts = ", ".join(f"{part} ({n} tensors)" for part, n in sorted(result.dropped.items()))
        if projector:
            click.echo(f"note: the text model leaves out {parts}; the projector file holds the vision part")
        else:
            tip = "; --mmproj writes the vision part" if result.architecture in supported_projectors() else ""
            click.echo(f"note: converted the text model only; not converted: {parts}{tip}")
    if projector:
        click.echo(f"wrote {projector.output} ({human_bytes(projector.size_bytes)}, {projector.outtype.upper()}, "
                   f"projector {projector.projector_type}, {projector.n_tensors} tensors): "
                   f"{projector.image_tokens} tokens per {projector.image_size}x{projector.image_size} image tile")
    if result.chat_template:
        audit = result.chat_template
        note = f" (accepted with --allow-unsafe-chat-template: {'; '.join(audit['findings'])})" \
            if audit["findings"] else ", renders a plain conversation in the sandbox"
        click.echo(f"chat template: {audit['size_bytes']:,} bytes, {audit['verdict']}{note}")
    if qtypes:
        print_results(quantized)
        if not keep:
            click.echo(f"removed the intermediate {result.output} (--keep keeps it)")
