"""``edgepack adapter convert|merge|check``."""

from __future__ import annotations

from pathlib import Path

import click

from ..adapters import ADAPTER_OUTTYPES, check_compatibility, convert_adapter, merge_adapter
from ..progress import Progress
from . import cli
from ._output import emit_json, human_bytes

_STRICT_HELP = ("Refuse (instead of warn) when the base named in adapter_config.json "
                "(base_model_name_or_path, revision) is not this base.")


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _report(result, as_json: bool, summary: str) -> None:
    """The result as JSON, or its warnings and a one-line summary."""
    if as_json:
        emit_json(result)
        return
    _warn(result.warnings)
    click.echo(summary)


@cli.group("adapter")
def adapter_group() -> None:
    """PEFT LoRA adapters: convert to GGUF adapters, merge into the base, check they fit.

    \b
    Examples:
      edgepack adapter check ./my-lora --base ./Llama-3.2-1B
      edgepack adapter convert ./my-lora --base llama-F16.gguf -o my-lora.gguf
      edgepack adapter merge ./my-lora --base ./Llama-3.2-1B -o merged/
      edgepack convert ./Llama-3.2-1B --merge-lora ./my-lora -o merged-F16.gguf
    """


@adapter_group.command("convert")
@click.argument("peft_dir", type=click.Path(path_type=Path))
@click.option("--base", "base", required=True, metavar="BASE",
              help="The base model: its HF folder, a Hub repo id (org/name[@rev]) or its converted .gguf.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Output .gguf (default: <adapter folder name>-<OUTTYPE>.gguf).")
@click.option("--outtype", type=click.Choice(ADAPTER_OUTTYPES), default="f32", show_default=True,
              help="Type of the lora_a/lora_b tensors (adapters are small; f32 is exact).")
@click.option("--strict", is_flag=True, help=_STRICT_HELP)
@click.option("--force", is_flag=True, help="Overwrite the output if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def convert_command(peft_dir: Path, base: str, out: Path | None, outtype: str, strict: bool, force: bool,
                    as_json: bool) -> None:
    """Convert a PEFT LoRA adapter to the GGUF adapter format llama.cpp loads (--lora).

    The adapter is checked against BASE first (architecture, layers, sizes, target modules, the base named
    in adapter_config.json); nothing is written if it does not fit. Tensors are named after the base's GGUF
    tensors, with the base family's layout changes (e.g. Llama's Q/K rope order) applied.

    \b
    Examples:
      edgepack adapter convert ./my-lora --base ./TinyLlama-1.1B -o my-lora.gguf
      edgepack adapter convert ./my-lora --base tinyllama-Q8_0.gguf --strict --json
      llama-cli -m tinyllama-Q8_0.gguf --lora my-lora.gguf
    """
    if out is None:
        out = Path(f"{peft_dir.resolve().name}-{outtype.upper()}.gguf")
    result = convert_adapter(peft_dir, base, out, outtype=outtype, strict=strict, force=force,
                             progress=Progress(enabled=not as_json))
    _report(result, as_json, f"wrote {result.output} ({human_bytes(result.size_bytes)}, {result.outtype.upper()}, "
            f"{result.n_pairs} LoRA pairs, rank {'/'.join(map(str, result.ranks))}, alpha {result.lora_alpha:g}) "
            f"for {result.gguf_architecture} base {result.base_name} in {result.seconds:.1f}s")


@adapter_group.command("merge")
@click.argument("peft_dir", type=click.Path(path_type=Path))
@click.option("--base", "base", required=True, metavar="BASE",
              help="The base model's HF folder (or a Hub repo id org/name[@rev]).")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="Output folder for the merged model (safetensors + config + tokenizer).")
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Multiply the adapter's effect (llama.cpp's --lora-scaled); 1 merges it as trained.")
@click.option("--strict", is_flag=True, help=_STRICT_HELP)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def merge_command(peft_dir: Path, base: str, out: Path, scale: float, strict: bool, force: bool,
                  as_json: bool) -> None:
    """Merge a PEFT LoRA adapter into its base: W + scaling·B·A, saved as HF safetensors.

    The merged folder keeps the base's dtypes, files and tokenizer, so it converts and quantizes like any
    other model. rsLoRA and alpha/rank patterns are merged exactly; DoRA is refused.

    \b
    Examples:
      edgepack adapter merge ./my-lora --base ./TinyLlama-1.1B -o tinyllama-mine/
      edgepack convert tinyllama-mine/ --outtype q8_0
    """
    result = merge_adapter(peft_dir, base, out, scale=scale, strict=strict, force=force,
                           progress=Progress(enabled=not as_json))
    _report(result, as_json, f"wrote {result.output}/ ({result.n_merged} of {result.n_tensors} tensors merged, "
            f"{len(result.files)} files) in {result.seconds:.1f}s")


@adapter_group.command("check")
@click.argument("peft_dir", type=click.Path(path_type=Path))
@click.option("--base", "base", required=True, metavar="BASE", help="HF folder, Hub repo id or .gguf.")
@click.option("--strict", is_flag=True, help=_STRICT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def check_command(ctx: click.Context, peft_dir: Path, base: str, strict: bool, as_json: bool) -> None:
    """Check that a PEFT LoRA adapter fits BASE; list every problem. Exit 12 if it does not fit.

    \b
    Examples:
      edgepack adapter check ./my-lora --base ./TinyLlama-1.1B
      edgepack adapter check ./my-lora --base tinyllama-F16.gguf --strict --json
    """
    report = check_compatibility(peft_dir, base, strict=strict)
    if as_json:
        emit_json({**report.__dict__, "ok": report.ok})
    else:
        click.echo(f"adapter {report.adapter}: {report.n_pairs} LoRA pairs on {', '.join(report.target_modules)}; "
                   f"rank {'/'.join(map(str, report.ranks))}, alpha {report.lora_alpha:g}, scaling {report.scaling}")
        click.echo(f"base {report.base_name} ({report.base_kind}, {report.architecture or report.gguf_architecture}, "
                   f"{report.n_layers} layers); base identity: {report.base_identity}")
        _warn(report.warnings)
        for error in report.errors:
            click.echo(f"error: {error}", err=True)
        click.echo("fits" if report.ok else "does not fit")
    if not report.ok:
        ctx.exit(12)
