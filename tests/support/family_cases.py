"""The architecture families' test cases: tiny checkpoints from real configs, real or family-style tokenizers.

Used by tests/fidelity/test_families.py and benchmarks/families.py. Each ``FamilyCase`` names a real config.json from
tests/fixtures/configs, how it is shrunk (everything else kept: GQA ratio, head_dim rule, tied embeddings,
biases, soft-caps, rope settings; sliding windows shrunk below the test sequence so they take effect) and a
tokenizer. Real tokenizer files are used where the fixtures have one for the family (Phi-3, GPT-2, Phi-2 for
StableLM, TinyLlama); otherwise the tokenizer is trained here with ``tokenizers`` in the family's own
pre-tokenizer configuration (Qwen2's regex split, SmolLM's digits + ByteLevel, Gemma's SentencePiece-style
BPE with byte fallback and its special tokens).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import types
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .gemma_configs import (GEMMA3_4B_IT, GEMMA3N_E2B_TEXT, GEMMA4_26B_A4B_TEXT, GEMMA4_31B_TEXT, GEMMA4_E2B_IT,
                            TINY_GEMMA4_VISION, TINY_SIGLIP)
from .tinymodels import TEXTS, TOKENIZERS, real_config, shrink
from .tokenizer_cases import phi4_mini_json

QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
SEQUENCE_LENGTH = 48  # tokens per logits comparison; every shrunk sliding window is shorter
SLIDING_WINDOW = 16


def conformance_texts() -> list[str]:
    inputs = json.loads((TEXTS / "swift-transformers/MultilingualConformance/inputs.json").read_text())
    return [entry["text"] for entry in inputs]


def _training_corpus() -> list[str]:
    book = (TEXTS / "war-and-peace.txt").read_text(encoding="utf-8")[:400_000]
    return book.splitlines() + conformance_texts()


# --- tokenizers --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenizerSpec:
    name: str
    build: object  # folder -> None: writes tokenizer.json (+ tokenizer_config.json ...)
    bos: str | None  # prepended to the logits test's ids when the family's tokenizer adds it


def _write(folder: Path, tokenizer_json: dict, config: dict) -> None:
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


# Qwen3.5's split: combining marks (\p{M}) stay inside words.
QWEN35_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
                "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _with_marks(corpus: list[str]) -> list[str]:
    """The corpus plus its texts that carry combining marks (Devanagari, Thai...) 50 times over, so the vocabulary
    learns merges across marks and a split that cuts words at their marks (Qwen2's regex) tokenizes differently."""
    return corpus + 50 * [t for t in corpus if any(unicodedata.category(c).startswith("M") for c in t)]


def _byte_level(folder: Path, *, qwen2: bool, regex: str = QWEN2_REGEX) -> None:
    """Byte-level BPE as Qwen2 (NFC, regex split, ByteLevel without regex), Qwen3.5 (its regex keeps combining
    marks inside words; trained on text that has them) or SmolLM (digits, ByteLevel)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if qwen2:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=[] if qwen2 else specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = _training_corpus()
    tok.train_from_iterator(_with_marks(corpus) if regex == QWEN35_REGEX else corpus, trainer)
    if qwen2:  # Qwen2 appends its specials after the BPE vocabulary (151643...)
        tok.add_special_tokens(specials)
    data = json.loads(tok.to_str())
    _write(folder, data, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None if qwen2 else
                          "<|endoftext|>", "eos_token": "<|im_end|>" if qwen2 else "<|endoftext|>",
                          "pad_token": "<|endoftext|>", "add_bos_token": False})


GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]


def _gemma_style(folder: Path) -> None:
    """SentencePiece-style BPE as Gemma's tokenizer.json: spaces become ▁ (no dummy prefix), no
    pre-tokenizer, byte fallback through <0x..> tokens, <pad>/<eos>/<bos>/<unk> at ids 0-3."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=1800, special_tokens=GEMMA_SPECIALS + byte_tokens,
                                  max_token_length=16, show_progress=False)
    tok.train_from_iterator(_training_corpus(), trainer)
    data = json.loads(tok.to_str())
    # The byte tokens are ordinary vocabulary entries in Gemma (SentencePiece BYTE pieces), not added tokens.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_tokens]
    data["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                       {"Sequence": {"id": "A", "type_id": 0}},
                                       {"SpecialToken": {"id": "<bos>", "type_id": 1}},
                                       {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}}
    _write(folder, data, {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
                          "pad_token": "<pad>", "unk_token": "<unk>", "add_bos_token": True,
                          "add_eos_token": False})


def _copy(files: dict[str, str]):
    def build(folder: Path) -> None:
        for src, dst in files.items():
            shutil.copy(TOKENIZERS / src, folder / dst)
    return build


TOKENIZER_SPECS = {t.name: t for t in [
    TokenizerSpec("qwen2-trained", lambda f: _byte_level(f, qwen2=True), None),
    TokenizerSpec("qwen35-trained", lambda f: _byte_level(f, qwen2=True, regex=QWEN35_REGEX), None),
    TokenizerSpec("smollm-trained", lambda f: _byte_level(f, qwen2=False), None),
    TokenizerSpec("gemma-trained", _gemma_style, "<bos>"),
    TokenizerSpec("phi3-mini", _copy({"phi3-mini-ortx/tokenizer.json": "tokenizer.json",
                                      "phi3-mini-ortx/tokenizer_config.json": "tokenizer_config.json"}), "<s>"),
    TokenizerSpec("phi2", _copy({"phi2-ortx/tokenizer.json": "tokenizer.json",
                                 "phi2-ortx/tokenizer_config.json": "tokenizer_config.json"}), None),
    TokenizerSpec("gpt2", _copy({"gpt2-swift-transformers/gpt2_tokenizer.json": "tokenizer.json",
                                 "gpt2-swift-transformers/gpt2_tokenizer_config.json": "tokenizer_config.json"}),
                  None),
    TokenizerSpec("phi4-mini", phi4_mini_json, None),
    TokenizerSpec("tinyllama", _copy({f"tinyllama-chat-resaved-Dheena731/{n}": n for n in (
        "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")}), "<s>"),
]}


def build_tokenizer(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    TOKENIZER_SPECS[name].build(folder)
    return folder


def hf_encoder(folder: Path):
    """text -> ids with Hugging Face tokenizers (no BOS/EOS): the reference every GGUF must reproduce."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    return lambda text: tok.encode(text, add_special_tokens=False).ids


def tokenizer_size(folder: Path) -> int:
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


# --- model cases -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FamilyCase:
    name: str
    # fixtures/configs/<config>.config.json, or a published config held in code (gemma_configs.py). A multimodal
    # config (text_config inside) is not shrunk: ``overrides`` is merged into it key by key, nested dicts too.
    config: str | dict
    tokenizer: str
    shrink_args: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    # The GELU-gated families: llama.cpp's CPU GELU/GEGLU reads an FP16 lookup table by design (GGML_GELU_FP16
    # in ggml-cpu/vec.h: input and output rounded to half precision). Their F32 comparison runs transformers
    # with that same table GELU (see table_gelu) and allows 2e-3: what remains is the table's rounding
    # landing on the other side of a half-precision step when the inputs differ in the last float32 bits.
    gelu_table: bool = False
    # Gemma 3n: llama.cpp's activation-sparsity cut uses the sample standard deviation (n - 1), transformers the
    # population one (n); the F32/F16 references use llama.cpp's (see sample_std_sparsity).
    sample_std_sparsity: bool = False
    # Gemma 3n / Gemma 4: attention scores are not divided by sqrt(head_dim); the tiny model's q/k norm gains are
    # scattered around head_dim ** -0.25 (tinymodels.build_model), as a trained model's carry the temperature.
    unscaled_attention: bool = False
    # Limits replacing test_families' defaults for this case ("f32", "f16"; "plain_f32", "plain_f16" against
    # transformers as trained), where the reference itself moves more than the default allows: each is stated
    # with the reference's own spread, transformers run in float32 vs float64 with the same roundings.
    tolerance: dict = field(default_factory=dict)
    # regex -> standard deviation of the matrices a trained model holds at another scale than the initializer's
    # (tinymodels.build_model's ``stds``); stated with the reason where used.
    init_std: dict = field(default_factory=dict)
    # tinymodels.build_model's seed; a case that needs a particular draw says why.
    seed: int = 0


# Weights an F16 GGUF still holds in F32, as llama.cpp's converter keeps them (edgepack.convert.core.keeps_f32):
# convolution kernels and MoE routers.
KEPT_F32 = re.compile(r"(conv\.conv|conv1d|\.gate|router\.(layer|proj)|shared_expert_gate)\.weight$")


def half_precision_matmuls(model) -> None:
    """Make transformers compute as llama.cpp's CPU backend does with an F16 GGUF: weights rounded to half, and
    each matmul's input rounded to half too (ggml converts src1 to the F16 vec_dot type, accumulating in F32).
    Attention itself stays F32, as with llama_cpp_logits' F32 KV cache."""
    import torch

    def round_input(_module, args):  # back to the input's own dtype: reference_spread runs it in float64
        return (args[0].to(torch.float16).to(args[0].dtype),) + tuple(args[1:])

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1 and not KEPT_F32.search(name):
                param.copy_(param.to(torch.float16).to(torch.float32))
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            if not KEPT_F32.search(name + ".weight"):  # an F32 weight: ggml multiplies in F32, input unrounded
                module.register_forward_pre_hook(round_input)
        elif _fused_swiglu_experts(module):
            module.forward = types.MethodType(_half_precision_experts, module)


def _fused_swiglu_experts(module) -> bool:
    """transformers 5's fused expert block (gate_up_proj (E, 2F, H) with gate rows first, down_proj (E, H, F)),
    whose matmuls are no nn.Linear a hook could round."""
    return (type(module).__name__.endswith("Experts") and hasattr(module, "gate_up_proj")
            and hasattr(module, "down_proj") and hasattr(module, "act_fn")
            and not getattr(module, "is_transposed", False) and not getattr(module, "has_bias", False))


def _half_precision_experts(self, hidden_states, top_k_index, top_k_weights):
    """The experts computed as ggml's F16 mul_mat_id does: both matmuls' inputs rounded to half, F32 results."""
    import torch

    def half(x):  # back to the input's own dtype, as round_input: reference_spread runs it in float64
        return x.to(torch.float16).to(x.dtype)

    out = torch.zeros_like(hidden_states)
    for expert in range(self.gate_up_proj.shape[0]):
        token, slot = torch.where(top_k_index == expert)
        if len(token):
            gate, up = torch.nn.functional.linear(half(hidden_states[token]), self.gate_up_proj[expert]).chunk(2, -1)
            y = torch.nn.functional.linear(half(self.act_fn(gate) * up), self.down_proj[expert])
            out.index_add_(0, token, y * top_k_weights[token, slot, None])
    return out


def table_gelu(model) -> None:
    """Replace the model's GELU modules by ggml's FP16-table GELU (tanh form; 0 below -10, identity above 10)."""
    import torch

    class TableGelu(torch.nn.Module):
        def forward(self, x):
            half = x.to(torch.float16).to(torch.float32)
            y = torch.nn.functional.gelu(half, approximate="tanh").to(torch.float16).to(x.dtype)
            return torch.where(x >= 10, x, torch.where(x <= -10, torch.zeros_like(x), y))

    replaced = 0
    for module in model.modules():
        for attr in ("act_fn", "act"):
            act = getattr(module, attr, None)
            if isinstance(act, torch.nn.Module) and "gelu" in type(act).__name__.lower():
                setattr(module, attr, TableGelu())
                replaced += 1
    if not replaced:
        raise RuntimeError("no GELU module found to replace")

def sample_std_sparsity(model) -> None:
    """Make Gemma 3n's Gaussian top-k cut at mean + icdf(sparsity) x the sample standard deviation (divided by
    n - 1), as llama.cpp's gemma3n graph does (gaussian_topk in src/models/gemma3n.cpp), not the population one."""
    import types

    import torch

    def topk(self, inputs):
        multiplier = torch.distributions.normal.Normal(0, 1).icdf(torch.tensor(self.activation_sparsity))
        cutoff = inputs.mean(-1, keepdim=True) + inputs.std(-1, keepdim=True, unbiased=True) * multiplier
        return torch.nn.functional.relu(inputs - cutoff)

    for module in model.modules():
        if type(module).__name__ == "Gemma3nTextMLP":
            module._gaussian_topk = types.MethodType(topk, module)


def reference_spread(model, ids: list[int], logits) -> float:
    """max|Δ| between ``logits`` (the model run in float32) and the same model run in float64: how far the reference
    itself moves with its arithmetic's precision, the floor below which llama.cpp's difference cannot be judged."""
    import numpy as np
    import torch

    with torch.no_grad():
        wide = float64_copy(model)(torch.tensor([ids])).logits[0].numpy()
    return float(np.max(np.abs(wide - logits)))


def float64_copy(model):
    """``model`` copied to float64; fused experts run by transformers' eager loop (its grouped matmul, the default,
    takes float32 and half only)."""
    import copy

    wide = copy.deepcopy(model).double()
    if any(type(m).__name__.endswith("Experts") for m in wide.modules()):
        wide.set_experts_implementation("eager")
    return wide


def as_llama_cpp_computes(case: FamilyCase, model) -> bool:
    """Apply to ``model`` what llama.cpp computes differently by design (FP16-table GELU, Gemma 3n's sparsity
    cut); False when nothing differs."""
    if case.gelu_table:
        table_gelu(model)
    if case.sample_std_sparsity:
        sample_std_sparsity(model)
    return case.gelu_table or case.sample_std_sparsity


# Qwen3.5's text and vision configs shrunk for the multimodal classes (whose nested configs are merged, not shrunk).
QWEN35_TINY_TEXT = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
                    "num_key_value_heads": 1, "layer_types": ["linear_attention"] * 3 + ["full_attention"],
                    "max_position_embeddings": 2048}
QWEN35_TINY_VISION = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 256,
                      "num_position_embeddings": 64}


def text_model(name: str, architecture: str) -> dict:
    """The text model of a published multimodal config (its ``text_config``) as a text-only *ForCausalLM config."""
    real = real_config(name)
    return dict(real["text_config"], architectures=[architecture])
# transformers' Ministral3Config defaults = the released models' rope settings (see configs/ministral3_8b).
MINISTRAL3_YARN = {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0,
                   "original_max_position_embeddings": 16384, "beta_fast": 32.0, "beta_slow": 1.0,
                   "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
# mistralai/Ministral-3-3B-Instruct-2512's shape as Mistral3ForConditionalGeneration: the 3B text model (26
# layers, 3072 wide, 32 x 128 query heads over 8 KV heads, tied embeddings) and a Pixtral tower.
MINISTRAL3_3B = {
    "architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3", "image_token_index": 10,
    "multimodal_projector_bias": False, "projector_hidden_act": "gelu", "spatial_merge_size": 2,
    "vision_feature_layer": -1, "tie_word_embeddings": True,
    "text_config": {"model_type": "ministral3", "hidden_size": 3072, "intermediate_size": 9216,
                    "num_hidden_layers": 26, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                    "max_position_embeddings": 262144, "rms_norm_eps": 1e-05, "tie_word_embeddings": True,
                    "vocab_size": 131072, "rope_parameters": MINISTRAL3_YARN},
    "vision_config": {"model_type": "pixtral", "hidden_size": 1024, "intermediate_size": 4096, "patch_size": 14,
                      "image_size": 1540, "num_hidden_layers": 24, "num_attention_heads": 16, "head_dim": 64},
}
# A Pixtral tower of one tiny layer: the converter drops it, transformers needs one to build the model.
TINY_PIXTRAL = {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "patch_size": 14,
                "image_size": 28, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 16}


CASES = [
    FamilyCase("qwen2.5-0.5b", "qwen2_0_5b", "qwen2-trained", {"hidden": 448, "heads": 7}),
    FamilyCase("qwen3-0.6b", "qwen3_0.6b", "qwen2-trained", {}, {"head_dim": 128}),
    # Qwen2.5's documented long-context setting (factor 4 over the 32k original context), with the original
    # context shrunk to 32 so that the YaRN ramp and the interpolation reach the frequencies a 48-token test uses.
    FamilyCase("qwen2.5-yarn", "qwen2_0_5b", "qwen2-trained", {"hidden": 448, "heads": 7},
               {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}}),
    # 16 experts, 4 per token (the real 128 / 8 shrunk), head_dim 128 apart from hidden / heads as in the real model.
    FamilyCase("qwen3-moe-30b-a3b", "qwen3_moe_30b_a3b", "qwen2-trained", {},
               {"head_dim": 128, "num_experts": 16, "num_experts_per_tok": 4, "moe_intermediate_size": 128}),
    # Qwen3.5-0.8B's text model: 3 linear-attention (Gated DeltaNet) layers then 1 full-attention layer, head_dim
    # 256 with rope on a quarter of it in MRoPE sections [11, 11, 10], linear heads of 128. Two value heads per key
    # head (as Qwen3.5-9B and the MoE models; the 0.8B has one), so that the value-head reordering is exercised.
    FamilyCase("qwen3.5-0.8b", text_model("qwen3_5_0.8b", "Qwen3_5ForCausalLM"), "qwen35-trained", {"layers": 4},
               {"head_dim": 256, "layer_types": ["linear_attention"] * 3 + ["full_attention"],
                "linear_num_key_heads": 2, "linear_num_value_heads": 4}),
    # Qwen3.6-35B-A3B's text model (Qwen3.5-MoE): 8 of its 256 experts, 2 used per token, shared expert.
    FamilyCase("qwen3.5-moe-35b-a3b", text_model("qwen3_6_35b_a3b", "Qwen3_5MoeForCausalLM"), "qwen35-trained",
               {"layers": 4},
               {"head_dim": 256, "layer_types": ["linear_attention"] * 3 + ["full_attention"],
                "linear_num_key_heads": 2, "linear_num_value_heads": 4, "num_experts": 8, "num_experts_per_tok": 2,
                "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64}),
    # The same text models under their published multimodal classes (text model under model.language_model.,
    # a vision tower llama.cpp's text model does not use, shrunk to one block).
    FamilyCase("qwen3.5-0.8b-multimodal", "qwen3_5_0.8b", "qwen35-trained", {},
               {"text_config": dict(QWEN35_TINY_TEXT, linear_num_key_heads=2, linear_num_value_heads=4),
                "vision_config": QWEN35_TINY_VISION}),
    FamilyCase("qwen3.5-moe-35b-a3b-multimodal", "qwen3_6_35b_a3b", "qwen35-trained", {},
               {"text_config": dict(QWEN35_TINY_TEXT, linear_num_key_heads=2, linear_num_value_heads=4,
                                    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                                    shared_expert_intermediate_size=64),
                "vision_config": QWEN35_TINY_VISION}),
    # Qwen3-VL-2B's text model under its multimodal class (llama.cpp's qwen3vl: interleaved M-RoPE sections,
    # which for text carry one position on every axis; the DeepStack inputs come only with an image).
    FamilyCase("qwen3-vl-2b-multimodal", "qwen3_vl_2b_instruct", "qwen2-trained", {},
               {"text_config": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
                                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                                "max_position_embeddings": 2048,
                                "rope_scaling": {"mrope_section": [12, 10, 10]}},
                "vision_config": {"depth": 3, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                                  "out_hidden_size": 256, "num_position_embeddings": 64,
                                  "deepstack_visual_indexes": [0, 2]}}),
    FamilyCase("gemma-2b", "gemma_2b", "gemma-trained", gelu_table=True),
    FamilyCase("gemma2-2b", "gemma2_2b", "gemma-trained", {},
               {"head_dim": 128, "query_pre_attn_scalar": 128, "sliding_window": SLIDING_WINDOW},
               gelu_table=True),
    FamilyCase("gemma3-1b", "gemma3_1b_it", "gemma-trained", {"layers": 2},
               {"head_dim": 128, "query_pre_attn_scalar": 128, "sliding_window": SLIDING_WINDOW,
                "sliding_window_pattern": 2},
               gelu_table=True),
    # The 4B's sparse text_config with its default heads (8 query, 4 KV, head_dim 256) and global/local
    # pattern (5 local + 1 global: 7 layers give both kinds and a local one after the global). The logit soft-cap
    # that the multimodal class never applies must not reach the GGUF either.
    FamilyCase("gemma3-4b-multimodal", GEMMA3_4B_IT, "gemma-trained", {},
               {"text_config": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 7,
                                "sliding_window": SLIDING_WINDOW, "final_logit_softcapping": 30.0},
                "vision_config": TINY_SIGLIP, "mm_tokens_per_image": 1},
               gelu_table=True),
    # Gemma 4 E2B's structure on 10 layers: local heads of 32 and global of 64 (proportional rope on a quarter),
    # one KV head, 16-wide per-layer embeddings, the last 5 layers reusing layer 3's (local) and 4's (global) K/V
    # with doubled FFNs, soft-capped logits. The audio tower is left out (transformers builds without it).
    FamilyCase("gemma4-e2b", GEMMA4_E2B_IT, "gemma-trained", {},
               {"text_config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 10,
                                "num_attention_heads": 4, "head_dim": 32, "global_head_dim": 64,
                                "sliding_window": SLIDING_WINDOW, "hidden_size_per_layer_input": 16,
                                "num_kv_shared_layers": 5,
                                "layer_types": (["sliding_attention"] * 4 + ["full_attention"]) * 2},
                "vision_config": TINY_GEMMA4_VISION, "audio_config": None},
               # Attention is unscaled (scaling 1.0): q/k norm gains around head_dim ** -0.25 (unscaled_attention;
               # at gain 1 the reference itself moved 1.2e-3 / 6.4e-3 between float32 and float64 and llama.cpp sat
               # at 2.3e-3 / 7.2e-3). Measured: F32 3.8e-4, F16 1.5e-3, top-1 100%; the reference's own float32 vs
               # float64 spread 5.4e-4 (F32) / 9.9e-4 (F16). That is the FP16-table GELU's floor (MLP and per-layer
               # gates): two float32 evaluations round different GELU inputs to the other half-precision step, and
               # each step moves the next layers' inputs enough to flip more (rms of llama.cpp's and the reference's
               # own differences alike, 5e-5); plain GELU in float32 vs float64: 2.6e-6. The limits leave ~2.5x: the
               # floor's maximum moves with the summation order and the seed (Gemma 3n: 3.7e-4 here, 6.3e-4 with its
               # q/k gains drawn from another seed).
               gelu_table=True, unscaled_attention=True, tolerance={"f32": 1e-3, "f16": 3e-3}),
    # Gemma 4 31B's text model on 6 layers: 2 KV heads on local layers, 1 on the global one, which has no v_proj.
    FamilyCase("gemma4-31b", GEMMA4_31B_TEXT, "gemma-trained", {"hidden": 128, "layers": 6, "heads": 4},
               {"head_dim": 32, "global_head_dim": 64, "num_global_key_value_heads": 1, "intermediate_size": 256,
                "sliding_window": SLIDING_WINDOW,
                "layer_types": ["sliding_attention"] * 5 + ["full_attention"]},
               # q/k norm gains as gemma4-e2b's: F32 2.8e-4 (the reference's float32 vs float64 spread 2.7e-4),
               # F16 8.1e-4, top-1 100% (at gain 1: 6.7e-4 / 3.6e-3, and 47/48 against plain GELU).
               gelu_table=True, unscaled_attention=True, tolerance={"f32": 6e-4, "f16": 2e-3}),
    # Gemma 4 26B-A4B's text model on 6 layers (5 local + 1 global, no v_proj on the global one), the MoE block on
    # every layer: the dense MLP beside 4 routed GEGLU experts, 2 per token (the real 128 / 8), router scale and
    # per-expert scales. The router's projection at std 1 gives logits spread ~1 (at the initializer's 0.02 they
    # spread 0.02 and every chosen expert weighs ~1/2, so a wrong weighting could hide). Routing must not sit on a
    # near-tie that the FP16-table GELU or F16 rounding flips: test_gemma4_moe_routing_is_decisive asserts the
    # smallest top-2 logit gap over all tokens and layers against the reference's own float32-vs-float64 movement
    # of the router logits. That ratio does not depend on the router's scale (the movement scales with it); seed 0
    # gave 3.9 (F32) / 1.9 (F16), seed 3 gives 23 / 5.2 (gap 9.6e-3, movement 4.1e-4 / 1.9e-3), seeds 0-11 ranged
    # 0.4-23 / 0.2-5.2. Measured with seed 3: F32 2.3e-4 (the reference's float32 vs float64 spread 2.5e-4, the
    # GELU floor as gemma4-31b), F16 9.2e-4, top-1 100%.
    FamilyCase("gemma4-26b-a4b", GEMMA4_26B_A4B_TEXT, "gemma-trained", {"hidden": 128, "layers": 6, "heads": 4},
               {"head_dim": 32, "global_head_dim": 64, "num_key_value_heads": 2, "num_global_key_value_heads": 1,
                "intermediate_size": 256, "sliding_window": SLIDING_WINDOW,
                "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
                "num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 64},
               gelu_table=True, unscaled_attention=True, init_std={r"router\.proj\.weight$": 1.0}, seed=3,
               tolerance={"f32": 6e-4, "f16": 2e-3}),
    # The same MoE text model as Hub checkpoints of the 26B-A4B save it: Gemma4ForConditionalGeneration, text under
    # model.language_model, a vision tower (dropped) and no audio. The seed is picked as above for a decisive routing
    # draw (this class initialises its parameters in another order, so seed 3's draw is not the same model).
    FamilyCase("gemma4-26b-a4b-multimodal", GEMMA4_E2B_IT, "gemma-trained", {},
               {"text_config": {"hidden_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4,
                                "num_key_value_heads": 2, "num_global_key_value_heads": 1, "head_dim": 32,
                                "global_head_dim": 64, "attention_k_eq_v": True, "hidden_size_per_layer_input": 0,
                                "num_kv_shared_layers": 0, "use_double_wide_mlp": False, "intermediate_size": 256,
                                "sliding_window": SLIDING_WINDOW,
                                "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
                                "enable_moe_block": True, "num_experts": 4, "top_k_experts": 2,
                                "moe_intermediate_size": 64},
                "vision_config": TINY_GEMMA4_VISION, "audio_config": None},
               gelu_table=True, unscaled_attention=True, init_std={r"router\.proj\.weight$": 1.0}, seed=3,
               tolerance={"f32": 6e-4, "f16": 2e-3}),
    # Gemma 3n E2B's structure on 25 layers: what llama.cpp hard-codes kept (AltUp 4, LAuReL 64, per-layer
    # embeddings of 256, K/V computed by layers 0-19, sparsity 0.95 on 0-9), the last 5 layers KV-shared (local
    # ones reading layer 18, the global one layer 19); per-layer embeddings cover only the first 1024 tokens.
    FamilyCase("gemma3n-e2b", GEMMA3N_E2B_TEXT, "gemma-trained", {"hidden": 64, "layers": 25, "heads": 2},
               {"head_dim": 32, "intermediate_size": [512] * 25, "sliding_window": SLIDING_WINDOW,
                "num_kv_shared_layers": 5, "vocab_size_per_layer_input": 1024,
                "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 15,
                "layer_types": ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(25)]},
               # Unscaled attention, q/k norm gains around head_dim ** -0.25 (at gain 1 transformers itself moved
               # 1.4e-2 / 4.4e-2 between float32 and float64, top-1 47/48 / 45/48, and llama.cpp sat at 6.0e-3 /
               # 6.3e-2). Measured: F32 3.7e-4, F16 2.0e-3, top-1 100%; the reference's own float32 vs float64
               # spread 5.8e-4 / 1.7e-3 (the FP16-table GELU's floor, as gemma4-e2b). Against plain transformers
               # (population std in the sparsity cut, which moves the cut of the sparse layers) F32 8.6e-3.
               gelu_table=True, unscaled_attention=True, sample_std_sparsity=True,
               tolerance={"f32": 1e-3, "f16": 4e-3, "plain_f32": 1.5e-2}),
    # head_dim 96 as the real model, so the 48 real LongRoPE factors fit unchanged. The original context is
    # shrunk with the same ratio (32x): above the sequence, HF and llama.cpp both use the short factors...
    FamilyCase("phi3.5-longrope-short", "phi-3_5", "phi3-mini", {"hidden": 384, "heads": 4,
                                                                 "max_positions": 32768},
               {"original_max_position_embeddings": 1024}),
    # ... below it (sequence 48 > 32, llama.cpp context 64 > 32), both use the long factors.
    FamilyCase("phi3.5-longrope-long", "phi-3_5", "phi3-mini", {"hidden": 384, "heads": 4, "max_positions": 1024},
               {"original_max_position_embeddings": 32}),
    FamilyCase("stablelm-2-1.6b", "stablelm-2-zephyr-1_6b", "phi2"),
    # GPT-2's activations stay small enough here that the table's rounding is below 1e-4 on the logits.
    FamilyCase("gpt2", "gpt2", "gpt2"),
    FamilyCase("smollm-135m", "smollm_135m", "smollm-trained", {"hidden": 384, "heads": 6}),
    FamilyCase("smollm2-135m", "smollm2_135m", "smollm-trained", {"hidden": 384, "heads": 6}),
    FamilyCase("tinyllama-1.1b", "tinyllama_1b_chat_v1.0", "tinyllama", {"heads": 8}),
    # 8 layers keep two NoPE layers (3 and 7: every 4th, as llama.cpp hard-codes and the real flags say).
    # The real special ids (pad 128004, eos 128012) lie outside the small trained vocabulary: unset here.
    FamilyCase("smollm3-3b", "smollm3_3b", "smollm-trained", {"layers": 8},
               {"pad_token_id": None, "eos_token_id": None}),
    # The YaRN original context (16384 in the real model) shrunk to 16 positions, so that within the 48-token
    # sequence both YaRN's frequencies and the Llama-4 query temperature (floor(pos / 16)) take effect.
    FamilyCase("ministral3-8b", "ministral3_8b", "smollm-trained", {"max_positions": 256},
               {"rope_parameters": {**MINISTRAL3_YARN, "original_max_position_embeddings": 16}}),
    FamilyCase("ministral3-3b-multimodal", MINISTRAL3_3B, "smollm-trained", {},
               {"text_config": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 128,
                                "max_position_embeddings": 256,
                                "rope_parameters": {**MINISTRAL3_YARN, "original_max_position_embeddings": 16}},
                "vision_config": TINY_PIXTRAL}),
    # Phi-4-mini: partial rotary (96 of 128 dims, the 48 real LongRoPE factors), tied embeddings, GQA 3:1; its
    # real o200k vocabulary (200064) makes this the slowest case.
    FamilyCase("phi4-mini", "phi4_mini_instruct", "phi4-mini", {"hidden": 384, "heads": 3, "max_positions": 1024},
               {"original_max_position_embeddings": 32}),
    # LFM2 v1 config (full_attn_idxs): 6 layers keep attention at 2 and 5, convolutions around them; block_ff_dim
    # 700 -> 2/3 = 466 -> rounded up to 512 by the size rule (block_multiple_of 256 as the real model).
    FamilyCase("lfm2-1.2b", "lfm2_1.2b", "qwen2-trained", {"layers": 6, "heads": 8}, {"block_ff_dim": 700}),
    FamilyCase("olmo2-7b", "olmo2_7b", "qwen2-trained"),
    FamilyCase("olmo2-7b-tied", "olmo2_7b", "qwen2-trained", {}, {"tie_word_embeddings": True}),
    # Granite 3.3 2B's multipliers as released: embeddings x12, residual x0.22, attention scale 1/64, logits / 8.
    FamilyCase("granite-3.3-2b", "granite_3.3_2b", "smollm-trained", {"heads": 8}),
    # Granite 4.0-H-Tiny's first 6 layers (5 Mamba2, 1 attention, no rope), its 64 experts (6 used) and shared MLP,
    # multipliers and Mamba2 geometry (d_state 128, head 64, expand 2, conv 4); 8 Mamba heads at hidden 256.
    # Weights at std 0.1 (Granite 4's muP initializer_range): at 0.02 the logits / 6 are too flat to show much.
    FamilyCase("granite-4.0-h-tiny", "granite_4.0_h_tiny", "qwen2-trained", {"layers": 6},
               {"layer_types": real_config("granite_4.0_h_tiny")["layer_types"][:6], "mamba_n_heads": 8,
                "intermediate_size": 64, "shared_intermediate_size": 128, "initializer_range": 0.1}),
    # Granite 4.0-Micro's form: GraniteMoeHybrid without Mamba layers or experts, rope: llama.cpp's granite.
    FamilyCase("granite-4.0-micro", "granite_4.0_h_tiny", "qwen2-trained", {"layers": 2},
               {"layer_types": ["attention", "attention"], "num_local_experts": 0, "num_experts_per_tok": 0,
                "position_embedding_type": "rope", "shared_intermediate_size": 384, "mamba_n_heads": 8,
                "initializer_range": 0.1}),
    # The dense form (as Granite 4.0-H-1B: no experts, the shared MLP is the layer's MLP), here with rope.
    FamilyCase("granite-4.0-dense-rope", "granite_4.0_h_tiny", "qwen2-trained", {"layers": 2},
               {"layer_types": ["mamba", "attention"], "num_local_experts": 0, "num_experts_per_tok": 0,
                "position_embedding_type": "rope", "shared_intermediate_size": 384, "mamba_n_heads": 8,
                "initializer_range": 0.1}),
    # Granite MoE (llama.cpp's granitemoe): Granite 3.3's multipliers, rope and tied embeddings with the expert
    # layout of granite-3.1-3b-a800m (every layer routed, softmax over the chosen experts), 10 experts, 2 per token.
    FamilyCase("granite-3.1-moe", "granite_3.3_2b", "smollm-trained", {"heads": 8},
               {"architectures": ["GraniteMoeForCausalLM"], "model_type": "granitemoe", "num_local_experts": 10,
                "num_experts_per_tok": 2, "intermediate_size": 128}),
    # The same with a shared expert beside the routed ones (GraniteMoeShared).
    FamilyCase("granite-moe-shared", "granite_3.3_2b", "smollm-trained", {"heads": 8},
               {"architectures": ["GraniteMoeSharedForCausalLM"], "model_type": "granitemoeshared",
                "num_local_experts": 10, "num_experts_per_tok": 2, "intermediate_size": 128,
                "shared_intermediate_size": 256}),
    # Granite 4's MoE layers without Mamba (attention only, with rope): llama.cpp runs it as granitemoe too.
    FamilyCase("granite-4.0-moe-attention", "granite_4.0_h_tiny", "qwen2-trained", {"layers": 2},
               {"layer_types": ["attention", "attention"], "position_embedding_type": "rope",
                "intermediate_size": 64, "shared_intermediate_size": 128, "mamba_n_heads": 8,
                "initializer_range": 0.1}),
    # 4 layers: 2 dense (conv, conv) then MoE on an attention and a conv layer; the real 32 experts, top 4.
    FamilyCase("lfm2-8b-a1b", "lfm2_8b_a1b", "qwen2-trained", {"layers": 4, "heads": 8},
               {"layer_types": real_config("lfm2_8b_a1b")["layer_types"][:4], "moe_intermediate_size": 64}),
    # Without the selection bias: llama.cpp requires one, so zeros are written (the same routing).
    FamilyCase("lfm2-moe-no-expert-bias", "lfm2_8b_a1b", "qwen2-trained", {"layers": 4, "heads": 8},
               {"layer_types": real_config("lfm2_8b_a1b")["layer_types"][:4], "moe_intermediate_size": 64,
                "use_expert_bias": False}),
]


def _round_up(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def _merged(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def case_config(case: FamilyCase, tokenizer_folder: Path) -> dict:
    """The real config shrunk; vocab_size = the tokenizer's, padded up like the real models pad theirs."""
    real = real_config(case.config) if isinstance(case.config, str) else case.config
    vocab_size = _round_up(tokenizer_size(tokenizer_folder))
    if "text_config" in real:
        config = _merged(real, case.overrides)
        config["text_config"]["vocab_size"] = vocab_size
        if "vocab_size_per_layer_input" in config["text_config"]:  # per-layer embeddings: one row per token too
            config["text_config"]["vocab_size_per_layer_input"] = vocab_size
        config.pop("transformers_version", None)
        return config
    if real["model_type"] == "gpt2":  # GPT-2 names its sizes n_*; keep the real vocabulary size (50257)
        config = {k: v for k, v in real.items() if k != "transformers_version"}
        config.update(n_embd=256, n_layer=2, n_head=4, n_positions=1024, n_ctx=1024,
                      vocab_size=tokenizer_size(tokenizer_folder))
    else:
        config = shrink(real, vocab_size=vocab_size, **case.shrink_args)
    config.update(case.overrides)
    return config


def prompt_ids(case: FamilyCase, folder: Path) -> list[int]:
    """SEQUENCE_LENGTH token ids of a real text, by the reference tokenizer (with BOS where the family adds it)."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = (TEXTS / "war-and-peace.txt").read_text(encoding="utf-8")[5000:6000]
    bos = TOKENIZER_SPECS[case.tokenizer].bos
    ids = ([tok.token_to_id(bos)] if bos else []) + tok.encode(text, add_special_tokens=False).ids
    return ids[:SEQUENCE_LENGTH]
