"""Publishing: bundles and the report are made in their step folders like every other step; here they are copied
into ``<output>/bundles/`` and ``<output>/report/`` (atomically: a folder is built beside its target and renamed,
a file is written to a temp name and renamed).

A published copy is checked against what its step made (every file's sha256, memoised on path, size and mtime,
so an untouched copy costs nothing): one that is missing, edited or incomplete is copied again, and a bundle
that is no longer part of the build is removed. The step cache itself is never written here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..bundle import ARCHIVE_SUFFIXES, MANIFEST
from ..fileio import atomic_copy, atomic_dir, regular_files
from .artifacts import Bundle, BundleSummary
from .context import BuildContext


def publish_bundle(ctx: BuildContext, b: Bundle) -> BundleSummary:
    root = ctx.out / "bundles"
    target = root / b.name
    if not _same(ctx, target, b.files):
        if target.exists():
            ctx.log(f"[bundle] {b.name}: the published copy differs from the one built; publishing it again")
        root.mkdir(parents=True, exist_ok=True)
        with atomic_dir(target) as tmp:
            for rel in b.files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(b.folder / rel, tmp / rel)  # a copy, never a link: a shipped file may be edited
        _remember(ctx, target, b.files)
    archive = None
    if b.archive is not None:
        archive = root / b.archive.name
        if not ctx.hashes.unchanged(root, {archive.name: b.archive_sha256}):
            atomic_copy(b.archive, archive)
            _remember(ctx, root, {archive.name: b.archive_sha256})
    return BundleSummary(b.profile, b.line, b.variant, target, archive, manifest_sha256=b.manifest_sha256)


def publish_report(ctx: BuildContext, folder: Path, files: dict[str, str]) -> Path:
    """Copy the build's report files (name -> sha256) from their step folder into ``<output>/report/``; the
    HTML page's path."""
    target = ctx.out / "report"
    target.mkdir(parents=True, exist_ok=True)
    for name in files:
        if not ctx.hashes.unchanged(target, {name: files[name]}):
            atomic_copy(folder / name, target / name)
            _remember(ctx, target, {name: files[name]})
    return target / "report.html"


def remove_stale_bundles(ctx: BuildContext, bundles: list[BundleSummary]) -> None:
    """A bundle from an earlier build whose profile now has no pick (or left the config) must not linger."""
    root = ctx.out / "bundles"
    keep = {p.name for b in bundles for p in (b.folder, b.archive) if p is not None}
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name in keep or entry.name.startswith("."):
            continue
        is_bundle = (entry.is_dir() and (entry / MANIFEST).is_file()) or (
            entry.is_file() and entry.name.endswith(tuple(ARCHIVE_SUFFIXES.values())))
        if is_bundle:
            ctx.log(f"[bundle] removing {entry.name}: not part of this build")
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _same(ctx: BuildContext, target: Path, files: dict[str, str]) -> bool:
    """Whether the published folder holds exactly ``files`` (path -> sha256), nothing more."""
    try:
        if set(regular_files(target)) != set(files):
            return False
    except (OSError, ValueError):  # missing, or holding a link or a device: copy it again
        return False
    return ctx.hashes.unchanged(target, files)


def _remember(ctx: BuildContext, folder: Path, files: dict[str, str]) -> None:
    """The copies' hashes are known: the next build finds them in the memo instead of reading the files."""
    for rel, sha in files.items():
        ctx.hashes.record(folder / rel, sha)
    ctx.hashes.save()
