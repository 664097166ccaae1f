"""Builders for the tiny random-weight checkpoints the tests convert, and the references they compare to.

Shapes come from real config.json files (tests/fixtures/configs), shrunk but with everything else kept
(GQA ratio, tied embeddings, rope settings, norms); tokenizers are the real files in
tests/fixtures/tokenizers. Weights are seeded, so every run builds the same model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


FIXTURES = REPO / "tests" / "fixtures"


def unpack_fixtures(root: Path = FIXTURES) -> None:
    """Write NAME beside each committed NAME.zst that has no up-to-date unpacked copy (large fixtures are stored
    compressed; tests/fixtures/README.md). Atomic, so an interrupted run never leaves a truncated fixture."""
    import zstandard

    for packed in root.rglob("*.zst"):
        target = packed.with_suffix("")
        if target.exists() and target.stat().st_mtime_ns >= packed.stat().st_mtime_ns:
            continue
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with packed.open("rb") as src, tmp.open("wb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
        os.replace(tmp, target)


unpack_fixtures()
TOKENIZERS = FIXTURES / "tokenizers"
CONFIGS = FIXTURES / "configs"
TEXTS = FIXTURES / "texts"


def real_config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.config.json").read_text())


def shrink(config: dict, *, hidden: int = 256, layers: int = 2, heads: int = 4, intermediate: int = 512,
           vocab_size: int | None = None, max_positions: int = 2048, **overrides) -> dict:
    """A small config with the real one's structure: same GQA ratio, same head_dim rule, same flags."""
    out = dict(config)
    n_head = int(config.get("num_attention_heads", heads))
    n_kv = int(config.get("num_key_value_heads", n_head))
    ratio = max(n_head // n_kv, 1)
    kv_heads = max(heads // ratio, 1)
    out.update(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv_heads, intermediate_size=intermediate,
               max_position_embeddings=max_positions)
    if config.get("head_dim"):
        out["head_dim"] = hidden // heads
    rope = out.get("rope_scaling")
    if rope and rope.get("original_max_position_embeddings", 0) > max_positions:
        # keep the llama3 scaling active at this size: the original context must stay below the new one.
        rope = dict(rope, original_max_position_embeddings=max_positions // 4)
        out["rope_scaling"] = rope
    if vocab_size is not None:
        out["vocab_size"] = vocab_size
    out.pop("transformers_version", None)
    out.update(overrides)
    return out


def copy_tokenizer(src_dir: Path, dst: Path, rename: dict[str, str] | None = None) -> None:
    """Copy tokenizer files, renaming fixture-specific names (llama_tokenizer.json -> tokenizer.json)."""
    rename = rename or {}
    for f in src_dir.iterdir():
        if f.is_file() and not f.name.startswith("LICENSE"):
            shutil.copy(f, dst / rename.get(f.name, f.name))


# MoE routers' expert-selection biases: buffers (not parameters) that checkpoints carry.
ROUTING_BIASES = ("expert_bias", "e_score_correction_bias")
# Gemma 4's router gains (on the router's input and on each expert's output), which start at 1 as trained ones sit
# around: at 0.1 x randn the per-expert scales would flip signs.
ROUTER_GAINS = ("router.scale", "router.per_expert_scale")
QK_NORMS = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")  # one gain per head dimension


def build_model(config: dict, out: Path, *, seed: int = 0, dtype: str = "float32", unscaled_attention: bool = False,
                stds: dict | None = None):
    """Instantiate config['architectures'][0] with seeded random weights and save it as safetensors. ``stds``:
    regex -> standard deviation for the matrices whose names match (else the config's initializer_range).

    ``unscaled_attention``: the family does not divide attention scores by sqrt(head_dim) (Gemma 3n and Gemma 4:
    transformers' scaling 1.0, the trained q/k norm gains carry the temperature). Their q/k norm gains are then
    scattered around head_dim ** -0.25 rather than 1, so q.k has the unit variance a scaled attention gives. At
    gain 1 the scores spread ~sqrt(head_dim) and the softmax turns last-bit differences into visible ones: Gemma 3n
    E2B's reference moved 1.4e-2 between float32 and float64 arithmetic (top-1 47/48), 5.8e-4 with these gains."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cls = getattr(transformers, config["architectures"][0])
    cfg_cls = transformers.AutoConfig.for_model(config["model_type"]).__class__
    cfg = cfg_cls(**{k: v for k, v in config.items() if k not in ("model_type",)})
    model = cls(cfg).eval()
    std = float(config.get("initializer_range", 0.02))  # the scale real checkpoints start from
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms/biases: moved off their initial value so a wrong layout cannot hide
                # Around 1, except a norm weight the family starts at 0 (Gemma's and Qwen3.5's x * (1 + w)), whose
                # gain would otherwise be ~2 per norm, which no such model starts from (Qwen3.5's F16 reference then
                # moved 5e-3 between float32 and float64 arithmetic, 9e-4 with the family's own gain of ~1).
                if "norm" in name:
                    center = 0.0 if name.endswith("weight") and not p.any() else 1.0
                    gain = p.numel() ** -0.25 if unscaled_attention and name.endswith(QK_NORMS) else 1.0
                    p.copy_(gain * (center + 0.1 * torch.randn_like(p)))
                elif name.endswith(ROUTER_GAINS):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
            else:
                scale = next((v for pattern, v in (stds or {}).items() if re.search(pattern, name)), std)
                p.copy_(scale * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith(ROUTING_BIASES):  # saved buffers that start at zero would hide a lost tensor
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("layer_scalar"):  # Gemma 4's learned per-layer scales, kept as (saved) buffers
                b.copy_(1.0 + 0.1 * torch.randn_like(b))
    model = model.to(getattr(torch, dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    return model


def reload_float32(folder: Path):
    """The saved checkpoint, loaded back by transformers in float32 (BF16 weights widen exactly; buffers such
    as rotary inv_freq are recomputed in float32, as they are when anyone loads the checkpoint)."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_logits(model, token_ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model.float()(torch.tensor([token_ids])).logits[0]
    return logits.numpy().astype(np.float32)


def llama_cpp_logits(gguf_path: Path, token_ids: list[int], lora: Path | None = None,
                     lora_scale: float = 1.0) -> np.ndarray:
    """llama.cpp's logits for every position (F32 KV cache: F16 alone costs ~1e-3), optionally with a LoRA
    adapter (llama-cpp-python's lora_path / lora_scale). Loaded through edgepack's own loader."""
    from edgepack.evaluate import open_llama

    extra = {"lora_path": str(lora), "lora_scale": lora_scale} if lora else {}
    with open_llama(gguf_path, n_ctx=max(64, len(token_ids) + 8), logits_all=True, n_threads=2, n_batch=512,
                    type_k=0, type_v=0, **extra) as llm:
        llm.eval(token_ids)
        return np.array(llm.scores[: len(token_ids)], dtype=np.float32)


BUFFER_LOG = re.compile(r"(\S+) (model|KV|RS|compute) buffer size =\s+([\d.]+) MiB")


def llama_cpp_buffers(path: Path, n_ctx: int, n_batch: int = 512, flash_attn: bool = False) -> dict[str, float]:
    """Load the model in a child process (verbose) and read llama.cpp's own buffer sizes, in bytes, from its
    log: model (weights), kv (all KV caches: an iSWA model has two), rs (recurrent state), compute. The
    CPU_REPACK model buffer is left out: it holds copies of weights the mapped file also holds, rearranged for
    this CPU's kernels (the mapped pages of those tensors are not touched again).

    Sliding-window caches as llama-server and llama-cli size them (swa_full=false: the window + one
    micro-batch), which is what the fit models; llama_context_default_params() would size them as full caches.
    """
    code = textwrap.dedent(f"""
        import llama_cpp
        llm = llama_cpp.Llama({str(path)!r}, n_ctx={n_ctx}, n_batch={n_batch}, n_ubatch={n_batch}, n_threads=2,
                              flash_attn={flash_attn}, swa_full=False, verbose=True)
        llm.close()
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    sizes: dict[str, float] = {}
    for buffer, kind, mib in BUFFER_LOG.findall(res.stderr):
        key = kind.lower()
        if buffer.endswith("REPACK"):
            continue
        # several model/KV/RS buffers add up; the compute buffer is reported once per backend: the last (CPU)
        sizes[key] = float(mib) * 2**20 + (sizes.get(key, 0.0) if key != "compute" else 0.0)
    return sizes


def compare(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(max |Δ| over all logits, fraction of positions whose argmax agrees)."""
    max_abs = float(np.max(np.abs(reference - got)))
    top1 = float(np.mean(reference.argmax(-1) == got.argmax(-1)))
    return max_abs, top1


def write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """Write a safetensors file from raw arrays: name -> (safetensors dtype, array holding that dtype's bytes).

    Hand-rolled (8-byte header length + JSON + data) because numpy has no bfloat16 and the benchmark's BF16
    checkpoint must not need torch. Arrays are written one at a time.
    """
    header, offset = {}, 0
    for name, (dtype, array) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _, array in tensors.values():
            np.ascontiguousarray(array).tofile(f)


def synthetic_llama(folder: Path, config: dict, *, dtype: str = "F32", seed: int = 0, shards: int = 1) -> Path:
    """A Llama checkpoint with random weights written by numpy (no torch): for error cases and benchmarks."""
    return synthetic_checkpoint(folder, config, dtype=dtype, seed=seed, shards=shards)


def synthetic_checkpoint(folder: Path, config: dict, *, dtype: str = "F32", seed: int = 0, shards: int = 1) -> Path:
    """A checkpoint of config's architecture with random weights written by numpy (no torch).

    Shapes follow the converter's own expectations (the family's ArchSpec; optional tensors left out); BF16 is
    the top half of float32.
    """
    from edgepack.convert.spec import family_of

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    spec, hf_config = family_of(config)
    shapes = {}
    for name, e in spec.tensors(hf_config).items():
        if e.optional:
            continue
        # a stacked tensor (a layer's experts) is written in its first form: the per-expert tensors
        shapes.update({p.name: p.source_shape for p in e.forms[0]} if e.forms else {name: e.shape})
    names = list(shapes)
    per_shard = -(-len(names) // shards)
    weight_map = {}
    for shard in range(shards):
        part = names[shard * per_shard:(shard + 1) * per_shard]
        file = "model.safetensors" if shards == 1 else f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for name in part:
            values = rng.standard_normal(shapes[name], dtype=np.float32) * 0.02
            if dtype == "BF16":
                tensors[name] = ("BF16", (values.view(np.uint32) >> 16).astype(np.uint16))
            else:
                tensors[name] = ("F32", values)
            weight_map[name] = file
        write_safetensors(folder / file, tensors)
    if shards > 1:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def tiny_llama_config(**overrides) -> dict:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
              "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": 32000,
              "tie_word_embeddings": False, "hidden_act": "silu"}
    config.update(overrides)
    return config


# --- subprocesses -----------------------------------------------------------------------------------

def popen_for_ctrl_c(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` for a test that interrupts the child with SIGINT (Ctrl-C).

    A command started in the background (``make test &``, nohup under a non-interactive shell, some CI runners)
    inherits SIGINT as *ignored*, its children too, and a Python child then never sees the Ctrl-C the test
    sends. The child's SIGINT goes back to the default before it starts, so the test does not depend on how
    the test run was started."""
    return subprocess.Popen(args, preexec_fn=_default_sigint, **kwargs)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def max_abs_and_cosine(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """max |Δ| and cosine similarity of two embedding arrays of the same shape, in float64."""
    assert reference.shape == got.shape, (reference.shape, got.shape)
    a, b = reference.reshape(-1).astype(np.float64), got.reshape(-1).astype(np.float64)
    return float(np.abs(a - b).max()), float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
