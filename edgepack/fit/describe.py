"""Describing a model for the fit: a ``ModelDesc`` (architecture numbers + every weight tensor with its ggml type
and bytes), read from a GGUF's header (``describe_gguf``), or built from a Hugging Face ``config.json`` and a quant
type (``describe_config``) with the family's ``ArchSpec`` (the one description convert uses) and llama.cpp's
per-tensor quant mix (``quants.quant_types``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import gguf_keys as keys
from ..convert.spec import LayerSize, SizeFacts, family_of, gguf_tensors, supported_architectures
from ..errors import BadGGUF, EdgepackError, UsageError
from ..fileio import parse_json
from ..ggufheader import GGUFHeader, SkippedArray
from ..loadcheck import check_loadable
from ..quants import QT, QUANT_BASE, ftype_name, quant_family, quant_types, tensor_bytes
from ..source import hub_source


@dataclass
class TensorDesc:
    name: str
    shape: tuple[int, ...]  # GGUF order: row length first
    type: str
    size_bytes: int


@dataclass
class ModelDesc:
    name: str
    quant: str
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    n_swa: int = 0
    swa_layers: list[bool] = field(default_factory=list)  # True = sliding-window layer
    tied_embeddings: bool = False
    tensors: list[TensorDesc] = field(default_factory=list, repr=False)
    file_size_bytes: int = 0
    source: str = ""  # file path or config path
    # Per layer (convert/spec.py LayerSize); empty: every layer has n_head_kv x head_dim_k/v and swa_layers.
    layers: list[LayerSize] = field(default_factory=list, repr=False)
    n_expert: int = 0
    n_expert_used: int = 0
    lookup_tensors: tuple[str, ...] = ("token_embd.weight",)

    def layer_sizes(self) -> list[LayerSize]:
        if self.layers:
            return self.layers
        swa = self.swa_layers or [False] * self.n_layer
        return [LayerSize(self.n_head, self.n_head_kv, self.head_dim_k, self.head_dim_v,
                          sliding_window=self.n_swa if slides else 0) for slides in swa]

    @property
    def weight_bytes(self) -> int:
        return sum(t.size_bytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(t.shape)) for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / max(self.n_params, 1)

    def _is_lookup(self, t: TensorDesc) -> bool:
        """A table of which a token reads one row (token embedding, per-layer embeddings), unless it is also
        the output matrix (tied embeddings)."""
        return t.name in self.lookup_tensors and not (self.tied_embeddings and t.name == "token_embd.weight")

    def _active_share(self, t: TensorDesc) -> float:
        """Stacked experts (``*_exps``): a token reads only the n_expert_used it is routed to."""
        return self.n_expert_used / self.n_expert if "_exps." in t.name and self.n_expert else 1.0

    @property
    def bytes_read_per_token(self) -> int:
        """Weights generation streams per token: everything, except one row of each lookup table and only the
        active experts of each MoE layer."""
        return int(sum(t.size_bytes // max(t.shape[-1], 1) if self._is_lookup(t)
                       else t.size_bytes * self._active_share(t) for t in self.tensors))

    @property
    def matmul_params(self) -> int:
        """Parameters in matrix multiplications per token (2 FLOPs each): every matrix but the lookup tables
        (a tied embedding is the output matrix, so it counts), active experts only."""
        return int(sum(int(np.prod(t.shape)) * self._active_share(t) for t in self.tensors
                       if len(t.shape) >= 2 and not self._is_lookup(t)))

    @property
    def quant_key(self) -> str:
        """The ggml type (lower case, e.g. q4_k) holding most of the matmul bytes: the key of per-type rates."""
        by_type: dict[str, int] = {}
        for t in self.tensors:
            if len(t.shape) >= 2 and t.name != "token_embd.weight":
                by_type[t.type.lower()] = by_type.get(t.type.lower(), 0) + t.size_bytes
        return max(by_type, key=by_type.get) if by_type else "f16"

    @property
    def quant_family(self) -> str:
        by_family: dict[str, int] = {}
        for t in self.tensors:
            if len(t.shape) >= 2 and not self._is_lookup(t) and t.name != "token_embd.weight":
                f = quant_family(QT[t.type])
                by_family[f] = by_family.get(f, 0) + t.size_bytes
        return max(by_family, key=by_family.get) if by_family else "f16"


SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "cohere2": 4}  # llama.cpp: hparams.set_swa_pattern(n) per architecture


def describe_gguf(path: str | Path) -> ModelDesc:
    """Read a GGUF's hyperparameters and tensor sizes (no weights are loaded)."""
    path = Path(path)
    # BadGGUF for anything but a complete GGUF llama.cpp can load: the layer count is bounded, numbers are finite
    header = check_loadable(path)
    arch = header.get("general.architecture")

    def key(k, default=None):
        value = header.get(f"{arch}.{k}", default)
        return default if isinstance(value, SkippedArray) else value

    def number(value, k: str) -> int:
        if value is None:
            raise BadGGUF(f"{path}: {arch}.{k} is missing", "was it written by llama.cpp or edgepack?")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise BadGGUF(f"{path}: {arch}.{k} is {value!r}, not a count", "the file is damaged: re-create it")
        return int(value)

    n_layer = number(key("block_count"), "block_count")

    def per_layer(k: str, default) -> list[int]:  # llama.cpp writes some hyperparameters as per-layer arrays
        value = key(k, default)
        return [number(x, k) for x in value] if isinstance(value, list) else [number(value, k)] * n_layer

    n_embd = number(key("embedding_length"), "embedding_length")
    heads = per_layer("attention.head_count", 0)
    kv_heads = per_layer("attention.head_count_kv", key("attention.head_count"))
    n_head, n_head_kv = max(heads), max(kv_heads)
    head_k = number(key("attention.key_length", n_embd // max(n_head, 1)), "attention.key_length")
    head_v = number(key("attention.value_length", head_k), "attention.value_length")
    n_swa = number(key("attention.sliding_window", 0) or 0, "attention.sliding_window")
    tensors = [TensorDesc(t.name, t.shape, t.type.name, t.n_bytes) for t in header.tensors]
    names = {t.name for t in tensors}
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    n_vocab = number(key("vocab_size", 0) or (embd.shape[1] if embd else 0), "vocab_size")
    ftype = header.get("general.file_type")
    n_ff = max(per_layer("feed_forward_length", 0))
    swa_layers = _swa_layers(arch, n_layer, n_swa, key("attention.sliding_window_pattern"))
    facts = _source_sizes(header)
    if facts is not None:  # converted by edgepack: the family's own per-layer description
        layers, lookup = list(facts.layers), facts.lookup_tensors
        n_expert, n_expert_used = facts.n_expert, facts.n_expert_used
    else:  # another converter's file: llama.cpp's per-layer arrays, uniform head sizes
        layers = [LayerSize(h, kv, head_k, head_v, sliding_window=n_swa if slides else 0)
                  for h, kv, slides in zip(heads, kv_heads, swa_layers)]
        lookup = ("token_embd.weight", "per_layer_token_embd.weight")
        n_expert = number(key("expert_count", 0) or 0, "expert_count")
        n_expert_used = number(key("expert_used_count", 0) or 0, "expert_used_count")
    return ModelDesc(name=path.stem, quant=ftype_name(ftype),
                     architecture=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                     head_dim_k=head_k, head_dim_v=head_v, n_ff=n_ff, n_vocab=n_vocab,
                     n_ctx_train=number(key("context_length", 0), "context_length"), n_swa=n_swa, swa_layers=swa_layers,
                     tied_embeddings="output.weight" not in names, tensors=tensors,
                     file_size_bytes=path.stat().st_size, source=str(path), layers=layers, n_expert=n_expert,
                     n_expert_used=n_expert_used, lookup_tensors=lookup)


def _source_sizes(header: GGUFHeader) -> SizeFacts | None:
    """The family's SizeFacts from the config.json edgepack convert stores in the GGUF (None for files from
    other converters, or a class this edgepack does not know)."""
    text, hf_class = header.get(keys.Source.CONFIG), header.get(keys.Source.ARCHITECTURE)
    if not text or hf_class not in supported_architectures():
        return None
    try:
        config = parse_json(text, keys.Source.CONFIG, BadGGUF, "")
        if not isinstance(config, dict):
            return None
        spec, config = family_of(config)
        return spec.sizes(config)
    except (EdgepackError, ValueError, TypeError, KeyError):  # a config this version cannot read (or a
        return None  # stranger's): fall back to the GGUF's own keys


def _swa_layers(arch: str, n_layer: int, n_swa: int, pattern=None) -> list[bool]:
    if not n_swa:
        return [False] * n_layer
    if isinstance(pattern, list) and len(pattern) == n_layer:  # per-layer booleans in newer GGUFs
        return [bool(x) for x in pattern]
    period = int(pattern) if isinstance(pattern, (int, float)) and pattern else SWA_PATTERN.get(arch, 0)
    if not period:
        return [False] * n_layer
    # llama.cpp: layer il is SWA unless (il % period) == period - 1
    return [(i % period) < period - 1 for i in range(n_layer)]


def describe_config(config: dict, quant: str, name: str = "model") -> ModelDesc:
    """Sizes without files: the tensors convert would write for ``config`` (from the family's ArchSpec, the
    one description convert uses) and the types llama.cpp's quantizer gives them for ``quant`` (e.g. Q4_K_M).
    Architectures and settings convert refuses are refused here with the same error."""
    quant = quant.upper()
    if quant not in QUANT_BASE:
        raise UsageError(f"unknown quant type {quant!r}", f"choose one of {', '.join(QUANT_BASE)}")
    spec, hf = family_of(config)
    spec.check(hf)
    facts = spec.sizes(hf)
    shapes = gguf_tensors(spec, hf)
    first = next((layer for layer in facts.layers if layer.n_head_kv), facts.layers[0])
    n_gqa = facts.layers[0].n_head // facts.layers[0].n_head_kv if facts.layers[0].n_head_kv else 0
    types = quant_types(quant, shapes, len(facts.layers), n_gqa, facts.n_expert)
    tensors = [TensorDesc(n, shape, types[n].name, tensor_bytes(types[n], shape)) for n, shape in shapes]
    swa = [layer.sliding_window > 0 for layer in facts.layers]
    return ModelDesc(name=f"{name}-{quant}", quant=quant, architecture=spec.arch_name, n_layer=len(facts.layers),
                     n_embd=facts.n_embd, n_head=first.n_head, n_head_kv=first.n_head_kv,
                     head_dim_k=first.head_dim_k, head_dim_v=first.head_dim_v, n_ff=facts.n_ff,
                     n_vocab=facts.n_vocab, n_ctx_train=facts.n_ctx_train,
                     n_swa=max((layer.sliding_window for layer in facts.layers), default=0), swa_layers=swa,
                     tied_embeddings=not any(n == "output.weight" for n, _ in shapes), tensors=tensors,
                     file_size_bytes=sum(t.size_bytes for t in tensors), source=name, layers=list(facts.layers),
                     n_expert=facts.n_expert, n_expert_used=facts.n_expert_used,
                     lookup_tensors=facts.lookup_tensors)


def load_config(source: str | Path) -> dict:
    """config.json from a path (a file, or a folder holding one), or from a Hub repo id (``org/name``,
    ``org/name@rev``, ``hf://...``): then only config.json is fetched, through edgepack.hub (no weights)."""
    p = Path(source)
    if p.is_dir():
        p = p / "config.json"
    if p.is_file():
        return _read_config(p)
    from .. import hub

    text = str(source)
    repo = hub_source(text)
    if repo is None:
        raise UsageError(f"{source}: no such config.json, and not a Hub repo id",
                         "give a path to config.json (or a folder holding one), or org/name[@revision]")
    return _read_config(hub.fetch_file(repo.repo_id, "config.json", repo.revision))


def config_name(source: str | Path) -> str:
    """A short model name for variants sized from ``--config``: the folder of a config.json, the file name
    before ``.config.json`` / ``.json``, or the repo's name for a Hub id."""
    text = str(source)
    p = Path(text)
    if p.is_dir():
        return p.resolve().name or "model"
    if p.is_file():
        if p.name == "config.json":
            return p.resolve().parent.name or "model"
        return p.name.removesuffix(".json").removesuffix(".config") or "model"
    repo = hub_source(text)
    return repo.name if repo else "model"


def _read_config(p: Path) -> dict:
    data = parse_json(p.read_bytes(), str(p), UsageError, "give a Hugging Face config.json")
    if not isinstance(data, dict):
        raise UsageError(f"{p}: not a JSON object", "give a Hugging Face config.json")
    return data
