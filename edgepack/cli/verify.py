"""``edgepack verify``."""

from __future__ import annotations

from pathlib import Path

import click

from ..bundle import verify_bundle
from ..errors import UsageError
from . import cli
from ._output import emit_json, human_bytes


@cli.command("verify")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--no-load", is_flag=True, help="Check hashes only; do not load the GGUF in llama.cpp.")
@click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for the load check.")
@click.option("--expect", metavar="SHA256", help="The manifest.json sha256 recorded when the bundle was built "
                                                   "(build --json: manifest_sha256); one bundle only.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def verify_command(bundles: tuple[Path, ...], no_load: bool, threads: int, expect: str | None, as_json: bool) -> None:
    """Check bundles: only regular files inside, manifest.json unedited (its own digest), every file's size and
    sha256 against it, nothing unlisted, its facts equal to the GGUF's, and that the GGUF (with each adapter)
    loads and runs in llama.cpp. Any changed byte fails (exit code 13).

    BUNDLES are bundle folders or their .tar.zst / .zip archives. Without --expect this proves the bundle is
    intact and consistent, not who made it: anyone able to edit it can rewrite the manifest consistently.
    --expect SHA256 (the manifest_sha256 printed here and by build --json, kept somewhere the bundle's editor
    cannot reach) pins the exact bundle. See docs/security.md.

    \b
    Examples:
      edgepack verify out/demo/bundles/pixel-8
      edgepack verify out/demo/bundles/*.tar.zst --json
      edgepack verify pixel-8.tar.zst --expect 3f9c...e1
    """
    if expect is not None and len(bundles) != 1:
        raise UsageError("--expect checks one bundle", "verify the bundles one at a time, each with its sha256")
    results = [verify_bundle(b, load=not no_load, n_threads=threads, expect=expect) for b in bundles]
    if as_json:
        emit_json(results)
        return
    for r in results:
        loaded = "loads in llama.cpp" if r.loaded else "load not checked"
        extra = f", adapters {', '.join(r.adapters_loaded)} load" if r.adapters_loaded else ""
        if r.mmproj:
            extra += f", projector {r.mmproj} " + ("encodes an image" if r.loaded else "listed")
        click.echo(f"ok {r.bundle}: {r.n_files} files, {human_bytes(r.size_bytes)}, hashes match; "
                   f"{r.model} {loaded}{extra}; manifest sha256 {r.manifest_sha256}")
