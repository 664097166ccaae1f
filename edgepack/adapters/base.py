"""Reading the base an adapter is meant for: a Hugging Face folder, a Hub repo id or a GGUF, described by its
family's ``ArchSpec`` (target tensor names and shapes, the transforms convert applies)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from .. import gguf_keys as keys
from ..convert import families  # noqa: F401  (registers every family)
from ..convert.checkpoint import Checkpoint, load_json
from ..convert.spec import ArchSpec, HFConfig, family_of, spec_for, supported_architectures
from ..errors import AdapterError, BadGGUF
from ..fileio import sha256_file
from ..ggufheader import read_header
from ..progress import QUIET, Progress
from ..source import Provenance, resolve as resolve_source


@dataclass
class _Base:
    path: Path
    kind: str  # "hf" | "gguf"
    name: str
    hf_class: str | None
    spec: ArchSpec
    config: HFConfig
    n_blocks: int
    shapes: dict[str, tuple[int, ...]]  # GGUF tensor name -> HF-order shape, for every 2-D+ base weight
    names: set[str] = field(default_factory=set)  # extra names that identify the base (general.name, ...)
    provenance: Provenance | None = None
    weights_sha256: dict[str, str] | None = None  # source safetensors file -> sha256 (None: not computed yet)
    gguf_sha256: str | None = None
    checkpoint: Checkpoint | None = None

    def gguf_name(self, hf_tensor: str) -> str | None:
        return gguf.get_tensor_name_map(self.spec.arch, self.n_blocks).get_name(hf_tensor,
                                                                                try_suffixes=(".weight", ".bias"))

    def source_hashes(self, progress: Progress = QUIET) -> dict[str, str]:
        if self.weights_sha256 is None:  # an HF folder: hash its safetensors as the converter does
            files = self.checkpoint.files
            progress.start("hashing base weights", len(files))
            self.weights_sha256 = {}
            for path in files:
                self.weights_sha256[path.name] = sha256_file(path)
                progress.advance()
            progress.finish()
        return self.weights_sha256


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _resolve(source: str | os.PathLike, what: str, progress: Progress) -> tuple[Path, Provenance | None]:
    """A local path as given, or a Hub repo id fetched with edgepack.hub (pinned, verified)."""
    path, provenance = resolve_source(source, progress=progress)
    if not Path(path).exists():
        raise AdapterError(f"{what} {os.fspath(source)} does not exist", "give a local folder, a .gguf, or org/name")
    return Path(path), provenance


def _load_base(base: str | os.PathLike, progress: Progress = QUIET) -> _Base:
    text = os.fspath(base)
    if Path(text).is_file():
        if not _is_gguf(Path(text)):
            raise AdapterError(f"base {text} is a file but not a GGUF", "give the base's HF folder or its .gguf")
        return _load_gguf_base(Path(text))
    path, provenance = _resolve(text, "base", progress)
    if path.is_file():
        return _load_gguf_base(path)
    return _load_hf_base(path, provenance)


def _load_hf_base(folder: Path, provenance: Provenance | None) -> _Base:
    spec, config = family_of(load_json(folder / "config.json", "config.json"))
    spec.check(config)
    checkpoint = Checkpoint(folder)
    n_blocks = int(config.get("num_hidden_layers", "n_layer"))
    name_map = gguf.get_tensor_name_map(spec.arch, n_blocks)
    shapes = {}
    for hf_name, expected in spec.tensors(config).items():
        if expected.optional and hf_name not in checkpoint.tensors:
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None and len(expected.shape) >= 2:
            shapes[gguf_name] = tuple(expected.shape)
    names = {folder.resolve().name}
    if provenance and provenance.repo_id:
        names.add(provenance.repo_id)
    return _Base(folder, "hf", folder.resolve().name, config.architecture, spec, config, n_blocks, shapes, names,
                 provenance, checkpoint=checkpoint)


def _load_gguf_base(path: Path) -> _Base:
    header = read_header(path)  # fast and strict: a damaged file is one BadGGUF line
    K = gguf.Keys
    if header.get(K.General.TYPE, "model") != "model":
        raise AdapterError(f"base {path.name} is a GGUF of type {header.get(K.General.TYPE)!r}, not a model",
                           "give the base model's GGUF")
    arch = header.get(K.General.ARCHITECTURE)
    hf_class = header.get(keys.Source.ARCHITECTURE)
    known_class = hf_class
    if hf_class is None:  # a GGUF made by another tool: any class registered for this llama.cpp arch will do
        hf_class = next((c for c, a in supported_architectures().items() if a == arch), None)
        if hf_class is None:
            raise AdapterError(f"base architecture {arch!r} is not supported by edgepack",
                               "edgepack convert --list-architectures lists the supported ones")
    spec = spec_for(hf_class)
    if spec.arch_name != arch:
        raise BadGGUF(f"{path.name} says architecture {arch} but was converted from {hf_class}",
                      "the file's metadata is inconsistent; re-convert the base")

    def key(template: str, default=None):
        return header.get(template.format(arch=arch), default)

    # The family's transforms read a few hyperparameters (head counts for the Q/K permutation); rebuild them.
    data = {"architectures": [hf_class], "hidden_size": key(K.LLM.EMBEDDING_LENGTH),
            "num_hidden_layers": key(K.LLM.BLOCK_COUNT), "num_attention_heads": key(K.Attention.HEAD_COUNT),
            "num_key_value_heads": key(K.Attention.HEAD_COUNT_KV), "intermediate_size": key(K.LLM.FEED_FORWARD_LENGTH),
            "head_dim": key(K.Attention.KEY_LENGTH), "vocab_size": key(K.LLM.VOCAB_SIZE)}
    config = HFConfig({k: v for k, v in data.items() if v is not None})
    shapes = {t.name: tuple(reversed(t.shape)) for t in header.tensors if len(t.shape) >= 2}
    files, hashes = header.get(keys.Source.FILES), header.get(keys.Source.SHA256)
    weights = {}
    if isinstance(files, list) and isinstance(hashes, list) and len(files) == len(hashes):
        weights = {f: h for f, h in zip(files, hashes) if f.endswith(".safetensors")}
    provenance = Provenance(**{name: header.get(key) for name, key in keys.Source.PROVENANCE.items()
                               if name != "license"})
    names = {n for n in (header.get(K.General.NAME), header.get(K.General.BASENAME), provenance.repo_id) if n}
    name = provenance.repo_id or header.get(K.General.NAME) or path.stem
    return _Base(path, "gguf", name, known_class, spec, config, int(key(K.LLM.BLOCK_COUNT, 0)), shapes, names,
                 provenance, weights_sha256=weights)
