"""OLMo-2 (Olmo2ForCausalLM): a Llama-shaped decoder with norms after the blocks instead of before them.

What sets it apart (llama.cpp src/models/olmo2.cpp, its loader in src/llama-model.cpp):

* No input norm: each block's output is RMS-normed (post_attention_layernorm, post_feedforward_layernorm)
  before the residual add.
* q_norm / k_norm normalise the whole projected q (heads x head_dim) and k (kv heads x head_dim), not each
  head: their weights are [heads x head_dim] and [kv heads x head_dim].
* Rope is NEOX-style in llama.cpp, as in HF: q/k rows are not permuted.
* llama.cpp's olmo2 loader requires an output matrix: a checkpoint with tied embeddings gets the embedding
  written again as ``output.weight``.
OLMo-2 has no sliding window (that is OLMo-3's Olmo3ForCausalLM), so none is written.
"""

from __future__ import annotations

import gguf

from ...errors import UnsupportedArchitecture
from ..common import DECODER_HPARAMS, RMS_NORM_EPS, check_silu, decoder_tensors, head_size_metadata, rope_metadata
from ..spec import ArchSpec, Expected, HFConfig, Part, register


def _check(config: HFConfig) -> None:
    check_silu(config, "OLMo-2")
    rope_metadata(config, frozenset({"linear"}))  # raises for rope scaling llama.cpp's olmo2 graph cannot apply
    if config.get("attention_bias", default=False):
        raise UnsupportedArchitecture("OLMo-2 with attention_bias=true is not supported",
                                      "llama.cpp's olmo2 graph has no attention biases (released OLMo-2 has none)")


def _tensors(config: HFConfig) -> dict[str, Expected]:
    hidden, head_dim = int(config.get("hidden_size")), config.head_dim
    n_vocab = int(config.get("vocab_size"))
    tied = bool(config.get("tie_word_embeddings", default=False))
    tensors = {n: e for n, e in decoder_tensors(config, lm_head="absent").items()
               if not n.endswith("input_layernorm.weight")}
    for i in range(int(config.get("num_hidden_layers"))):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_norm.weight"] = Expected((config.n_head * head_dim,))
        tensors[p + "self_attn.k_norm.weight"] = Expected((config.n_head_kv * head_dim,))
        tensors[p + "post_feedforward_layernorm.weight"] = Expected((hidden,))
    shape = (n_vocab, hidden)
    forms = ((Part("lm_head.weight", shape),),) + ((Part("model.embed_tokens.weight", shape),),) * tied
    tensors["lm_head.weight"] = Expected(shape, forms=forms, gguf_name="output.weight")
    return tensors


def _metadata(config: HFConfig):
    yield from rope_metadata(config, frozenset({"linear"}))
    yield from head_size_metadata(config)


OLMO2 = register(ArchSpec(
    hf_classes=("Olmo2ForCausalLM",),
    arch=gguf.MODEL_ARCH.OLMO2,
    hparams=DECODER_HPARAMS + (RMS_NORM_EPS,),
    tensors=_tensors,
    metadata=_metadata,
    ignore=(r"rotary_emb\.inv_freq$",),
    check=_check,
))
