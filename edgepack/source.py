"""A model source: what a user writes to name a checkpoint, and where it came from.

A source is a local folder or a Hugging Face Hub repo at a revision. Users write it as ``./folder``,
``org/name``, ``org/name@rev`` or ``hf://name@rev`` (the only form that may omit the organisation): on the
command line (``convert``, ``adapter``, ``fit --config``, ``pull``) and in edgepack.toml (``source = ...``).
``parse`` is the one reading of that text; ``Source.resolve`` turns it into a local folder plus its
``Provenance`` (fetching through ``edgepack.hub`` for a repo), which ``convert`` records in the GGUF.

An existing local path wins over a repo id of the same spelling; ``hf://`` always means the Hub. A repo id and
a revision become parts of URLs and of paths in the Hub cache (``refs/<revision>``), so both are checked here,
before any request is sent or any file written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HubError, UsageError
from .progress import QUIET, Progress
from .validate import git_revision

HUB_PREFIX = "hf://"
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class Provenance:
    """Where the source came from, when known (filled by the Hub stage; a local folder has none of it)."""

    repo_id: str | None = None
    revision: str | None = None
    commit_sha: str | None = None
    license: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class Source:
    """Where the checkpoint comes from: a local folder, or a Hub repo at a revision (None: the default branch)."""

    kind: str  # "local" | "hub"
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    explicit: bool = field(default=False, compare=False)  # written as hf://: never a local path

    def __str__(self) -> str:
        if self.kind == "local":
            return str(self.path)
        return f"{self.repo_id}@{self.revision}" if self.revision else str(self.repo_id)

    def to_json(self) -> dict:
        facts = {"kind": self.kind, "path": str(self.path) if self.path else None, "repo_id": self.repo_id,
                 "revision": self.revision}
        return {k: v for k, v in facts.items() if v is not None} | {"spec": str(self)}

    @property
    def name(self) -> str:
        """A short model name (default output names, ``name`` in edgepack.toml): the folder's name (the resolved
        one for ``.``, ``..`` and ``model``), or the repo's name."""
        if self.kind == "hub":
            return self.repo_id.split("/")[-1]
        path = self.path
        return path.resolve().name if path.name in ("", ".", "..", "model") and path.parent.name else path.name

    def resolve(self, *, token: str | None = None, settings=None, progress: Progress = QUIET
                ) -> tuple[Path, Provenance | None]:
        """The source as a local folder plus where it came from. A repo is pulled (pinned, verified; see
        ``edgepack.hub.pull``). A folder made by ``edgepack pull -o`` keeps the provenance recorded in it; any
        other folder only has the licence from its README (or no provenance at all)."""
        if self.kind == "local":
            return self.path, local_provenance(self.path)
        from .hub import pull

        try:
            result = pull(self.repo_id, self.revision, token=token, settings=settings, progress=progress)
        except HubError as exc:
            if self.explicit or " not found on " not in exc.message:
                raise
            # "models/llama" may be a mistyped local path as much as a repo id: say both were tried.
            raise HubError(f"{self} is neither a local folder nor a repository on "
                           f"{exc.message.split(' not found on ')[1]}", exc.hint) from exc
        return result.folder, result.provenance()


def parse(text: str | os.PathLike, base_dir: Path | None = None) -> Source:
    """What a user wrote as a model source. Relative folders are taken from ``base_dir`` (default: the current
    folder). Raises ``UsageError`` for a malformed ``hf://`` id or revision."""
    text = os.fspath(text)
    local = Path(os.path.expanduser(text))
    if base_dir is not None and not local.is_absolute():
        local = base_dir / local
    if not text.startswith(HUB_PREFIX) and local.exists():
        return Source("local", path=local)
    return hub_source(text) or Source("local", path=local)


def hub_source(text: str) -> Source | None:
    """``hf://org/name@rev``, ``org/name@rev`` or ``org/name`` as a Hub source; None if it does not look like one.

    Only the ``hf://`` form may name a repo without an organisation (``hf://gpt2``).
    """
    explicit = text.startswith(HUB_PREFIX)
    body = text[len(HUB_PREFIX):] if explicit else text
    repo_id, sep, revision = body.partition("@")
    repo_id = repo_id.strip("/") if explicit else repo_id
    if sep and not revision:
        raise UsageError(f"no revision after '@' in {text!r}", "write org/name@main, a tag or a commit sha")
    if not _REPO_ID.match(repo_id) or (not explicit and "/" not in repo_id) or ".." in repo_id:
        if explicit:
            raise UsageError(f"{text!r} is not a Hub repo id", "write hf://org/name or hf://org/name@revision")
        return None
    if revision:
        check_revision(revision)
    return Source("hub", repo_id=repo_id, revision=revision or None, explicit=explicit)


def check_repo(repo_id: str, revision: str | None = None) -> None:
    """Refuse a repo id or revision that is not one (for ids that did not come through ``hub_source``)."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise UsageError(f"{repo_id!r} is not a Hub repo id", "write org/name, optionally @revision")
    if revision is not None:
        check_revision(revision)


def check_revision(revision: str) -> str:
    """A Hub revision is a branch, tag or commit name, never a path (it names a file in the Hub cache)."""
    try:
        return git_revision(revision)
    except ValueError as exc:
        raise UsageError(str(exc), "write a branch, tag or commit sha, e.g. org/name@main") from None


def resolve(src: str | os.PathLike | Source, *, token: str | None = None, settings=None,
            progress: Progress = QUIET) -> tuple[Path, Provenance | None]:
    """``parse`` then ``Source.resolve``: a model source as a local folder plus where it came from."""
    source = src if isinstance(src, Source) else parse(src)
    return source.resolve(token=token, settings=settings, progress=progress)


def local_provenance(folder: Path) -> Provenance | None:
    """Provenance of a local folder: from a pull manifest whose files are unchanged in size, else the licence."""
    from .hub import read_manifest

    manifest = read_manifest(folder)
    if manifest is not None:
        unchanged = all((folder / f["name"]).is_file() and (folder / f["name"]).stat().st_size == f["size_bytes"]
                        for f in manifest.get("files", []))
        if unchanged:
            return Provenance(repo_id=manifest.get("repo_id"), revision=manifest.get("revision"),
                              commit_sha=manifest.get("commit_sha"), license=manifest.get("license"),
                              url=manifest.get("url"))
    license_ = read_license(folder / "README.md")
    return Provenance(license=license_) if license_ else None


def read_license(readme: Path) -> str | None:
    """The ``license:`` of a model card's YAML front matter (``license_name`` when it says ``other``)."""
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if not text.lstrip().startswith("---"):
        return None
    from huggingface_hub import RepoCard

    try:
        data = RepoCard(text, ignore_metadata_errors=True).data
    except Exception:  # a broken card must not stop a conversion; the licence is then unknown
        return None
    license_ = data.get("license")
    if license_ == "other" and data.get("license_name"):
        license_ = data.get("license_name")
    if isinstance(license_, list):
        license_ = ", ".join(str(x) for x in license_)
    return str(license_) if license_ else None
