"""Llama checkpoints built with numpy + safetensors alone (no torch), for the quantize/eval tests and the
quantize benchmark.

Two kinds:
- ``random_llama``: seeded Gaussian weights, any shape (e.g. an intermediate size not divisible by 256, to
  make llama.cpp's k-quants fall back).
- ``bigram_llama``: a model that actually predicts English. Its embeddings and output matrix are a rank-
  ``hidden`` factorisation of the log bigram table of a war-and-peace excerpt (closed form, no training), and its
  transformer blocks are random but small. Its next-token distributions are peaked and text-dependent, so
  perplexity, KL divergence and top-1 agreement measure something; a random model with std-0.05 weights has
  near-uniform outputs over 32000 tokens, where every quant type's KLD is tiny and ordering is noise.

The tokenizer is the real Llama-2 SentencePiece model from tests/fixtures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .tinymodels import FIXTURES

SP_TOKENIZER = FIXTURES / "tokenizers" / "llama2-sentencepiece-llama2c" / "tokenizer.model"
WAR_AND_PEACE = FIXTURES / "texts" / "war-and-peace.txt"
DEMO = FIXTURES.parent.parent / "examples" / "demo" / "model"  # the trained demo (examples/demo/TRAINING.md)
VOCAB = 32000


def llama_config(*, hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int | None = None,
                 vocab: int = VOCAB, tied: bool = False) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads or heads,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": tied, "vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def write_checkpoint(out: Path, config: dict, tensors: dict[str, np.ndarray]) -> Path:
    """config.json + model.safetensors + the Llama-2 tokenizer.model in ``out``."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / "model.safetensors"))
    shutil.copy(SP_TOKENIZER, out / "tokenizer.model")
    return out


def random_tensors(config: dict, rng: np.random.Generator, *, std: float = 0.05,
                   dtype=np.float32) -> dict[str, np.ndarray]:
    h, ff, n_vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    head_dim = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(dtype)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(h, dtype=np.float32)).astype(dtype)

    t = {"model.embed_tokens.weight": w(n_vocab, h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": norm(), p + "self_attn.q_proj.weight": w(h, h),
                  p + "self_attn.k_proj.weight": w(kv, h), p + "self_attn.v_proj.weight": w(kv, h),
                  p + "self_attn.o_proj.weight": w(h, h), p + "post_attention_layernorm.weight": norm(),
                  p + "mlp.gate_proj.weight": w(ff, h), p + "mlp.up_proj.weight": w(ff, h),
                  p + "mlp.down_proj.weight": w(h, ff)})
    t["model.norm.weight"] = norm()
    if not config.get("tie_word_embeddings"):
        t["lm_head.weight"] = w(n_vocab, h)
    return t


def random_llama(out: Path, *, hidden: int = 256, layers: int = 2, intermediate: int = 512, heads: int = 4,
                 seed: int = 0, std: float = 0.05, dtype=np.float32) -> Path:
    config = llama_config(hidden=hidden, layers=layers, intermediate=intermediate, heads=heads)
    return write_checkpoint(out, config, random_tensors(config, np.random.default_rng(seed), std=std, dtype=dtype))


def corpus(n_chars: int, offset: int = 0) -> str:
    """A slice of War and Peace (public domain), skipping the Gutenberg header."""
    text = WAR_AND_PEACE.read_text(encoding="utf-8")
    start = text.find("CHAPTER I") if "CHAPTER I" in text else 0
    return text[start + offset: start + offset + n_chars]


def bigram_llama(out: Path, *, hidden: int = 256, layers: int = 2, intermediate: int = 512, heads: int = 4,
                 train_chars: int = 400_000, top_k: int = 1024, block_std: float = 0.03,
                 seed: int = 0) -> Path:
    """A Llama whose logits approximate log P(next | current) of War and Peace (see module docstring)."""
    import sentencepiece as spm

    rng = np.random.default_rng(seed)
    config = llama_config(hidden=hidden, layers=layers, intermediate=intermediate, heads=heads)
    tensors = random_tensors(config, rng, std=block_std)
    for name in list(tensors):
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(hidden, np.float32)

    sp = spm.SentencePieceProcessor(model_file=str(SP_TOKENIZER))
    ids = np.array([1] + sp.encode(corpus(train_chars)), dtype=np.int64)
    # The top_k most frequent tokens get their own row and column; all others share an "other" class,
    # spread uniformly over its members.
    keep = np.argsort(-np.bincount(ids, minlength=VOCAB))[:top_k]
    other = top_k
    index = np.full(VOCAB, other)
    index[keep] = np.arange(top_k)
    counts = np.zeros((top_k + 1, top_k + 1), np.float64)
    np.add.at(counts, (index[ids[:-1]], index[ids[1:]]), 1.0)
    counts[index[1]] += counts.sum(0) / counts.sum()  # BOS starts every sequence llama.cpp evaluates
    # Add-alpha smoothing toward the unigram; rows centred (softmax ignores a row's shift).
    unigram = (counts.sum(0) + 1.0) / (counts.sum() + top_k + 1)
    probs = (counts + 2.0 * unigram) / (counts.sum(1, keepdims=True) + 2.0)
    logp = np.log(probs)
    logp -= logp.mean(1, keepdims=True)
    u, s = _top_singular(logp, hidden - 1)
    a = u * np.sqrt(s)
    # The last channel carries half of each row's energy, so after RMSNorm it is the constant sqrt(hidden/2):
    # a bias channel, through which the output matrix spreads the "other" class over its members.
    a = np.concatenate([a, np.sqrt(np.sum(a * a, axis=1, keepdims=True))], axis=1)
    n = a / np.sqrt(np.mean(a * a, axis=1, keepdims=True))  # what RMSNorm makes of each row
    w_out = _lstsq(n, logp)  # (hidden, top_k + 1): logits = norm(h) @ w_out

    unseen = np.setdiff1d(np.arange(VOCAB), keep)
    embed = tensors["model.embed_tokens.weight"]
    embed[keep] = n[:top_k]
    embed[unseen] = n[other] + 0.02 * rng.standard_normal((len(unseen), hidden), dtype=np.float32)
    head = tensors["lm_head.weight"]
    head[keep] = w_out.T[:top_k]
    head[unseen] = w_out.T[other]
    head[unseen, -1] -= np.log(len(unseen)) / np.sqrt(hidden / 2)
    return write_checkpoint(out, config, tensors)


def _single_threaded_torch():
    """LAPACK through torch on one thread: numpy's multi-threaded OpenBLAS crawls on an oversubscribed CI
    machine (13 s instead of 0.5 s for this SVD, spinning threads)."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def one_thread():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield torch
        finally:
            torch.set_num_threads(before)

    return one_thread()


def _top_singular(m: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    with _single_threaded_torch() as torch:
        u, s, _ = torch.linalg.svd(torch.from_numpy(m), full_matrices=False)
    return u[:, :k].numpy(), s[:k].numpy()


def _lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with _single_threaded_torch() as torch:
        return torch.linalg.lstsq(torch.from_numpy(a), torch.from_numpy(b), driver="gelsd").solution.numpy()


def outlier_demo(out: Path, sigma: float = 0.7, seed: int = 0) -> Path:
    """The demo model with outlier channels, computing the same function.

    Trained LLMs have a few hidden channels whose RMSNorm gains (and so activations) are many times the others
    ("massive activations"); the demo, trained 260 steps, has not grown them. This gives it such channels
    without changing what it computes: each norm gain g_j is multiplied by s_j (log-normal, ``sigma``) and the
    input column j of the projections it feeds is divided by s_j. The quantizer then meets small weights on
    large inputs, the case an importance matrix exists for.
    """
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(DEMO, out)
    config = json.loads((DEMO / "config.json").read_text())
    tensors = {k: v.float() for k, v in load_file(DEMO / "model.safetensors").items()}
    gen = torch.Generator().manual_seed(seed)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for norm, projs in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                            ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
            s = torch.exp(sigma * torch.randn(config["hidden_size"], generator=gen))
            tensors[p + norm + ".weight"] *= s
            for proj in projs:
                tensors[p + proj + ".weight"] /= s
    save_file(tensors, str(out / "model.safetensors"))
    config["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config))
    return out
