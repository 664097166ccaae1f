"""Llama family: Llama-2, Llama-3.x, TinyLlama, SmolLM/SmolLM2 (all LlamaForCausalLM) and Mistral.

llama.cpp runs all of them as architecture ``llama``. The only layout difference from Hugging Face is the
rope row order of q_proj/k_proj (permuted here); Llama-3.1 rope scaling travels as a rope_freqs tensor.
Mistral's sliding_window is not carried: llama.cpp's llama graph has no sliding window, so Mistral-7B-v0.1
matches transformers only within 4096 tokens (v0.2+ set sliding_window to null).
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import (DECODER_HPARAMS, RMS_NORM_EPS, head_size_metadata, llama3_rope_factors, permute_k,
                     permute_q, rope_metadata)
from ..spec import ArchSpec, Expected, HFConfig, register


def _check(config: HFConfig) -> None:
    if config.get("hidden_act", default="silu") != "silu":
        raise UnsupportedArchitecture(f"hidden_act {config.get('hidden_act')!r} is not supported for Llama",
                                      "llama.cpp's llama graph uses SiLU (SwiGLU)")
    if config.get("attention_bias", default=False) or config.get("mlp_bias", default=False):
        raise UnsupportedArchitecture("Llama checkpoints with attention_bias/mlp_bias are not supported",
                                      "this is unusual for Llama; convert the model with its own family")


def _tensors(config: HFConfig) -> dict[str, Expected]:
    hidden, head_dim = int(config.get("hidden_size")), config.head_dim
    q_rows, kv_rows = config.n_head * head_dim, config.n_head_kv * head_dim
    ff, n_vocab = int(config.get("intermediate_size")), int(config.get("vocab_size"))
    tensors = {"model.embed_tokens.weight": Expected((n_vocab, hidden))}
    for i in range(int(config.get("num_hidden_layers"))):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": Expected((hidden,)),
            p + "self_attn.q_proj.weight": Expected((q_rows, hidden)),
            p + "self_attn.k_proj.weight": Expected((kv_rows, hidden)),
            p + "self_attn.v_proj.weight": Expected((kv_rows, hidden)),
            p + "self_attn.o_proj.weight": Expected((hidden, q_rows)),
            p + "post_attention_layernorm.weight": Expected((hidden,)),
            p + "mlp.gate_proj.weight": Expected((ff, hidden)),
            p + "mlp.up_proj.weight": Expected((ff, hidden)),
            p + "mlp.down_proj.weight": Expected((hidden, ff)),
        })
    tensors["model.norm.weight"] = Expected((hidden,))
    # Tied checkpoints usually omit lm_head; llama.cpp then reuses token_embd.
    tensors["lm_head.weight"] = Expected((n_vocab, hidden), optional=bool(config.get("tie_word_embeddings",
                                                                                     default=False)))
    return tensors


def _metadata(config: HFConfig):
    yield from rope_metadata(config)
    yield from head_size_metadata(config)


LLAMA = register(ArchSpec(
    hf_classes=("LlamaForCausalLM", "MistralForCausalLM"),
    arch=gguf.MODEL_ARCH.LLAMA,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=_tensors,
    metadata=_metadata,
    transforms={r"self_attn\.q_proj\.weight$": permute_q, r"self_attn\.k_proj\.weight$": permute_k},
    extra_tensors=llama3_rope_factors,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))
