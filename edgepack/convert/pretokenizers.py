"""Which llama.cpp pre-tokenizer reproduces a tokenizer.json's pre_tokenizer, worked out from its structure.

llama.cpp implements a fixed set of pre-tokenizers, each a list of split regexes (src/llama-vocab.cpp). A
byte-level BPE tokenizer.json states its own: a ``Split`` step with a regex, a ``Digits`` step, or
``ByteLevel(use_regex=true)`` (which means GPT-2's regex). We describe the steps as a short signature and
look it up in ``KNOWN``; anything else is an error that names what was found, so that a model is never
converted with a pre-tokenizer that silently splits text differently.
"""

from __future__ import annotations

from ..errors import TokenizerError

GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# Qwen3.5's: letters may carry combining marks (\p{M}) inside a word.
QWEN35_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}"
                "| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# OpenAI's o200k_base (GPT-4o; Phi-4-mini): case-aware letter runs with contractions, digits in threes.
O200K_REGEX = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
               "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
               "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# Mistral's tekken (Mistral Nemo, Pixtral, Ministral 3...): o200k's case-aware letter runs without contractions, single
# digits.
TEKKEN_REGEX = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
                "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}"
                "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

# signature (tuple of step descriptions) -> llama.cpp pre-tokenizer name (tokenizer.ggml.pre).
KNOWN: dict[tuple[str, ...], str] = {
    # GPT-2, Phi-2 (CodeGen), StableLM-3B, OLMo: ByteLevel with its built-in GPT-2 regex.
    ("bytelevel-regex",): "gpt-2",
    # Llama-3.x (and Llama-3-derived models): split on the Llama-3 regex, then bytes.
    (f"split:{LLAMA3_REGEX}", "bytelevel"): "llama-bpe",
    # Qwen2/2.5/3, StableLM-2: single digits instead of 1-3.
    (f"split:{QWEN2_REGEX}", "bytelevel"): "qwen2",
    # Qwen3.5 / Qwen3.6.
    (f"split:{QWEN35_REGEX}", "bytelevel"): "qwen35",
    # o200k_base (Phi-4-mini; transformers' TikTokenConverter also sets ignore_merges). llama.cpp has two
    # translations of this regex (src/llama-vocab.cpp): "gpt-4o" leaves combining marks (\p{M}) out of its
    # letter classes and merges BPE pieces that are whole vocabulary entries, so Devanagari and Thai split
    # differently (8 of the 106 test texts); "granite-embed-multi-97m" keeps the marks and uses ignore_merges,
    # as HF does: ids equal on all of them. Runtimes older than that name can be given --pre-tokenizer gpt-4o.
    (f"split:{O200K_REGEX}", "bytelevel"): "granite-embed-multi-97m",
    # tekken (transformers' MistralConverter also sets ignore_merges). llama.cpp's own "tekken" translation leaves
    # combining marks out of its letter classes, so Devanagari and Thai split differently (8 of the 106 test texts).
    # No llama.cpp name is this regex exactly; "granite-embed-multi-97m" (o200k's regex with the marks kept, and
    # ignore_merges) gives equal ids on all 106 and on War and Peace but for 1 of 11718 paragraphs: it also splits
    # off a contraction ('s 't 're 've 'm 'll 'd) that follows letters and runs into more letters (O'Reilly,
    # Ecka'tshausen), where tekken starts a word at the apostrophe. Digits are equal: tekken's vocabulary has no
    # multi-digit tokens, so o200k's 1-3 digit runs end up as single digits.
    (f"split:{TEKKEN_REGEX}", "bytelevel"): "granite-embed-multi-97m",
    # Falcon (7B/40B/180B): runs of punctuation, then GPT-2's regex, then digits in threes. llama.cpp's "falcon" splits
    # on the same three: HF's punctuation (Rust's ASCII punctuation or Unicode P*) is its \p{P} plus $+<=>^~|`. Ids
    # equal on all 106 test texts and 4000 paragraphs of War and Peace.
    ("punctuation-contiguous", "bytelevel-regex", "digits", "split:[0-9][0-9][0-9]"): "falcon",
    # SmolLM/SmolLM2, StarCoder: individual digits, then the GPT-2 regex.
    ("digits-individual", "bytelevel-regex"): "smollm",
}

# Signatures whose llama.cpp name is the nearest, not an exact, translation: what the user is told.
APPROXIMATE = {
    (f"split:{TEKKEN_REGEX}", "bytelevel"): "tekken's split approximated: a contraction after letters that runs into "
                                            "more letters (O'Reilly) tokenizes differently; see README",
}

# Names a user may pass to --pre-tokenizer: everything edgepack knows to be a llama.cpp BPE pre-tokenizer.
LLAMA_CPP_PRE_TOKENIZERS = sorted(set(KNOWN.values()) | {"default", "starcoder", "stablelm2", "phi-2", "olmo",
                                                         "falcon", "mpt", "refact", "command-r", "deepseek-llm",
                                                         "deepseek-coder", "gpt-4o", "llama4", "tekken",
                                                         "granite-embed-multi-97m"})


def _steps(pre_tokenizer: dict | None) -> list[dict]:
    if not pre_tokenizer:
        return []
    if pre_tokenizer.get("type") == "Sequence":
        out: list[dict] = []
        for step in pre_tokenizer.get("pretokenizers", []):
            out.extend(_steps(step))
        return out
    return [pre_tokenizer]


def _describe(step: dict) -> str:
    kind = step.get("type")
    if kind == "ByteLevel":
        if step.get("add_prefix_space"):
            return "bytelevel-add-prefix-space"
        return "bytelevel-regex" if step.get("use_regex", True) else "bytelevel"
    if kind == "Split":
        pattern = step.get("pattern", {})
        regex = pattern.get("Regex", pattern.get("String"))
        if step.get("invert") or step.get("behavior") not in ("Isolated", "Removed", None):
            return f"split-{step.get('behavior')}{'-inverted' if step.get('invert') else ''}:{regex}"
        return f"split:{regex}"
    if kind == "Digits":
        return "digits-individual" if step.get("individual_digits") else "digits"
    if kind == "Punctuation":  # "contiguous" keeps a run of punctuation together, "isolated" splits each mark
        return f"punctuation-{str(step.get('behavior', 'Isolated')).lower()}"
    return str(kind)


def signature(tokenizer_json: dict) -> tuple[str, ...]:
    """The tokenizer.json's pre-tokenization, described step by step."""
    return tuple(_describe(s) for s in _steps(tokenizer_json.get("pre_tokenizer")))


def approximation(tokenizer_json: dict, override: str | None = None) -> str | None:
    """What differs from the tokenizer when its pre-tokenizer is written as its nearest llama.cpp name; None when
    the name reproduces it exactly (or the user chose the name)."""
    return None if override else APPROXIMATE.get(signature(tokenizer_json))


def detect_pre_tokenizer(tokenizer_json: dict, override: str | None = None) -> str:
    """Return llama.cpp's name for this tokenizer's pre-tokenizer, or raise TokenizerError naming it."""
    if override:
        return override
    found = signature(tokenizer_json)
    name = KNOWN.get(found)
    if name is None:
        shown = " + ".join(found) if found else "none"
        raise TokenizerError(
            f"tokenizer.json pre-tokenizer not recognised: {shown}",
            "if you know llama.cpp's equivalent, pass --pre-tokenizer NAME (known: "
            + ", ".join(LLAMA_CPP_PRE_TOKENIZERS) + ")")
    return name
