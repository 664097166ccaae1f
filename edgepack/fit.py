"""Fit: will this variant run on that device, how fast, and which variant should ship there.

Three parts, each a plain function over dataclasses:

* ``describe_gguf`` / ``describe_config``: a ``ModelDesc`` (architecture numbers + every weight tensor with
  its ggml type and bytes), read from a GGUF file, or built from a Hugging Face ``config.json`` and a quant
  type using llama.cpp's per-tensor quant mix (src/llama-quant.cpp) and gguf's block sizes.
* ``memory_needed``: weights + KV cache + compute buffers + runtime overhead, the way llama.cpp allocates
  them (checked against llama.cpp's own log lines in tests/test_fit.py).
* ``project``: generation tok/s = bandwidth roofline x the profile's efficiency (plus a per-token overhead
  measured on this host by ``edgepack bench``); prompt tok/s = the profile's GFLOP/s for the backend and the
  weights' quant family / FLOPs per token.

``fit`` combines them for every (variant, profile) and picks per profile. docs/fit.md explains the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import numpy as np

from . import gguf_keys as keys
from .convert.spec import LayerSize, SizeFacts, family_of, gguf_tensors, supported_architectures
from .errors import BadGGUF, EdgepackError, UsageError
from .fileio import parse_json
from .ggufheader import GGUFHeader, SkippedArray
from .loadcheck import check_loadable
from .profiles import Profile
from .quants import QUANT_BASE, ftype_name, quant_family, quant_types, tensor_bytes
from .source import hub_source

QT = gguf.GGMLQuantizationType
MB = 1e6
KV_PAD = 256  # llama.cpp pads the KV cache size to a multiple of 256 cells
DEFAULT_BATCHES = (512, 256, 128, 64, 32)

# llama.cpp's CPU extra buffer (CPU_REPACK): the weight types it re-lays out into interleaved blocks for an ISA,
# and the row multiple each layout needs, in llama.cpp's order (ggml/src/ggml-cpu/repack.cpp,
# ggml_repack_get_optimal_repack_type; the repacked tensor keeps ggml_nbytes). ARM entries imply NEON.
CPU_REPACK = {
    "Q4_0": ((("avx2",), 8), (("i8mm",), 4), (("dotprod",), 4)),
    "Q4_K": ((("avx2",), 8), (("i8mm",), 8), (("dotprod",), 8)),
    "Q5_K": ((("i8mm",), 8), (("dotprod",), 8)),
    "Q6_K": ((("i8mm",), 8), (("dotprod",), 8)),
    "Q2_K": ((("avx512",), 8),),
    "IQ4_NL": ((("avx2",), 8), (("dotprod",), 4)),
    "MXFP4": ((("avx2",), 8), (("dotprod",), 4)),
    "Q8_0": ((("i8mm",), 4), (("dotprod",), 4)),
}


def cpu_repacks(type_name: str, n_rows: int, isa: tuple[str, ...] | list[str]) -> bool:
    """Whether llama.cpp's CPU backend moves a 2-D weight of this type with ``n_rows`` rows (ne[1]) into its
    repacked buffer on a CPU with these ISA features (a profile's ``isa``)."""
    return any(all(f in isa for f in needs) and n_rows % rows == 0 for needs, rows in CPU_REPACK.get(type_name, ()))


# ---------------------------------------------------------------------------------------------------
# model description


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
    from . import hub

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


# ---------------------------------------------------------------------------------------------------
# memory


@dataclass
class MemoryParts:
    weights_bytes: int  # the GGUF's tensors, as loaded (repacked or not: same size)
    tied_output_copy_bytes: int  # a tied embedding's second copy for the output matmul (see tied_output_copy_bytes)
    kv_cache_bytes: int
    compute_bytes: int
    output_bytes: int
    overhead_bytes: int
    state_bytes: int = 0  # recurrent/convolution state of hybrid layers (fixed per sequence)

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.tied_output_copy_bytes + self.kv_cache_bytes + self.compute_bytes
                + self.output_bytes + self.overhead_bytes + self.state_bytes)

    @property
    def loaded_weights_bytes(self) -> int:
        """What llama.cpp reports as its model buffers (CPU + CPU_REPACK + GPU), without mmap."""
        return self.weights_bytes + self.tied_output_copy_bytes

    def as_mb(self) -> dict[str, float]:
        """The parts in megabytes (1e6 bytes), keys named by that unit: weights_mb, kv_cache_mb, ..."""
        return {k.removesuffix("_bytes") + "_mb": round(v / MB, 2) for k, v in asdict(self).items()}


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def kv_cells(model: ModelDesc, n_ctx: int, n_ubatch: int) -> list[int]:
    """Cells per layer the KV cache holds: n_ctx (padded to 256); sliding-window layers only their window
    (+ one micro-batch, as llama.cpp's iSWA cache sizes it); 0 for layers without a cache of their own
    (recurrent/convolution layers, layers reading another layer's KV)."""
    full = _pad(n_ctx, KV_PAD)
    return [0 if not layer.has_kv_cache else
            min(full, _pad(layer.sliding_window + n_ubatch, KV_PAD)) if layer.sliding_window else full
            for layer in model.layer_sizes()]


def kv_cache_bytes(model: ModelDesc, n_ctx: int, n_ubatch: int = 512, kv_type_bytes: float = 2.0,
                   flash_attn: bool = False) -> int:
    """Per layer: cells x (kv_heads x head_dim_k + the V row) x bytes (F16 = 2 by default). The V row is the
    layer's kv_heads x head_dim_v, but without flash attention llama.cpp stores V transposed and gives every
    layer the widest layer's row (llama-kv-cache.cpp, TAG_V_CACHE_VARIABLE: Gemma 4's local and global layers)."""
    layers = model.layer_sizes()
    widest_v = max((layer.n_head_kv * layer.head_dim_v for layer in layers), default=0)
    return int(sum(cells * (layer.n_head_kv * layer.head_dim_k
                            + (layer.n_head_kv * layer.head_dim_v if flash_attn else widest_v)) * kv_type_bytes
                   for cells, layer in zip(kv_cells(model, n_ctx, n_ubatch), layers) if cells))


def recurrent_state_bytes(model: ModelDesc, n_seq: int = 1) -> int:
    """The recurrent/convolution state of hybrid layers: fixed per sequence, whatever the context (F32, as
    llama.cpp keeps it by default; its log calls it the RS buffer)."""
    return 4 * n_seq * sum(layer.state_floats for layer in model.layer_sizes())


def compute_buffer_bytes(model: ModelDesc, n_ctx: int, n_ubatch: int = 512, flash_attn: bool = False) -> int:
    """llama.cpp's compute buffer: the graph allocator's peak over the worst-case micro-batch. Two phases
    compete: the output (logits for every token of the micro-batch: n_vocab x n_ubatch floats) and attention
    (without flash attention the KQ scores n_head x n_kv x n_ubatch plus the mask; with it only an F16 mask).
    The constants (3 and 7 hidden-state-sized temporaries) were read off llama.cpp's graph on this host."""
    f32 = 4
    n_kv = max(kv_cells(model, n_ctx, n_ubatch), default=0)
    hidden = model.n_embd * n_ubatch * f32
    logits = model.n_vocab * n_ubatch * f32 + 3 * hidden
    ffn = 3 * model.n_ff * n_ubatch * f32 + 2 * hidden
    if flash_attn:
        attn = n_kv * n_ubatch * 2 + 4 * hidden
    else:
        attn = (model.n_head + 1) * n_kv * n_ubatch * f32 + 7 * hidden
    return int(max(logits, attn, ffn))


# Weight types llama.cpp's Hexagon NPU backend keeps on the NPU (ggml-hexagon.cpp, ggml_hexagon_is_repack_type
# and the plain F16/F32 ones); other types of an offloaded layer stay with the CPU backend.
HEXAGON_TYPES = ("Q4_0", "Q4_1", "Q8_0", "IQ4_NL", "MXFP4", "Q6_K", "Q4_K", "Q5_K", "F16", "F32")


def tied_output_copy_bytes(model: ModelDesc, backend: str = "cpu", isa: tuple[str, ...] | list[str] = ()) -> int:
    """Bytes of the second copy llama.cpp makes of a tied token embedding.

    With tied embeddings the output matmul uses token_embd.weight, which the loader creates a second time for the
    output layer (TENSOR_DUPLICATED in src/llama-model.cpp; llama-model-loader.cpp reuses the tensor only when
    both land in the same buffer type). The embedding lookup (get_rows) always stays in the plain CPU buffer, so
    a copy is made when the output goes elsewhere: into CPU_REPACK when the CPU repacks its type on this ISA,
    or onto the GPU/NPU backend that holds the offloaded output layer (not Metal, whose buffers map the file)."""
    embd = next((t for t in model.tensors if t.name == "token_embd.weight"), None)
    if not model.tied_embeddings or embd is None or len(embd.shape) < 2:
        return 0
    n_rows = embd.shape[1]
    if backend == "cpu":
        copy = cpu_repacks(embd.type, n_rows, isa)
    elif backend == "hexagon":
        copy = embd.type in HEXAGON_TYPES or cpu_repacks(embd.type, n_rows, isa)
    else:
        # Metal wraps the mmapped file in its buffers (buffer_from_host_ptr): the output's "copy" is the same pages
        copy = backend != "metal"
    return embd.size_bytes if copy else 0


def memory_needed(model: ModelDesc, n_ctx: int, n_batch: int = 512, flash_attn: bool = False,
                  overhead_bytes: int = 0, kv_type_bytes: float = 2.0, backend: str = "cpu",
                  isa: tuple[str, ...] | list[str] = ()) -> MemoryParts:
    """What llama.cpp allocates for ``model`` on ``backend`` of a device with ``isa`` (the tied-embedding copy
    depends on both)."""
    n_ubatch = min(n_batch, 512)
    return MemoryParts(weights_bytes=model.weight_bytes,
                       tied_output_copy_bytes=tied_output_copy_bytes(model, backend, isa),
                       kv_cache_bytes=kv_cache_bytes(model, n_ctx, n_ubatch, kv_type_bytes, flash_attn),
                       compute_bytes=compute_buffer_bytes(model, n_ctx, n_ubatch, flash_attn),
                       output_bytes=model.n_vocab * 4, overhead_bytes=overhead_bytes,
                       state_bytes=recurrent_state_bytes(model))


# ---------------------------------------------------------------------------------------------------
# projection


@dataclass
class HostCalibration:
    """What ``edgepack bench`` measured on this host for one variant."""
    tg_tokens_per_s: float
    pp_tokens_per_s: float
    bandwidth_gb_s: float  # measured copy bandwidth of this host

    def per_token_overhead_s(self, model: ModelDesc) -> float:
        """Time per generated token beyond streaming the weights at this host's measured bandwidth: graph
        building, thread sync, sampling. It does not shrink with bandwidth, so it carries over to devices."""
        roofline = model.bytes_read_per_token / (self.bandwidth_gb_s * 1e9)
        return max(0.0, 1.0 / self.tg_tokens_per_s - roofline)


@dataclass
class Projection:
    backend: str
    tg_tokens_per_s: float
    pp_tokens_per_s: float
    bytes_per_token: int
    flops_per_token: float
    efficiency: float
    gflops: float
    overhead_ms_per_token: float


def flops_per_token(model: ModelDesc, n_ctx: int) -> float:
    """2 FLOPs per matmul parameter + attention over the context (QK^T and AV; a sliding layer sees at most its
    window)."""
    attn = sum(2 * 2 * layer.n_head * layer.head_dim_k * (min(n_ctx, layer.sliding_window) or n_ctx)
               for layer in model.layer_sizes())
    return 2.0 * model.matmul_params + attn


# The time every generated token costs whatever the model's size: building and scheduling the graph, syncing the
# threads after each op or launching each kernel, sampling. It is what keeps a 3 MB model from projecting
# 90,000 tok/s. seconds = base + per_layer x layers, per backend kind; ``edgepack fit --bench`` replaces it by the
# overhead measured on the host (HostCalibration), which contains it.
TOKEN_FLOOR = {
    "cpu": {"base_s": 0.25e-3, "per_layer_s": 0.06e-3, "kind": "estimate",
            "source": "estimate: about 25 graph ops per layer, each ending in a thread barrier of a few microseconds "
                      "on phone and laptop cores, plus graph build and sampling; benchmarks/token_floor.py measures it "
                      "with tiny models (it could not be measured on the shared 2-core CI host: another job's load "
                      "made a 2-layer model run at 5 tok/s)"},
    "gpu": {"base_s": 0.5e-3, "per_layer_s": 0.1e-3, "kind": "estimate",
            "source": "estimate: about ten kernel launches per layer at ~10 us each plus one command-buffer submit "
                      "and the logits copy; no published tiny-model GPU measurement was found"},
}


def token_floor_ms(backend: str, profile: Profile | None = None) -> tuple[float, float]:
    """(base ms, ms per layer) of the per-token floor on ``backend``: the profile's own ``[token_floor]`` where it
    has one (measured on the device), else TOKEN_FLOOR's estimate for the backend kind."""
    if profile is not None and backend in profile.token_floor_ms:
        return profile.token_floor_ms[backend]
    f = TOKEN_FLOOR["cpu" if backend == "cpu" else "gpu"]
    return f["base_s"] * 1e3, f["per_layer_s"] * 1e3


def token_floor_s(model: ModelDesc, backend: str, profile: Profile | None = None) -> float:
    """Seconds per generated token that do not shrink with the model (token_floor_ms)."""
    base_ms, per_layer_ms = token_floor_ms(backend, profile)
    return (base_ms + per_layer_ms * model.n_layer) / 1e3


def project(model: ModelDesc, profile: Profile, backend: str | None = None, n_ctx: int = 512,
            host: HostCalibration | None = None, threads: int | None = None, floor: bool = True) -> Projection:
    """Projected generation and prompt speed of ``model`` on ``profile``'s ``backend``.

    Generation reads every weight (and the KV cache so far) once per token: t = bytes / (bandwidth x
    efficiency) + a per-token floor (the host-measured overhead with ``host``, else TOKEN_FLOOR; ``floor=False``
    leaves it out, for calibration). On the CPU backend the cores must also dequantize and multiply every weight:
    when the profile gives that rate (weights per second per core-GHz, for the model's main quant type or its
    family), t is the longer of the memory time and weights / (rate x core-GHz of the threads). Prompt processing
    is compute-bound: tokens/s = GFLOP/s (for the backend and the weights' quant type, else family) / FLOPs per
    token. The average context during a pp512/tg128 run is used for the KV and attention terms. ``threads`` (CPU
    backend) replaces the profile's thread count: the core-GHz of that many threads, fastest cores first, scale
    both."""
    backend = backend or profile.default_backend
    if backend not in profile.backends:
        raise UsageError(f"profile {profile.name} has no {backend} backend", f"choose one of {', '.join(profile.backends)}")
    family, key = model.quant_family, model.quant_key
    eff = profile.efficiency(backend, family, key).value
    kv_avg = kv_cache_bytes(model, min(n_ctx, 512), 1) // 2
    bytes_tok = model.bytes_read_per_token + kv_avg
    if host:
        overhead = host.per_token_overhead_s(model)
    else:
        overhead = token_floor_s(model, backend, profile) if floor else 0.0
    seconds = bytes_tok / (profile.bandwidth_gb_s.value * 1e9 * eff)
    rate = profile.cpu_weights_rate(family, key) if backend == "cpu" else None
    core_ghz = profile.core_ghz(threads)
    if rate is not None:  # the cores, not the memory, may be what limits a CPU
        seconds = max(seconds, model.matmul_params / (rate.value * 1e9 * core_ghz))
    tg = 1.0 / (seconds + overhead)
    gflops = profile.gflops(backend, family, key).value
    if backend == "cpu" and threads:  # the profile's prompt GFLOP/s are for its own thread count
        gflops *= core_ghz / profile.core_ghz()
    fpt = flops_per_token(model, 256)
    pp = gflops * 1e9 / fpt
    return Projection(backend, tg, pp, bytes_tok, fpt, eff, gflops, overhead * 1e3)


# ---------------------------------------------------------------------------------------------------
# the fit


@dataclass
class Quality:
    kld: float | None = None
    ppl: float | None = None
    ppl_delta: float | None = None
    top1: float | None = None


@dataclass
class Variant:
    model: ModelDesc
    quality: Quality = field(default_factory=Quality)
    host: HostCalibration | None = None


@dataclass
class FitRow:
    variant: str
    profile: str
    backend: str
    memory: dict
    memory_total_mb: float
    usable_mb: float
    fits: bool
    tg_tokens_per_s: float
    pp_tokens_per_s: float
    kld: float | None
    bits_per_weight: float
    size_mb: float
    verdict: str  # "pick", or why it lost
    settings: dict
    best_backend: str = ""  # the profile's backend with the fastest generation among those where it fits
    by_backend: dict = field(default_factory=dict)  # backend -> {tg_tokens_per_s, pp_tokens_per_s, memory_total_mb, fits}


@dataclass
class FitResult:
    n_ctx: int
    min_tps: float | None
    max_kld: float | None
    rows: list[FitRow]
    picks: dict[str, str | None]  # profile -> variant (None: nothing fits)
    summary: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)


def _quality_key(v: Variant) -> tuple:
    """Higher is better: measured KLD when present (lower KLD wins), else bits per weight as the proxy."""
    if v.quality.kld is not None:
        return (1, -v.quality.kld)
    return (0, v.model.bits_per_weight)


def _on_backend(v: Variant, profile: Profile, be: str, n_ctx: int, flash_attn: bool, n_threads: int):
    """(memory parts, n_batch, projection) of variant ``v`` on one backend of ``profile``: the largest batch that
    fits (or 512 when none does)."""
    overhead = int(profile.runtime_overhead_mb.value * MB)

    def mem(b: int) -> MemoryParts:
        return memory_needed(v.model, n_ctx, b, flash_attn, overhead, backend=be, isa=profile.isa)

    batch = next((b for b in DEFAULT_BATCHES if mem(b).total_bytes <= profile.usable_bytes), DEFAULT_BATCHES[0])
    return mem(batch), batch, project(v.model, profile, be, n_ctx, v.host, n_threads)


def fit(variants: list[Variant], profiles: list[Profile], n_ctx: int = 2048, min_tps: float | None = None,
        max_kld: float | None = None, backend: str | None = None, flash_attn: bool = False,
        threads: int | None = None) -> FitResult:
    """For every (variant, profile): memory, projected speed, fits or not; then one pick per profile.

    Every backend of a profile is projected (``by_backend``) and the fastest one where the variant fits is
    recommended (``best_backend``). The row itself is for ``backend`` where the profile has it, ``"auto"`` for
    the recommended one, else the profile's default backend. ``threads``: CPU threads the app will use (default:
    each profile's own ``cpu.threads``; capped at a profile's core count)."""
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}", "e.g. --threads 4")
    if not variants:
        raise UsageError("no variants to fit", "give GGUF files, or --config with --quant")
    rows: list[FitRow] = []
    picks: dict[str, str | None] = {}
    summary: dict[str, str] = {}
    for profile in profiles:
        n_threads = min(threads, profile.n_cores) if threads else int(profile.threads.value)
        usable = profile.usable_bytes
        cands = []
        for v in variants:
            per_backend = {b: _on_backend(v, profile, b, n_ctx, flash_attn, n_threads) for b in profile.backends}
            by_backend = {b: {"tg_tokens_per_s": round(p.tg_tokens_per_s, 2), "pp_tokens_per_s": round(p.pp_tokens_per_s, 2),
                              "memory_total_mb": round(m.total_bytes / MB, 2), "fits": m.total_bytes <= usable}
                          for b, (m, _, p) in per_backend.items()}
            best = max(by_backend, key=lambda b: (by_backend[b]["fits"], by_backend[b]["tg_tokens_per_s"],
                                                  by_backend[b]["pp_tokens_per_s"]))
            if backend == "auto":
                be = best
            else:
                be = backend if backend and backend in profile.backends else profile.default_backend
            mem, batch, proj = per_backend[be]
            fits = mem.total_bytes <= usable
            reasons = []
            if not fits:
                reasons.append(f"too big by {(mem.total_bytes - usable) / MB:.0f} MB "
                               f"({mem.total_bytes / MB:.0f} MB needed, {usable / MB:.0f} MB usable)")
            if min_tps is not None and proj.tg_tokens_per_s < min_tps:
                reasons.append(f"too slow ({proj.tg_tokens_per_s:.1f} tok/s < {min_tps:g})")
            if max_kld is not None and v.quality.kld is not None and v.quality.kld > max_kld:
                reasons.append(f"too lossy (KLD {v.quality.kld:.4f} > {max_kld:g})")
            settings = {"threads": n_threads, "n_ctx": n_ctx, "n_batch": batch,
                        "backend": be, "flash_attn": flash_attn}
            row = FitRow(variant=v.model.name, profile=profile.name, backend=be,
                         memory=mem.as_mb(),
                         memory_total_mb=round(mem.total_bytes / MB, 2), usable_mb=round(usable / MB, 1), fits=fits,
                         tg_tokens_per_s=round(proj.tg_tokens_per_s, 2), pp_tokens_per_s=round(proj.pp_tokens_per_s, 2),
                         kld=v.quality.kld, bits_per_weight=round(v.model.bits_per_weight, 3),
                         size_mb=round(v.model.weight_bytes / MB, 2), verdict="; ".join(reasons), settings=settings,
                         best_backend=best, by_backend=by_backend)
            rows.append(row)
            if not reasons:
                cands.append((v, row))
        if cands:
            best_q = max(_quality_key(v) for v, _ in cands)
            tied = [(v, r) for v, r in cands if _quality_key(v) == best_q]
            v, r = max(tied, key=lambda vr: vr[1].tg_tokens_per_s)
            r.verdict = "pick"
            picks[profile.name] = r.variant
            for v2, r2 in cands:
                if r2 is not r:
                    r2.verdict = ("lower quality than " + r.variant if _quality_key(v2) < best_q
                                  else f"same quality, slower than {r.variant}")
            hint = "" if r.best_backend == r.backend else f" (fastest here: --backend {r.best_backend})"
            summary[profile.name] = (f"{r.variant}: {r.tg_tokens_per_s:.1f} tok/s generation, "
                                     f"{r.pp_tokens_per_s:.0f} tok/s prompt, {r.memory_total_mb:.0f} of "
                                     f"{r.usable_mb:.0f} MB; threads={r.settings['threads']} "
                                     f"n_ctx={n_ctx} n_batch={r.settings['n_batch']} backend={r.backend}{hint}")
        else:
            picks[profile.name] = None
            summary[profile.name] = "nothing fits: " + "; ".join(
                f"{r.variant}: {r.verdict}" for r in rows if r.profile == profile.name)
    return FitResult(n_ctx=n_ctx, min_tps=min_tps, max_kld=max_kld, rows=rows, picks=picks, summary=summary)


def variants_from_bench(results: dict) -> dict[str, tuple[Quality, HostCalibration]]:
    """Quality and host calibration per GGUF path from an ``edgepack bench --json`` result."""
    out = {}
    host_bw = results.get("host", {}).get("bandwidth_gb_s")
    for m in results.get("models", []):
        q = m.get("quality") or {}
        cal = None
        if host_bw and m.get("tg_tokens_per_s"):
            cal = HostCalibration(m["tg_tokens_per_s"], m.get("pp_tokens_per_s") or 0.0, host_bw)
        out[str(Path(m["path"]).resolve())] = (Quality(q.get("kld"), q.get("ppl"), q.get("ppl_delta"), q.get("top1")), cal)
    return out


def nice_mb(n: float) -> str:
    return f"{n:.0f} MB" if n < 10_000 else f"{n / 1000:.1f} GB"


__all__ = ["ModelDesc", "MemoryParts", "Projection", "HostCalibration", "Quality", "Variant", "FitRow", "FitResult",
           "describe_gguf", "describe_config", "load_config", "config_name", "memory_needed", "kv_cache_bytes",
           "compute_buffer_bytes", "recurrent_state_bytes", "project", "fit", "variants_from_bench", "quant_types",
           "cpu_repacks", "tied_output_copy_bytes", "token_floor_s", "token_floor_ms"]
