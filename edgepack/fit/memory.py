"""What llama.cpp allocates for a model on a device: weights (and the second copy of a tied embedding), KV cache,
recurrent state, compute buffers, logits and the runtime's overhead (``memory_needed``), checked against
llama.cpp's own load log in tests/integration/test_fit.py. The CPU's repacked weights (CPU_REPACK) decide where a tied
embedding's copy goes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .describe import ModelDesc

MB = 1e6
KV_PAD = 256  # llama.cpp pads the KV cache size to a multiple of 256 cells

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




@dataclass
class MemoryParts:
    weights_bytes: int  # the GGUF's tensors, as loaded (repacked or not: same size)
    tied_output_copy_bytes: int  # a tied embedding's second copy for the output matmul (see tied_output_copy_bytes)
    kv_cache_bytes: int
    compute_bytes: int
    output_bytes: int
    overhead_bytes: int
    state_bytes: int = 0  # recurrent/convolution state of hybrid layers (fixed per sequence)
    projector_bytes: int = 0  # the vision projector loaded beside it (``projector_bytes``): weights + its compute

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.tied_output_copy_bytes + self.kv_cache_bytes + self.compute_bytes
                + self.output_bytes + self.overhead_bytes + self.state_bytes + self.projector_bytes)

    @property
    def loaded_weights_bytes(self) -> int:
        """What llama.cpp reports as its model buffers (CPU + CPU_REPACK + GPU), without mmap."""
        return self.weights_bytes + self.tied_output_copy_bytes

    def as_mb(self) -> dict[str, float]:
        """The parts in megabytes (1e6 bytes), keys named by that unit: weights_mb, kv_cache_mb, ... (projector_mb
        only with a projector: a text model's figures, and the manifests holding them, stay as they were)."""
        return {k.removesuffix("_bytes") + "_mb": round(v / MB, 2) for k, v in asdict(self).items()
                if v or k != "projector_bytes"}


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
                  isa: tuple[str, ...] | list[str] = (), projector_bytes: int = 0) -> MemoryParts:
    """What llama.cpp allocates for ``model`` on ``backend`` of a device with ``isa`` (the tied-embedding copy
    depends on both), plus ``projector_bytes`` for a vision projector loaded beside it."""
    n_ubatch = min(n_batch, 512)
    return MemoryParts(weights_bytes=model.weight_bytes,
                       tied_output_copy_bytes=tied_output_copy_bytes(model, backend, isa),
                       kv_cache_bytes=kv_cache_bytes(model, n_ctx, n_ubatch, kv_type_bytes, flash_attn),
                       compute_bytes=compute_buffer_bytes(model, n_ctx, n_ubatch, flash_attn),
                       output_bytes=model.n_vocab * 4, overhead_bytes=overhead_bytes,
                       state_bytes=recurrent_state_bytes(model), projector_bytes=projector_bytes)


def projector_bytes(mmproj: str | Path, compute_bytes: int | None = None) -> int:
    """What libmtmd allocates for the vision projector ``mmproj`` beside the text model: its tensors (loaded into
    backend buffers, not mapped) and the compute buffer it reserves for the largest image it accepts by default.
    ``compute_bytes``: that buffer as measured when the file was made (``MmprojResult.compute_bytes``); measured
    here by loading the file in a child when not given. Raises ``BadGGUF`` for a file that is not a projector."""
    from ..bundle import mmproj_facts
    from ..ggufheader import read_header
    from ..mtmd import check_projector_loads

    mmproj_facts(Path(mmproj))  # BadGGUF unless it is a projector
    if compute_bytes is None:
        compute_bytes = check_projector_loads(mmproj, Path(mmproj).name)
    return read_header(mmproj).data_bytes + compute_bytes
