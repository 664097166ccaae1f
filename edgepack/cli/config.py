"""``edgepack config``: print the resolved pipeline config; and the option bundle build/plan share."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..config import OPTIONS, resolve
from . import cli
from ._output import emit_json, emit_table

_KEYS_HELP = "\n".join(f"  {o.key:<20} {o.env or '':<24} {o.help}" for o in OPTIONS)


def config_options(func):
    """CONFIG argument + the options that override the file (highest precedence). Adds ``build_config``."""
    @click.argument("config_file", metavar="[CONFIG]", required=False, type=click.Path(path_type=Path))
    @click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path),
                  help="Output folder (outputs.dir; default: dist).")
    @click.option("-t", "--quant", "quants", multiple=True, help="Quant type (repeatable; replaces quantize.*).")
    @click.option("-p", "--profile", "profiles", multiple=True, help="Device profile (repeatable).")
    @click.option("--ctx", type=int, help="Context length (constraints.ctx).")
    @click.option("--min-tps", type=float, help="Minimum projected generation tok/s (constraints.min_tps).")
    @click.option("--max-kld", type=float, help="Maximum KLD vs the unquantized model (constraints.max_kld).")
    @click.option("--archive", type=click.Choice(["none", "tar.zst", "zip"]), help="Pack each bundle too.")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                  help="Override any config key, e.g. --set eval.tokens=512 (repeatable).")
    @functools.wraps(func)
    def wrapper(config_file, output_dir, quants, profiles, ctx, min_tps, max_kld, archive, sets, **kwargs):
        overrides = {"outputs.dir": str(output_dir) if output_dir else None,
                     "quantize.types": ",".join(quants) if quants else None,
                     "profiles.names": ",".join(profiles) if profiles else None,
                     "constraints.ctx": ctx, "constraints.min_tps": min_tps, "constraints.max_kld": max_kld,
                     "outputs.archive": archive}
        for item in sets:
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
            overrides[key.strip()] = value
        known = {o.key for o in OPTIONS}
        for key in overrides:
            if key not in known:
                raise click.BadParameter(f"unknown key {key!r}; known: {', '.join(sorted(known))}",
                                         param_hint="--set")
        kwargs["build_config"] = resolve(config_file, cli=overrides)
        return func(**kwargs)
    return wrapper


@cli.command("config", epilog="\b\nKeys (file key, environment variable, meaning):\n" + _KEYS_HELP)
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the resolved config as JSON.")
def config_command(build_config, as_json: bool) -> None:
    """Print the resolved build config and where each value came from.

    CONFIG is an edgepack.toml, a pyproject.toml with [tool.edgepack], or a folder holding one (default:
    the current folder). Precedence: command line > EDGEPACK_* environment > file > defaults.

    \b
    Examples:
      edgepack config examples/demo/edgepack.toml
      EDGEPACK_CTX=4096 edgepack config --json
      edgepack config --set constraints.max_kld=0.05 -t Q4_K_M
    """
    data = build_config.to_dict()
    if as_json:
        emit_json(data)
        return
    origins = data.pop("origins")
    click.echo(f"config file: {data.pop('config_file') or '(none)'}")
    rows = []
    for key, value in data.items():
        if key == "source":
            value = value["spec"]
        elif key == "adapters":
            value = "; ".join(f"{a['name']} ({a['mode']}, scales {', '.join(map(str, a['scales']))}): {a['path']}"
                              for a in value) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or ("all shipped" if key == "profiles" else "-")
        elif value is None:
            value = "-"
        rows.append((key, value, origins.get(key, "default")))
    emit_table(["option", "value", "from"], rows)
