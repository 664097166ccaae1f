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

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import numpy as np

from .errors import BadGGUF, UnsupportedArchitecture, UsageError
from .profiles import Profile

QT = gguf.GGMLQuantizationType
MB = 1e6
KV_PAD = 256  # llama.cpp pads the KV cache size to a multiple of 256 cells
DEFAULT_BATCHES = (512, 256, 128, 64, 32)

# ---------------------------------------------------------------------------------------------------
# quant types


QUANT_BASE = {  # llama_ftype -> default tensor type (llama-quant.cpp, llama_ftype_get_default_type)
    "F32": QT.F32, "F16": QT.F16, "BF16": QT.BF16, "Q8_0": QT.Q8_0, "Q6_K": QT.Q6_K, "Q5_K_M": QT.Q5_K,
    "Q5_K_S": QT.Q5_K, "Q5_0": QT.Q5_0, "Q5_1": QT.Q5_1, "Q4_K_M": QT.Q4_K, "Q4_K_S": QT.Q4_K, "Q4_0": QT.Q4_0,
    "Q4_1": QT.Q4_1, "Q3_K_M": QT.Q3_K, "Q3_K_S": QT.Q3_K, "Q3_K_L": QT.Q3_K, "Q2_K": QT.Q2_K,
    "IQ4_NL": QT.IQ4_NL, "IQ4_XS": QT.IQ4_XS,
}
# when a row length is not a multiple of a 256-block type (llama-quant.cpp, tensor type fallback)
FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0, QT.Q3_K: QT.Q4_0, QT.Q2_K: QT.Q4_0,
            QT.IQ4_XS: QT.IQ4_NL}


def quant_family(t: QT) -> str:
    """Which prompt-processing kernel family a ggml type uses (see profiles.QUANT_FAMILIES)."""
    if t in (QT.Q4_0, QT.Q4_1, QT.IQ4_NL):
        return "q4_0"
    if t in (QT.Q8_0, QT.Q5_0, QT.Q5_1):
        return "q8_0"
    if t in (QT.F16, QT.BF16, QT.F32):
        return "f16"
    return "k_quant"


def tensor_bytes(t: QT, shape: tuple[int, ...]) -> int:
    block, size = gguf.GGML_QUANT_SIZES[t]
    n = int(np.prod(shape))
    return n // block * size


def _more_bits(i: int, n: int) -> bool:  # llama-quant.cpp use_more_bits
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def quant_mix(ftype: str, role: str, i_layer: int, n_layer: int, n_gqa: int, tied: bool) -> QT:
    """The type llama.cpp's quantizer gives one tensor (dense, non-Falcon models) for ``ftype``."""
    base = QUANT_BASE[ftype]
    if base in (QT.F32, QT.F16, QT.BF16):
        return base
    if role == "output" or (role == "token_embd" and tied):
        return QT.Q8_0 if base == QT.Q8_0 else QT.Q6_K
    if role == "token_embd":
        return base
    if role == "attn_v":
        if ftype == "Q2_K":
            return QT.Q4_K if n_gqa >= 4 else QT.Q3_K
        if ftype == "Q3_K_M":
            return QT.Q5_K if i_layer < 2 else QT.Q4_K
        if ftype == "Q3_K_L":
            return QT.Q5_K
        if ftype in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
            return QT.Q5_K
        if ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i_layer, n_layer):
            return QT.Q6_K
        if ftype == "Q4_K_S" and i_layer < 4:
            return QT.Q5_K
        return base
    if role == "ffn_down":
        if ftype == "Q2_K":
            return QT.Q3_K
        if ftype == "Q3_K_M":
            return QT.Q5_K if i_layer < n_layer // 16 else QT.Q4_K
        if ftype == "Q3_K_L":
            return QT.Q5_K
        if ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i_layer, n_layer):
            return QT.Q6_K
        if ftype in ("IQ4_NL", "IQ4_XS") and i_layer < n_layer // 8:
            return QT.Q5_K
        if ftype == "Q4_K_S" and i_layer < n_layer // 8:
            return QT.Q5_K
        return base
    if role == "attn_output":
        return {"Q2_K": QT.Q3_K, "Q3_K_M": QT.Q4_K, "Q3_K_L": QT.Q5_K}.get(ftype, base)
    if role == "attn_qkv":
        return {"Q3_K_M": QT.Q4_K, "Q3_K_L": QT.Q4_K, "Q4_K_M": QT.Q5_K, "Q5_K_M": QT.Q6_K}.get(ftype, base)
    return base


def _fit_type(t: QT, row: int) -> QT:
    block = gguf.GGML_QUANT_SIZES[t][0]
    while row % block:
        t = FALLBACK.get(t, QT.F16)
        block = gguf.GGML_QUANT_SIZES[t][0]
    return t


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

    @property
    def weight_bytes(self) -> int:
        return sum(t.size_bytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(t.shape)) for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / max(self.n_params, 1)

    def _embd(self) -> TensorDesc | None:
        return next((t for t in self.tensors if t.name == "token_embd.weight"), None)

    @property
    def bytes_read_per_token(self) -> int:
        """Weights generation streams per token: all but the token embedding table, of which one row is read
        (with tied embeddings the table is also the output matrix, so it is read in full)."""
        embd = self._embd()
        if embd is None or self.tied_embeddings:
            return self.weight_bytes
        return self.weight_bytes - embd.size_bytes + embd.size_bytes // max(self.n_vocab, 1)

    @property
    def matmul_params(self) -> int:
        """Parameters in matrix multiplications per token (2 FLOPs each): everything but the embedding lookup."""
        embd = self._embd()
        n = sum(int(np.prod(t.shape)) for t in self.tensors if len(t.shape) >= 2)
        if embd is not None and not self.tied_embeddings:
            n -= int(np.prod(embd.shape))
        if self.tied_embeddings and embd is not None:
            n += 0  # output uses the same table: already counted once
        return n

    @property
    def quant_family(self) -> str:
        by_family: dict[str, int] = {}
        for t in self.tensors:
            if len(t.shape) >= 2 and t.name != "token_embd.weight":
                f = quant_family(QT[t.type])
                by_family[f] = by_family.get(f, 0) + t.size_bytes
        return max(by_family, key=by_family.get) if by_family else "f16"


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.get_field(key)
    if f is None:
        return default
    value = f.contents()
    return value


FTYPE_NAMES = {v.value: k.replace("MOSTLY_", "") for k, v in gguf.LlamaFileType.__members__.items()}
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "cohere2": 4}  # llama.cpp: hparams.set_swa_pattern(n) per architecture


def describe_gguf(path: str | Path) -> ModelDesc:
    """Read a GGUF's hyperparameters and tensor sizes (no weights are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise BadGGUF(f"{path}: no such file", "give the path of a .gguf file")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # gguf-py raises ValueError/struct errors on garbage
        raise BadGGUF(f"{path}: not a readable GGUF file ({exc})", "is the file complete?") from exc
    arch = _field(reader, "general.architecture")
    if not arch:
        raise BadGGUF(f"{path}: general.architecture is missing", "was it written by llama.cpp or edgepack?")

    def key(k, default=None):
        return _field(reader, f"{arch}.{k}", default)

    n_embd, n_head = int(key("embedding_length")), int(key("attention.head_count"))
    n_head_kv = int(key("attention.head_count_kv", n_head))
    n_layer = int(key("block_count"))
    head_k = int(key("attention.key_length", n_embd // n_head))
    head_v = int(key("attention.value_length", head_k))
    n_swa = int(key("attention.sliding_window", 0) or 0)
    tensors = [TensorDesc(t.name, tuple(int(x) for x in t.shape), QT(t.tensor_type).name, int(t.n_bytes))
               for t in reader.tensors]
    names = {t.name for t in tensors}
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    n_vocab = int(key("vocab_size", 0) or (embd.shape[1] if embd else 0))
    ftype = _field(reader, "general.file_type")
    n_ff = key("feed_forward_length", 0)
    n_ff = int(n_ff[0] if isinstance(n_ff, list) else n_ff)
    swa_layers = _swa_layers(arch, n_layer, n_swa, key("attention.sliding_window_pattern"))
    return ModelDesc(name=path.stem, quant=FTYPE_NAMES.get(ftype, "unknown") if ftype is not None else "unknown",
                     architecture=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                     head_dim_k=head_k, head_dim_v=head_v, n_ff=n_ff, n_vocab=n_vocab,
                     n_ctx_train=int(key("context_length", 0)), n_swa=n_swa, swa_layers=swa_layers,
                     tied_embeddings="output.weight" not in names, tensors=tensors,
                     file_size_bytes=path.stat().st_size, source=str(path))


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


CONFIG_ARCH = {  # HF architectures -> (GGUF architecture, fused qkv, fused gate_up)
    "LlamaForCausalLM": ("llama", False, False), "MistralForCausalLM": ("llama", False, False),
    "Qwen2ForCausalLM": ("qwen2", False, False), "Qwen3ForCausalLM": ("qwen3", False, False),
    "GemmaForCausalLM": ("gemma", False, False), "Gemma2ForCausalLM": ("gemma2", False, False),
    "Gemma3ForCausalLM": ("gemma3", False, False), "Phi3ForCausalLM": ("phi3", True, True),
    "StableLmForCausalLM": ("stablelm", False, False), "OlmoForCausalLM": ("olmo", False, False),
    "Olmo2ForCausalLM": ("olmo2", False, False), "InternLM2ForCausalLM": ("internlm2", False, False),
    "MiniCPMForCausalLM": ("minicpm", False, False),
}


def describe_config(config: dict, quant: str, name: str = "model") -> ModelDesc:
    """Sizes without files: the tensors a converter would write for ``config`` and the types llama.cpp's
    quantizer gives them for ``quant`` (e.g. Q4_K_M)."""
    quant = quant.upper()
    if quant not in QUANT_BASE:
        raise UsageError(f"unknown quant type {quant!r}", f"choose one of {', '.join(QUANT_BASE)}")
    cfg = dict(config.get("text_config") or {}, **{k: v for k, v in config.items() if k != "text_config"})
    archs = cfg.get("architectures") or [""]
    if archs[0] not in CONFIG_ARCH:
        raise UnsupportedArchitecture(f"no size model for {archs[0] or 'an unnamed architecture'}",
                                      f"supported: {', '.join(CONFIG_ARCH)}")
    arch, fused_qkv, fused_up = CONFIG_ARCH[archs[0]]
    try:
        n_embd, n_layer = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
        n_head = int(cfg["num_attention_heads"])
        n_ff, n_vocab = int(cfg["intermediate_size"]), int(cfg["vocab_size"])
    except KeyError as exc:
        raise UsageError(f"config.json lacks {exc.args[0]}", "give a decoder-only model's config.json") from exc
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    head = int(cfg.get("head_dim") or n_embd // n_head)
    tied = bool(cfg.get("tie_word_embeddings", arch in ("gemma", "gemma2", "gemma3")))
    n_gqa = n_head // n_kv
    tensors: list[TensorDesc] = []

    def add(tname: str, shape: tuple[int, ...], role: str, i: int = 0):
        if len(shape) == 1:
            t = QT.F32
        else:
            t = _fit_type(quant_mix(quant, role, i, n_layer, n_gqa, tied), shape[0])
        tensors.append(TensorDesc(tname, shape, t.name, tensor_bytes(t, shape)))

    add("token_embd.weight", (n_embd, n_vocab), "token_embd")
    add("output_norm.weight", (n_embd,), "norm")
    if not tied:
        add("output.weight", (n_embd, n_vocab), "output")
    q_out, kv_out = n_head * head, n_kv * head
    for i in range(n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (n_embd,), "norm")
        if fused_qkv:
            add(p + "attn_qkv.weight", (n_embd, q_out + 2 * kv_out), "attn_qkv", i)
        else:
            add(p + "attn_q.weight", (n_embd, q_out), "attn_q", i)
            add(p + "attn_k.weight", (n_embd, kv_out), "attn_k", i)
            add(p + "attn_v.weight", (n_embd, kv_out), "attn_v", i)
        add(p + "attn_output.weight", (q_out, n_embd), "attn_output", i)
        add(p + "ffn_norm.weight", (n_embd,), "norm")
        if fused_up:
            add(p + "ffn_up.weight", (n_embd, 2 * n_ff), "ffn_up", i)
        else:
            add(p + "ffn_gate.weight", (n_embd, n_ff), "ffn_gate", i)
            add(p + "ffn_up.weight", (n_embd, n_ff), "ffn_up", i)
        add(p + "ffn_down.weight", (n_ff, n_embd), "ffn_down", i)
        if cfg.get("attention_bias") or arch == "qwen2":
            for nm, n in (("attn_q.bias", q_out), ("attn_k.bias", kv_out), ("attn_v.bias", kv_out)):
                add(p + nm, (n,), "norm")
        if arch in ("qwen3", "gemma3"):
            add(p + "attn_q_norm.weight", (head,), "norm")
            add(p + "attn_k_norm.weight", (head,), "norm")
        if arch in ("gemma2", "gemma3"):
            add(p + "post_attention_norm.weight", (n_embd,), "norm")
            add(p + "post_ffw_norm.weight", (n_embd,), "norm")
    n_swa = int(cfg.get("sliding_window") or 0) if arch in SWA_PATTERN else 0
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and len(layer_types) == n_layer:
        swa_layers = [lt == "sliding_attention" for lt in layer_types]
    else:
        swa_layers = _swa_layers(arch, n_layer, n_swa, cfg.get("sliding_window_pattern"))
    weight = sum(t.size_bytes for t in tensors)
    return ModelDesc(name=f"{name}-{quant}", quant=quant, architecture=arch, n_layer=n_layer, n_embd=n_embd,
                     n_head=n_head, n_head_kv=n_kv, head_dim_k=head, head_dim_v=head, n_ff=n_ff, n_vocab=n_vocab,
                     n_ctx_train=int(cfg.get("max_position_embeddings") or 0), n_swa=n_swa if any(swa_layers) else 0,
                     swa_layers=swa_layers, tied_embeddings=tied, tensors=tensors, file_size_bytes=weight,
                     source=name)


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
    repo = hub.parse_source(text)
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
    return text.removeprefix("hf://").split("@")[0].rstrip("/").split("/")[-1] or "model"


def _read_config(p: Path) -> dict:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{p}: not valid JSON ({exc})", "give a Hugging Face config.json") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{p}: not a JSON object", "give a Hugging Face config.json")
    return data


# ---------------------------------------------------------------------------------------------------
# memory


@dataclass
class MemoryParts:
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    output_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.output_bytes + self.overhead_bytes

    def as_mb(self) -> dict[str, float]:
        """The parts in megabytes (1e6 bytes), keys named by that unit: weights_mb, kv_cache_mb, ..."""
        return {k.removesuffix("_bytes") + "_mb": round(v / MB, 2) for k, v in asdict(self).items()}


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def kv_cells(model: ModelDesc, n_ctx: int, n_ubatch: int) -> list[int]:
    """Cells per layer the KV cache holds: n_ctx (padded to 256); sliding-window layers only their window
    (+ one micro-batch, as llama.cpp's iSWA cache sizes it)."""
    full = _pad(n_ctx, KV_PAD)
    swa = min(full, _pad(model.n_swa + n_ubatch, KV_PAD)) if model.n_swa else full
    return [swa if is_swa else full for is_swa in (model.swa_layers or [False] * model.n_layer)]


def kv_cache_bytes(model: ModelDesc, n_ctx: int, n_ubatch: int = 512, kv_type_bytes: float = 2.0) -> int:
    """layers x cells x kv_heads x head_dim x (K + V) x bytes (F16 = 2 by default)."""
    per_cell = model.n_head_kv * (model.head_dim_k + model.head_dim_v) * kv_type_bytes
    return int(sum(cells * per_cell for cells in kv_cells(model, n_ctx, n_ubatch)))


def compute_buffer_bytes(model: ModelDesc, n_ctx: int, n_ubatch: int = 512, flash_attn: bool = False) -> int:
    """llama.cpp's compute buffer: the graph allocator's peak over the worst-case micro-batch. Two phases
    compete: the output (logits for every token of the micro-batch: n_vocab x n_ubatch floats) and attention
    (without flash attention the KQ scores n_head x n_kv x n_ubatch plus the mask; with it only an F16 mask).
    The constants (3 and 7 hidden-state-sized temporaries) were read off llama.cpp's graph on this host."""
    f32 = 4
    n_kv = max(kv_cells(model, n_ctx, n_ubatch))
    hidden = model.n_embd * n_ubatch * f32
    logits = model.n_vocab * n_ubatch * f32 + 3 * hidden
    ffn = 3 * model.n_ff * n_ubatch * f32 + 2 * hidden
    if flash_attn:
        attn = n_kv * n_ubatch * 2 + 4 * hidden
    else:
        attn = (model.n_head + 1) * n_kv * n_ubatch * f32 + 7 * hidden
    return int(max(logits, attn, ffn))


def memory_needed(model: ModelDesc, n_ctx: int, n_batch: int = 512, flash_attn: bool = False,
                  overhead_bytes: int = 0, kv_type_bytes: float = 2.0) -> MemoryParts:
    n_ubatch = min(n_batch, 512)
    return MemoryParts(weights_bytes=model.weight_bytes,
                       kv_cache_bytes=kv_cache_bytes(model, n_ctx, n_ubatch, kv_type_bytes),
                       compute_bytes=compute_buffer_bytes(model, n_ctx, n_ubatch, flash_attn),
                       output_bytes=model.n_vocab * 4, overhead_bytes=overhead_bytes)


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
    """2 FLOPs per matmul parameter + attention over the context (QK^T and AV)."""
    attn = 2 * 2 * model.n_layer * model.n_head * model.head_dim_k * n_ctx
    return 2.0 * model.matmul_params + attn


def project(model: ModelDesc, profile: Profile, backend: str | None = None, n_ctx: int = 512,
            host: HostCalibration | None = None, threads: int | None = None) -> Projection:
    """Projected generation and prompt speed of ``model`` on ``profile``'s ``backend``.

    Generation reads every weight (and the KV cache so far) once per token: t = bytes / (bandwidth x
    efficiency) + the host-measured per-token overhead. On the CPU backend the cores must also dequantize and
    multiply every weight: when the profile gives that rate (weights per second per core-GHz, per quant family),
    t is the longer of the memory time and weights / (rate x core-GHz of the threads). Prompt processing is
    compute-bound: tokens/s = GFLOP/s (for the backend and the weights' quant family) / FLOPs per token. The
    average context during a pp512/tg128 run is used for the KV and attention terms. ``threads`` (CPU backend)
    replaces the profile's thread count: the core-GHz of that many threads, fastest cores first, scale both."""
    backend = backend or profile.default_backend
    if backend not in profile.backends:
        raise UsageError(f"profile {profile.name} has no {backend} backend", f"choose one of {', '.join(profile.backends)}")
    eff = profile.efficiency(backend).value
    kv_avg = kv_cache_bytes(model, min(n_ctx, 512), 1) // 2
    bytes_tok = model.bytes_read_per_token + kv_avg
    overhead = host.per_token_overhead_s(model) if host else 0.0
    seconds = bytes_tok / (profile.bandwidth_gb_s.value * 1e9 * eff)
    rate = profile.cpu_weights_rate(model.quant_family) if backend == "cpu" else None
    core_ghz = profile.core_ghz(threads)
    if rate is not None:  # the cores, not the memory, may be what limits a CPU
        seconds = max(seconds, model.matmul_params / (rate.value * 1e9 * core_ghz))
    tg = 1.0 / (seconds + overhead)
    gflops = profile.gflops(backend, model.quant_family).value
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


def fit(variants: list[Variant], profiles: list[Profile], n_ctx: int = 2048, min_tps: float | None = None,
        max_kld: float | None = None, backend: str | None = None, flash_attn: bool = False,
        threads: int | None = None) -> FitResult:
    """For every (variant, profile): memory, projected speed, fits or not; then one pick per profile.
    ``threads``: CPU threads the app will use (default: each profile's own ``cpu.threads``; capped at a
    profile's core count)."""
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}", "e.g. --threads 4")
    if not variants:
        raise UsageError("no variants to fit", "give GGUF files, or --config with --quant")
    rows: list[FitRow] = []
    picks: dict[str, str | None] = {}
    summary: dict[str, str] = {}
    for profile in profiles:
        be = backend if backend and backend in profile.backends else profile.default_backend
        n_threads = min(threads, profile.n_cores) if threads else int(profile.threads.value)
        usable = profile.usable_bytes
        overhead = int(profile.runtime_overhead_mb.value * MB)
        cands = []
        for v in variants:
            batch = next((b for b in DEFAULT_BATCHES
                          if memory_needed(v.model, n_ctx, b, flash_attn, overhead).total_bytes <= usable),
                         DEFAULT_BATCHES[0])
            mem = memory_needed(v.model, n_ctx, batch, flash_attn, overhead)
            proj = project(v.model, profile, be, n_ctx, v.host, n_threads)
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
                         size_mb=round(v.model.weight_bytes / MB, 2), verdict="; ".join(reasons), settings=settings)
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
            summary[profile.name] = (f"{r.variant}: {r.tg_tokens_per_s:.1f} tok/s generation, "
                                     f"{r.pp_tokens_per_s:.0f} tok/s prompt, {r.memory_total_mb:.0f} of "
                                     f"{r.usable_mb:.0f} MB; threads={r.settings['threads']} "
                                     f"n_ctx={n_ctx} n_batch={r.settings['n_batch']} backend={be}")
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
           "compute_buffer_bytes", "project", "fit", "variants_from_bench", "quant_mix", "math"]
