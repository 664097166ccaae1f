"""``edgepack profiles list|show|validate|calibrate``."""

from __future__ import annotations

from pathlib import Path

import click

from ..profiles import get_profile, load_profile_file, load_profiles
from . import cli
from ._output import emit_json, emit_table

_EXTRA = click.option("--profiles", "extra", multiple=True, type=click.Path(path_type=Path),
                      help="Extra profile file or folder (repeatable); same names replace shipped ones.")


@cli.group("profiles")
def profiles_group() -> None:
    """Device profiles: RAM, bandwidth, threads and speeds of phones, laptops and boards.

    \b
    Examples:
      edgepack profiles list
      edgepack profiles show pixel-8
      edgepack profiles validate my-phone.toml
      edgepack profiles calibrate galaxy-s23 --from llama-bench.json --name my-s23
    """


@profiles_group.command("list")
@_EXTRA
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def list_command(extra: tuple[Path, ...], as_json: bool) -> None:
    """List the shipped profiles (and any given with --profiles)."""
    profiles = load_profiles(extra)
    if as_json:
        emit_json([{"name": p.name, "display_name": p.display_name, "kind": p.kind, "soc": p.soc,
                    "ram_total_gb": p.ram_total_gb.value, "ram_usable_gb": p.ram_usable_gb.value,
                    "bandwidth_gb_s": p.bandwidth_gb_s.value, "backends": list(p.backends), "path": p.path}
                   for p in profiles.values()])
        return
    emit_table(["name", "device", "RAM GB (usable)", "bandwidth GB/s", "backends"],
               [(p.name, p.display_name, f"{p.ram_total_gb.value:g} ({p.ram_usable_gb.value:g})",
                 f"{p.bandwidth_gb_s.value:g}", ",".join(p.backends)) for p in profiles.values()])


@profiles_group.command("show")
@click.argument("name")
@_EXTRA
@click.option("--json", "as_json", is_flag=True, help="Print the whole profile (with sources) as JSON.")
def show_command(name: str, extra: tuple[Path, ...], as_json: bool) -> None:
    """Show one profile with every number's source and kind."""
    p = get_profile(name, extra)
    if as_json:
        emit_json(p.raw)
        return
    click.echo(f"{p.display_name} ({p.name}) - {p.soc}, {p.os}, {p.kind}")
    click.echo(f"  file: {p.path}")
    clusters = " + ".join(f"{c.cores}x {c.name} {c.max_ghz:g} GHz" for c in p.clusters)
    click.echo(f"  CPU: {clusters}; ISA: {', '.join(p.isa)}")
    rows = [("threads", f"{p.threads.value:g}", p.threads), ("RAM total GB", f"{p.ram_total_gb.value:g}", p.ram_total_gb),
            ("RAM usable GB", f"{p.ram_usable_gb.value:g}", p.ram_usable_gb),
            ("bandwidth GB/s", f"{p.bandwidth_gb_s.value:g}", p.bandwidth_gb_s)]
    if "usable_with_entitlement" in p.raw["memory"]:
        ent = p.raw["memory"]["usable_with_entitlement"]
        rows.append(("RAM usable GB (entitled)", f"{ent['gb']:g}", type(p.threads)(ent["gb"], ent["source"], ent["kind"])))
    for b, s in p.generation_efficiency.items():
        rows.append((f"generation efficiency [{b}]", f"{s.value:g}", s))
    for b, fams in p.prompt_gflops.items():
        for f, s in fams.items():
            rows.append((f"prompt GFLOP/s [{b}/{f}]", f"{s.value:g}", s))
    rows.append(("runtime overhead MB", f"{p.runtime_overhead_mb.value:g}", p.runtime_overhead_mb))
    emit_table(["quantity", "value", "kind", "source"], [(q, v, s.kind, s.source[:90]) for q, v, s in rows])
    if p.storage:
        click.echo(f"storage: {p.storage}")
    if p.notes:
        click.echo(f"notes: {p.notes}")


@profiles_group.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate_command(files: tuple[Path, ...]) -> None:
    """Check profile files against the schema; the first problem is reported as file:key: reason."""
    for f in files:
        paths = sorted(f.glob("*.toml")) if f.is_dir() else [f]
        for path in paths:
            p = load_profile_file(path)
            click.echo(f"ok {path} ({p.display_name})")


@profiles_group.command("calibrate")
@click.argument("name")
@click.option("--from", "results", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="llama-bench output (-o json, -o jsonl or its markdown table) or `edgepack bench --json`, measured "
                   "on the device.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Folder or .toml path for the calibrated profile (default: ./NAME-calibrated.toml).")
@click.option("--name", "new_name", help="Name of the calibrated profile (default: NAME-calibrated).")
@click.option("--model", "models", multiple=True,
              help="Markdown results only: the GGUF of each model in the table, in the table's order.")
@click.option("--models", "models_dir", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder holding the benchmarked GGUFs, when the paths in the results are the device's.")
@_EXTRA
def calibrate_command(name: str, results: Path, out: Path | None, new_name: str | None, models: tuple[str, ...],
                      models_dir: tuple[Path, ...], extra: tuple[Path, ...]) -> None:
    """Fit a profile to your own device's measurements: write a calibrated copy of it.

    NAME is the profile the device is closest to (or a .toml). The copy keeps its facts and adds overrides of
    the class calibration (edgepack/data/speed-calibration.toml): prompt GFLOP/s, CPU weights rate, GPU/NPU
    efficiencies and, if a token was faster than fit's floor estimate, the per-token floor, per backend and quant
    type, so that `edgepack fit` gives back what was measured, however fast (nothing is capped at the memory's
    spec); the measured numbers are each value's source (kind = measurement). The GGUFs must be readable here
    (their recorded path, next to the results, or in --models).

    \b
    Examples:
      llama-bench -m model-Q4_0.gguf -m model-Q4_K_M.gguf -t 6 -o json > phone.json   # on the phone
      edgepack profiles calibrate galaxy-s23 --from phone.json --models ./ggufs --name my-s23
      edgepack fit model-*.gguf --profiles my-s23.toml -p my-s23
      edgepack profiles calibrate pixel-8 --from bench.md --model a-Q4_0.gguf --model a-Q8_0.gguf
    """
    from ..calibrate import calibrate_file

    path = calibrate_file(get_profile(name, extra), results, out, name=new_name, models=models, models_dir=models_dir)
    click.echo(f"wrote {path}")
