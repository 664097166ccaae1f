"""``edgepack pull``."""

from __future__ import annotations

from pathlib import Path

import click

from ..hub import pull
from ..source import HUB_PREFIX, hub_source
from ..progress import Progress
from . import cli
from ._output import emit_json, human_bytes


@cli.command("pull")
@click.argument("repo")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="Also copy the files into this folder (default: they stay in the Hugging Face cache).")
@click.option("--token", metavar="TOKEN", help="Hub access token for gated or private repos (default: $HF_TOKEN).")
@click.option("--include", "include", multiple=True, metavar="GLOB",
              help="Also fetch files matching this pattern (repeatable), e.g. --include '*.bin'.")
@click.option("--force", is_flag=True, help="Replace a non-empty -o folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pull_command(repo: str, out: Path | None, token: str | None, include: tuple[str, ...], force: bool,
                 as_json: bool) -> None:
    """Download a model from the Hugging Face Hub, pinned to a commit.

    REPO is org/name, org/name@REVISION or hf://org/name@REVISION; REVISION is a branch, a tag or a
    (short) commit sha, default main. It is resolved to the full commit sha, which is printed and recorded.
    Only what conversion needs is fetched: config and generation config, safetensors weights (+ index),
    tokenizer files, chat template, adapter files, README.md and LICENSE. Pickled weights (*.bin, *.pth),
    *.msgpack, *.h5 and ONNX files are never fetched unless --include asks. Every file is checked against
    the sha256 the Hub publishes.

    Files go to the Hugging Face cache (HF_HOME / HF_HUB_CACHE); a second pull of the same commit
    transfers nothing, and with HF_HUB_OFFLINE=1 the cache is used without any network access. HF_ENDPOINT
    selects another Hub (a mirror).

    \b
    Examples:
      edgepack pull TinyLlama/TinyLlama-1.1B-Chat-v1.0
      edgepack pull HuggingFaceTB/SmolLM2-135M@main -o ./SmolLM2-135M
      edgepack pull meta-llama/Llama-3.2-1B --token hf_xxx --json
      HF_HUB_OFFLINE=1 edgepack pull HuggingFaceTB/SmolLM2-135M@main
    """
    # A repo id here is never a local path, so parse it as the explicit hf:// form (bad ids raise UsageError).
    source = hub_source(repo if repo.startswith(HUB_PREFIX) else HUB_PREFIX + repo)
    result = pull(source.repo_id, source.revision, out, token=token, include=include, force=force,
                  progress=Progress(enabled=not as_json))
    if as_json:
        emit_json(result)
        return
    total = sum(f.size_bytes for f in result.files)
    click.echo(f"{result.repo_id}@{result.revision} -> commit {result.commit_sha}")
    where = "from the cache, no network" if not result.network_used else (
        f"{human_bytes(result.downloaded_bytes)} downloaded")
    click.echo(f"{len(result.files)} files, {human_bytes(total)} ({where}) in {result.folder}")
    click.echo(f"licence: {result.license or 'unknown (no license in the model card)'}")
    if result.skipped:
        shown = ", ".join(result.skipped[:6]) + (" ..." if len(result.skipped) > 6 else "")
        click.echo(f"left out {len(result.skipped)} files not needed for conversion: {shown}")
