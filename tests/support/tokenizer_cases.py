"""Tokenizer folders the tests build from the real fixture files, each with its source of truth.

The truth is the tokenizer the model was trained with: ``sentencepiece`` itself for a tokenizer.model, HF
``tokenizers`` for a tokenizer.json-only model. The Llama-3 tokenizer.json is rebuilt from its tiktoken file
with transformers' TikTokenConverter (pre-tokenizer regex and the 256 special tokens as Meta published them).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .tinymodels import TEXTS, TOKENIZERS

LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])

TRICKY_TEXTS = [
    "Hello world", " Hello world", "  leading spaces", "trailing spaces   ", "runs    of     spaces",
    "\n", "line one\nline two\n\n\nafter blank lines", "\ttabs\tand\t\ttabs", " \n \t mixed \r\n endings ",
    "def f(x):\n    return x ** 2  # square\n", "if (a && b) { c->d[0] = 'e'; }", "12345678901234567890 3.14159",
    "emoji 😀🎉👍🏽 and ZWJ 👩‍👩‍👧", "日本語のテキストと中文文本", "مرحبا بالعالم", "Ünïcödé ñ ß ø å",
    "<s> looks special </s>", "[INST] not a control token [/INST]", "<|endoftext|><|im_start|>", "a",
    "I'm sure they're fine, aren't we? We'll see; I'd go.", "HTTP://EXAMPLE.COM/path?q=1&r=2",
    "if (a&&b||!c) { y = a->b[3] >>",
]


def conformance_texts() -> list[str]:
    inputs = json.loads((TEXTS / "swift-transformers/MultilingualConformance/inputs.json").read_text())
    return [entry["text"] for entry in inputs]


def all_texts() -> list[str]:
    return conformance_texts() + TRICKY_TEXTS


@dataclass(frozen=True)
class TokenizerCase:
    name: str
    vocab_size: int
    truth: str  # "sentencepiece", "tokenizers", or "transformers" (for a folder without tokenizer.json)

    def build(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        BUILDERS[self.name](folder)
        return folder

    def truth_encoder(self, folder: Path):
        """A function text -> ids, from the tokenizer the model was trained with (no BOS/EOS)."""
        if self.truth == "sentencepiece":
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
            return lambda text: sp.encode(text)
        if self.truth == "transformers":  # a folder without tokenizer.json: what transformers builds from it
            import transformers

            auto = transformers.AutoTokenizer.from_pretrained(folder)
            return lambda text: auto.encode(text, add_special_tokens=False)
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        return lambda text: tok.encode(text, add_special_tokens=False).ids


def _copy(src: Path, dst: Path) -> None:
    shutil.copy(src, dst)


def _llama2_spm(folder: Path) -> None:
    _copy(TOKENIZERS / "llama2-sentencepiece-llama2c/tokenizer.model", folder / "tokenizer.model")


def _tinyllama_spm(folder: Path) -> None:
    src = TOKENIZERS / "tinyllama-chat-resaved-Dheena731"
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja"):
        _copy(src / name, folder / name)


def _tinyllama_json(folder: Path) -> None:
    _tinyllama_spm(folder)
    (folder / "tokenizer.model").unlink()


def _llama2_json(folder: Path) -> None:
    src = TOKENIZERS / "llama2-swift-transformers"
    _copy(src / "llama_tokenizer.json", folder / "tokenizer.json")
    _copy(src / "llama_tokenizer_config.json", folder / "tokenizer_config.json")


def _phi3_json(folder: Path) -> None:
    src = TOKENIZERS / "phi3-mini-ortx"
    _copy(src / "tokenizer.json", folder / "tokenizer.json")
    _copy(src / "tokenizer_config.json", folder / "tokenizer_config.json")


def _falcon_json(folder: Path) -> None:
    _copy(TOKENIZERS / "falcon-ortx/tokenizer.json", folder / "tokenizer.json")


def _mistral(version: str):
    files = {"v1": "tokenizer.model.v1", "v3": "mistral_instruct_tokenizer_240323.model.v3"}

    def build(folder: Path) -> None:
        _copy(TOKENIZERS / "mistral-sentencepiece-mistral-common" / files[version], folder / "tokenizer.model")
    return build


def _llama3_json(folder: Path) -> None:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = TikTokenConverter(vocab_file=str(TOKENIZERS / "llama3-tiktoken/tokenizer.model"),
                            extra_special_tokens=LLAMA3_SPECIALS).converted()
    data = json.loads(tok.to_str())
    # As in Meta's published tokenizer.json: <|begin_of_text|> is prepended by the post-processor.
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                 "tokens": ["<|begin_of_text|>"]}},
    }
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                         "{{ m['content'] }}<|eot_id|>{% endfor %}"}))


# Phi-4-mini's own tokens (its added_tokens.json), after o200k_base's <|endoftext|> 199999 / <|endofprompt|> 200018.
PHI4_MINI_SPECIALS = {"<|assistant|>": 200019, "<|end|>": 200020, "<|user|>": 200021, "<|system|>": 200022,
                      "<|tool|>": 200023, "<|/tool|>": 200024, "<|tool_call|>": 200025, "<|/tool_call|>": 200026,
                      "<|tool_response|>": 200027, "<|tag|>": 200028}


def o200k_definition() -> dict:
    """tiktoken's own o200k_base definition (split pattern, ranks, special tokens), with the ranks read from the
    fixture (checked against the hash tiktoken publishes) instead of downloaded."""
    from unittest import mock

    import tiktoken_ext.openai_public as openai_public
    from tiktoken.load import load_tiktoken_bpe

    local = str(TOKENIZERS / "o200k-tiktoken-rs/o200k_base.tiktoken")
    with mock.patch.object(openai_public, "load_tiktoken_bpe",
                           lambda _url, expected_hash: load_tiktoken_bpe(local, expected_hash=expected_hash)):
        return openai_public.o200k_base()


def phi4_mini_json(folder: Path) -> None:
    """Phi-4-mini's tokenizer.json as transformers builds it from tiktoken's o200k_base (TikTokenConverter: the
    o200k split regex, ByteLevel, ignore_merges) plus o200k's and Phi-4-mini's special tokens at their ids.
    The ids between them that neither names (199998, 200000-200017) hold placeholders: no test text has them."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    o200k = o200k_definition()
    tok = TikTokenConverter(vocab_file=str(TOKENIZERS / "o200k-tiktoken-rs/o200k_base.tiktoken"),
                            pattern=o200k["pat_str"]).converted()
    data = json.loads(tok.to_str())
    named = {i: t for t, i in {**o200k["special_tokens"], **PHI4_MINI_SPECIALS}.items()}
    first = len(o200k["mergeable_ranks"])  # HF tokenizers numbers added tokens on from the vocabulary's end
    data["added_tokens"] = [{"id": i, "content": named.get(i, f"<|placeholder_{i}|>"), "single_word": False,
                             "lstrip": False, "rstrip": False, "normalized": False, "special": True}
                            for i in range(first, max(named) + 1)]
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "add_bos_token": False, "tokenizer_class": "GPT2Tokenizer",
        "chat_template": "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"}))


def _smollm3_json(folder: Path) -> None:
    """SmolLM3's tokenizer: Llama-3's tiktoken BPE with SmolLM3's 256 added tokens (its tokenizer_config.json,
    some of them not special: <think>, <tool_call>...) and no BOS."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    config = json.loads((TOKENIZERS / "smollm3-ortx-configonly/tokenizer_config.json").read_text())
    tok = TikTokenConverter(vocab_file=str(TOKENIZERS / "llama3-tiktoken/tokenizer.model")).converted()
    data = json.loads(tok.to_str())
    data["added_tokens"] = [{"id": int(i), **{k: t[k] for k in ("content", "single_word", "lstrip", "rstrip",
                                                                 "normalized", "special")}}
                            for i, t in sorted(config["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))]
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    _copy(TOKENIZERS / "smollm3-ortx-configonly/tokenizer_config.json", folder / "tokenizer_config.json")


# The special tokens mistral-common gives a tekken file that lists none (Tekkenizer.DEPRECATED_SPECIAL_TOKENS, ranks
# 0-19); the rest of the 1000 slots are <SPECIAL_i> fillers.
TEKKEN_OLD_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                       "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                       "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]
TEKKEN_FILE = TOKENIZERS / "tekken-mistral-common/tekken_240718.json"


def tekken_json(folder: Path) -> None:
    """A tekken model's tokenizer.json as transformers converts tekken.json (its MistralConverter: the tekken split
    regex, ByteLevel, ignore_merges, the 1000 special tokens first). This file predates tekken's special_tokens list;
    it is given mistral-common's list for such files, as the newer files carry it."""
    from transformers.integrations.mistral.tokenizer import MistralConverter

    raw = json.loads(TEKKEN_FILE.read_text(encoding="utf-8"))
    raw["special_tokens"] = [{"rank": i, "token_str": t, "is_control": True} for i, t in enumerate(TEKKEN_OLD_SPECIALS)]
    with_specials = folder / "tekken.json"
    with_specials.write_text(json.dumps(raw), encoding="utf-8")
    MistralConverter(str(with_specials)).converted().save(str(folder / "tokenizer.json"))
    with_specials.unlink()
    # Mistral's tokenizer configs: <s> added in front, </s> not.
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True,
        "add_eos_token": False, "tokenizer_class": "TokenizersBackend"}))


def tekken_encoder():
    """text -> ids as mistral-common's Tekkenizer encodes them: tiktoken over the file's ranks and regex, ids shifted
    past the special tokens; special-token strings in text are text."""
    import base64

    import tiktoken

    raw = json.loads(TEKKEN_FILE.read_text(encoding="utf-8"))
    config = raw["config"]
    n_special = config["default_num_special_tokens"]
    ranks = {base64.b64decode(t["token_bytes"]): rank
             for rank, t in enumerate(raw["vocab"][:config["default_vocab_size"] - n_special])}
    encoding = tiktoken.Encoding("tekken", pat_str=config["pattern"], mergeable_ranks=ranks, special_tokens={})
    return lambda text: [i + n_special for i in encoding.encode(text, disallowed_special=())]


def _qwen3_json(folder: Path) -> None:
    """Qwen2/2.5/3's byte-level BPE: tokenizer.json built by transformers from the real vocab.json + merges.txt
    (as Qwen's own tokenizer.json was: NFC, the Qwen2 split regex, ByteLevel without regex)."""
    import transformers

    transformers.AutoTokenizer.from_pretrained(TOKENIZERS / "qwen3-sd-scripts").save_pretrained(folder)


def _qwen3_vocab_merges(folder: Path) -> None:
    """The same tokenizer as the files are: vocab.json + merges.txt + tokenizer_config.json, no tokenizer.json."""
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        _copy(TOKENIZERS / "qwen3-sd-scripts" / name, folder / name)


BUILDERS = {
    "llama2-spm": _llama2_spm,
    "tinyllama-spm": _tinyllama_spm,
    "tinyllama-json": _tinyllama_json,
    "llama2-json": _llama2_json,
    "phi3-json": _phi3_json,
    "mistral-v1-spm": _mistral("v1"),
    "mistral-v3-spm": _mistral("v3"),
    "llama3-json": _llama3_json,
    "qwen3-json": _qwen3_json,
    "qwen3-vocab-merges": _qwen3_vocab_merges,
    "phi4-mini-json": phi4_mini_json,
    "smollm3-json": _smollm3_json,
    "tekken-json": tekken_json,
    "falcon-json": _falcon_json,
}

CASES = [
    TokenizerCase("llama2-spm", 32000, "sentencepiece"),
    TokenizerCase("tinyllama-spm", 32000, "sentencepiece"),
    TokenizerCase("tinyllama-json", 32000, "tokenizers"),
    TokenizerCase("llama2-json", 32000, "tokenizers"),
    TokenizerCase("phi3-json", 32064, "tokenizers"),
    TokenizerCase("mistral-v1-spm", 32000, "sentencepiece"),
    TokenizerCase("mistral-v3-spm", 32768, "sentencepiece"),
    TokenizerCase("llama3-json", 128256, "tokenizers"),
    TokenizerCase("qwen3-json", 151936, "tokenizers"),
    TokenizerCase("qwen3-vocab-merges", 151936, "transformers"),
    TokenizerCase("phi4-mini-json", 200064, "tokenizers"),
    TokenizerCase("smollm3-json", 128256, "tokenizers"),
    TokenizerCase("tekken-json", 131072, "tokenizers"),
    TokenizerCase("falcon-json", 65024, "tokenizers"),
]
