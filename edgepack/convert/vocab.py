"""Tokenizers to GGUF vocabularies that llama.cpp tokenizes exactly like the original.

Three sources, in the order llama.cpp's own converter prefers them:

* ``tokenizer.model`` (SentencePiece BPE): the model the checkpoint was trained with. Pieces, scores and
  piece types are read from its protobuf; tokens added on top (tokenizer.json / tokenizer_config.json)
  follow. GGUF tokenizer model ``llama``.
* ``tokenizer.json`` BPE with ``byte_fallback`` (Llama-2 style, no tokenizer.model): the same SPM-style
  vocabulary, with scores taken from the merge ranks (a lower rank merges first in HF; in llama.cpp a
  higher score does). GGUF tokenizer model ``llama``.
* ``tokenizer.json`` byte-level BPE (Llama-3, GPT-2, Qwen2, SmolLM...): tokens + merges, and the
  pre-tokenizer worked out from the file (see ``pretokenizers``). GGUF tokenizer model ``gpt2``.
* Gemma 4's ``tokenizer.json`` (asked for by its family, ``ArchSpec.tokenizer_model``): the SentencePiece-style
  vocabulary with its merges, run by llama.cpp as BPE. GGUF tokenizer model ``gemma4``.

Special token ids, add_bos/add_eos and the chat template come from gguf-py's ``SpecialVocab``, which reads
tokenizer_config.json, the tokenizer.json post-processor (transformers 5.x no longer writes add_bos_token)
and config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf

from ..errors import TokenizerError
from ..fileio import parse_json
from ..limits import MAX_VOCAB
from .pretokenizers import QWEN2_REGEX, approximation, detect_pre_tokenizer

TT = gguf.TokenType
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json")

# sentencepiece_model.proto's ModelProto.TrainerSpec.ModelType
SPM_UNIGRAM, SPM_BPE = 1, 2


@dataclass
class Vocab:
    """A tokenizer in GGUF terms, ready to be written."""

    model: str  # tokenizer.ggml.model: "llama" (SentencePiece-style) or "gpt2" (byte-level BPE)
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    pre: str | None = None  # tokenizer.ggml.pre, byte-level BPE only
    add_space_prefix: bool | None = None
    special: gguf.SpecialVocab | None = None
    source: str = ""  # which file the vocabulary came from (for messages and provenance)
    source_files: list[Path] = field(default_factory=list)

    def add_to_gguf(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.token_types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.special is not None:
            self.special.add_to_gguf(writer, quiet=True)


def load_vocab(folder: Path, n_vocab: int | None, pre_override: str | None = None,
               tokenizer_model: str | None = None) -> Vocab:
    """Build the vocabulary for the model in ``folder``; ``n_vocab`` is config.json's vocab_size;
    ``tokenizer_model`` the GGUF tokenizer model the architecture needs, when the files do not decide it."""
    spm_file, json_file = folder / "tokenizer.model", folder / "tokenizer.json"
    tokenizer_json = _read_tokenizer_json(json_file) if json_file.is_file() else None
    if tokenizer_model == "gemma4":
        vocab = _gemma4_vocab(tokenizer_json, folder)
    elif spm_file.is_file() and _is_sentencepiece(spm_file):
        vocab = _sentencepiece_vocab(spm_file, tokenizer_json, folder)
    elif tokenizer_json is not None:
        model = tokenizer_json.get("model", {})
        if model.get("type") != "BPE":
            raise TokenizerError(f"tokenizer.json uses a {model.get('type')} model, which edgepack does not convert",
                                 "supported: SentencePiece tokenizer.model, BPE tokenizer.json")
        if model.get("byte_fallback"):
            vocab = _byte_fallback_bpe_vocab(tokenizer_json, folder)
        else:
            vocab = _byte_level_bpe_vocab(tokenizer_json, folder, pre_override)
    elif (gpt2_layout := _gpt2_layout_json(folder)) is not None:
        vocab = _byte_level_bpe_vocab(gpt2_layout, folder, pre_override)
        vocab.source = vocab.source.replace("tokenizer.json", "vocab.json + merges.txt")
    elif spm_file.is_file():
        raise TokenizerError("tokenizer.model is not a SentencePiece model (a tiktoken file?)",
                             "add the model's tokenizer.json (transformers can build it from tiktoken files)")
    else:
        raise TokenizerError(f"no tokenizer files in {folder} (tokenizer.model, tokenizer.json, or vocab.json and "
                             "merges.txt)",
                             "download the tokenizer files with the model, or pass --vocab-source DIR")

    _pad_to(vocab, n_vocab)
    vocab.special = _special_vocab(folder, vocab)
    vocab.source_files = [folder / f for f in TOKENIZER_FILES if (folder / f).is_file()]
    return vocab


def _read_tokenizer_json(path: Path) -> dict:
    data = parse_json(path.read_bytes(), "tokenizer.json", TokenizerError, "re-download tokenizer.json")
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError("tokenizer.json has no 'model' section", "re-download tokenizer.json")
    _check_tokenizer_json(data)
    return data


def _bad_structure(where: str, expected: str) -> TokenizerError:
    return TokenizerError(f"tokenizer.json: {where} is not {expected}", "the file is damaged: re-download it")


def _check_pipeline_step(step, where: str, children: str) -> None:
    """A normalizer / pre_tokenizer / decoder / post_processor: null, or an object with a string 'type' whose
    Sequence children are the same."""
    if step is None:
        return
    if not isinstance(step, dict) or not isinstance(step.get("type", ""), str):
        raise _bad_structure(where, "an object with a 'type'")
    if step.get("type") == "Sequence":
        items = step.get(children)
        if not isinstance(items, list):
            raise _bad_structure(f"{where}.{children}", "a list")
        for i, item in enumerate(items):
            _check_pipeline_step(item, f"{where}.{children}[{i}]", children)
    pattern = step.get("pattern")
    if pattern is not None and not (isinstance(pattern, dict) and all(isinstance(v, str) for v in pattern.values())):
        raise _bad_structure(f"{where}.pattern", "an object holding a String or Regex")


def _check_tokenizer_json(data: dict) -> None:
    """The structure the code below reads, checked once at the boundary (types, not contents)."""
    model = data["model"]
    if not isinstance(model.get("type", "BPE"), str):
        raise _bad_structure("model.type", "a string")
    vocab = model.get("vocab")
    if model.get("type") == "Unigram":
        if not isinstance(vocab, list):
            raise _bad_structure("model.vocab", "a list of [piece, score]")
    elif not isinstance(vocab, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                for v in vocab.values()):
        raise _bad_structure("model.vocab", "an object of token -> integer id")
    if not isinstance(model.get("merges") or [], list):
        raise _bad_structure("model.merges", "a list")
    if not isinstance(data.get("added_tokens") or [], list):
        raise _bad_structure("added_tokens", "a list")
    for key, children in (("normalizer", "normalizers"), ("pre_tokenizer", "pretokenizers"),
                          ("decoder", "decoders"), ("post_processor", "processors")):
        _check_pipeline_step(data.get(key), key, children)


def _is_sentencepiece(path: Path) -> bool:
    # tiktoken "tokenizer.model" files are base64 text lines; SentencePiece ones are protobuf (binary).
    head = path.read_bytes()[:64]
    return not head.isascii() or head[:1] == b"\n"


def _load_spm_proto(path: Path):
    from sentencepiece import sentencepiece_model_pb2  # needs protobuf

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError has no stable import path
        raise TokenizerError(f"tokenizer.model cannot be parsed ({exc})", "re-download tokenizer.model") from exc
    if not proto.pieces:
        raise TokenizerError("tokenizer.model holds no pieces", "re-download tokenizer.model")
    return proto


def _added_tokens(tokenizer_json: dict | None, folder: Path) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) for tokens added on top of the base model, from every file that lists them."""
    added: dict[int, tuple[str, bool]] = {}

    def entry_of(where: str, token_id, content, special=False) -> tuple[int, tuple[str, bool]]:
        if isinstance(token_id, str) and token_id.isdigit():
            token_id = int(token_id)
        if not (isinstance(token_id, int) and not isinstance(token_id, bool) and 0 <= token_id < MAX_VOCAB
                and isinstance(content, str) and isinstance(special, bool)):
            raise TokenizerError(f"{where} lists an added token with id {token_id!r} and content {content!r}: "
                                 f"expected an id 0..{MAX_VOCAB - 1}, a string and a true/false 'special'",
                                 f"re-download {where}")
        return token_id, (content, special)

    config = _json_object(folder / "tokenizer_config.json")
    decoder = config.get("added_tokens_decoder") or {}
    for token_id, entry in (decoder.items() if isinstance(decoder, dict) else [(None, None)]):
        entry = entry if isinstance(entry, dict) else {}
        key, value = entry_of("tokenizer_config.json", token_id, entry.get("content"), entry.get("special", False))
        added[key] = value
    listed = (tokenizer_json or {}).get("added_tokens") or []
    for entry in (listed if isinstance(listed, list) else [None]):
        entry = entry if isinstance(entry, dict) else {}
        key, value = entry_of("tokenizer.json", entry.get("id"), entry.get("content"), entry.get("special", False))
        added[key] = value
    for content, token_id in _json_object(folder / "added_tokens.json").items():
        key, value = entry_of("added_tokens.json", token_id, content)
        added.setdefault(key, value)
    return added


def _json_object(path: Path) -> dict:
    """A tokenizer side file as a JSON object ({} when absent)."""
    if not path.is_file():
        return {}
    data = parse_json(path.read_bytes(), path.name, TokenizerError, f"re-download {path.name}")
    if not isinstance(data, dict):
        raise TokenizerError(f"{path.name} is not a JSON object", f"re-download {path.name}")
    return data


def _append_added(vocab: Vocab, added: dict[int, tuple[str, bool]], score: float | None) -> None:
    """Mark added tokens inside the base vocabulary and append those beyond it (gaps become [PAD] tokens)."""
    base = len(vocab.tokens)
    for token_id in sorted(added):
        content, special = added[token_id]
        if token_id < base:
            if vocab.token_types[token_id] in (TT.NORMAL, TT.USER_DEFINED):
                vocab.token_types[token_id] = TT.CONTROL if special else TT.USER_DEFINED
                vocab.tokens[token_id] = content
            continue
        while len(vocab.tokens) < token_id:
            _append(vocab, f"[PAD{len(vocab.tokens)}]", TT.UNUSED, score)
        _append(vocab, content, TT.CONTROL if special else TT.USER_DEFINED, score)


def _append(vocab: Vocab, text: str, token_type: int, score: float | None) -> None:
    vocab.tokens.append(text)
    vocab.token_types.append(token_type)
    if vocab.scores is not None:
        vocab.scores.append(score if score is not None else -1000.0)


def _sentencepiece_vocab(path: Path, tokenizer_json: dict | None, folder: Path) -> Vocab:
    proto = _load_spm_proto(path)
    if proto.trainer_spec.model_type != SPM_BPE:
        raise TokenizerError("tokenizer.model is a SentencePiece unigram model; edgepack converts BPE ones",
                             "unigram SentencePiece (T5-style) tokenizers are not supported yet")
    # piece types in sentencepiece_model.proto use the same numbers as gguf.TokenType.
    vocab = Vocab(model="llama",
                  tokens=[p.piece for p in proto.pieces],
                  token_types=[int(p.type) for p in proto.pieces],
                  scores=[float(p.score) for p in proto.pieces],
                  add_space_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
                  source="tokenizer.model (SentencePiece BPE)")
    if proto.normalizer_spec.remove_extra_whitespaces:
        raise TokenizerError("tokenizer.model collapses runs of whitespace, which llama.cpp's SentencePiece "
                             "tokenizer does not do", "this tokenizer cannot be reproduced exactly")
    _append_added(vocab, _added_tokens(tokenizer_json, folder), score=-1000.0)
    return vocab


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    """The BPE merges as pairs, checked against the vocabulary: a merge whose parts or result are not
    tokens means a damaged file (e.g. characters lost in a re-save), which would tokenize silently wrong."""
    vocab = model["vocab"]
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise TokenizerError("tokenizer.json's model.merges is not a list", "re-download tokenizer.json")
    pairs = []
    for rank, merge in enumerate(merges):
        if isinstance(merge, str):
            parts = merge.split(" ")
            if len(parts) != 2:
                raise TokenizerError(f"tokenizer.json merge #{rank} {merge!r} is not a pair of tokens",
                                     "the file is damaged: re-download tokenizer.json")
            left, right = parts
        elif isinstance(merge, list) and len(merge) == 2 and all(isinstance(p, str) for p in merge):
            left, right = merge
        else:
            raise TokenizerError(f"tokenizer.json merge #{rank} {merge!r} is not a pair of tokens",
                                 "the file is damaged: re-download tokenizer.json")
        if left not in vocab or right not in vocab or left + right not in vocab:
            raise TokenizerError(f"tokenizer.json merge #{rank} {left!r} + {right!r} uses tokens that are not in "
                                 "its vocabulary", "the file is damaged: re-download tokenizer.json")
        pairs.append((left, right))
    return pairs


def _byte_fallback_bpe_vocab(tokenizer_json: dict, folder: Path) -> Vocab:
    model = tokenizer_json["model"]
    by_id = _tokens_by_id(model["vocab"])
    merge_rank: dict[str, int] = {}
    for rank, (left, right) in enumerate(_merge_pairs(model)):
        merge_rank.setdefault(left + right, rank)
    unk = model.get("unk_token")
    tokens, types, scores = [], [], []
    for text in by_id:
        tokens.append(text)
        if text == unk:
            types.append(TT.UNKNOWN)
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(TT.BYTE)
        else:
            types.append(TT.NORMAL)
        # llama.cpp's SPM tokenizer merges the bigram whose result scores highest: score = -merge rank.
        scores.append(-float(merge_rank[text]) if text in merge_rank else 0.0)
    vocab = Vocab(model="llama", tokens=tokens, token_types=types, scores=scores,
                  add_space_prefix=_prepends_space(tokenizer_json),
                  source="tokenizer.json (BPE with byte fallback)")
    _append_added(vocab, _added_tokens(tokenizer_json, folder), score=-1000.0)
    return vocab


def _prepends_space(tokenizer_json: dict) -> bool:
    normalizers = tokenizer_json.get("normalizer") or {}
    steps = normalizers.get("normalizers", [normalizers])
    if any(s.get("type") == "Prepend" and s.get("prepend") == "\u2581" for s in steps):
        return True
    pre = tokenizer_json.get("pre_tokenizer") or {}
    pre_steps = pre.get("pretokenizers", [pre])
    return any(s.get("type") == "Metaspace" and s.get("prepend_scheme", "always") in ("always", "first")
               and s.get("add_prefix_space", True) for s in pre_steps)


# Gemma 4's chat-format tokens that llama.cpp's chat parser reads as text: typed USER_DEFINED so they render,
# as llama.cpp's own converter types them (conversion/gemma.py, Gemma4Model.set_vocab).
GEMMA4_VISIBLE_TOKENS = frozenset({"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                                   "<tool_response|>", '<|"|>'})


def _gemma4_vocab(tokenizer_json: dict | None, folder: Path) -> Vocab:
    """Gemma 4's tokenizer.json as llama.cpp's ``gemma4`` tokenizer: tokens and merges run as BPE on raw UTF-8
    with spaces as ▁, runs of newlines kept apart, unknown bytes as <0xXX>. Merge ranks decide, not SentencePiece
    scores: Gemma 4 has merges that make the same token from different pairs, which scores cannot order."""
    model = (tokenizer_json or {}).get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise TokenizerError("Gemma 4 needs its tokenizer.json (BPE with byte fallback)",
                             "download tokenizer.json with the model")
    steps = tokenizer_json.get("normalizer") or {}
    steps = steps.get("normalizers", [steps])
    if not any(s.get("type") == "Replace" and s.get("content") == "\u2581" for s in steps) or any(
            s.get("type") == "Prepend" for s in steps):
        raise TokenizerError("tokenizer.json does not normalize spaces to ▁ without a prefix, as llama.cpp's gemma4 "
                             "tokenizer does", "this tokenizer cannot be reproduced exactly")
    _merge_pairs(model)
    unk = model.get("unk_token")
    tokens = _tokens_by_id(model["vocab"])
    types = [TT.UNKNOWN if t == unk else TT.BYTE if len(t) == 6 and t.startswith("<0x") and t.endswith(">")
             else TT.NORMAL for t in tokens]
    vocab = Vocab(model="gemma4", tokens=tokens, token_types=types, add_space_prefix=False,
                  source="tokenizer.json (Gemma 4 BPE with byte fallback)")
    _append_added(vocab, _added_tokens(tokenizer_json, folder), score=None)
    vocab.token_types = [TT.USER_DEFINED if t in GEMMA4_VISIBLE_TOKENS else kind
                         for t, kind in zip(vocab.tokens, vocab.token_types)]
    return vocab


# Byte-level BPE tokenizers saved the GPT-2 way (vocab.json + merges.txt, no tokenizer.json): the class in
# tokenizer_config.json fixes the pre-tokenizer, as transformers builds it (convert_slow_tokenizer's Qwen2Converter
# and GPT2Converter), written here as tokenizer.json steps so that pretokenizers.py names it as for a tokenizer.json.
_QWEN2_STEPS = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
_GPT2_STEPS = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
GPT2_LAYOUT_PRE_TOKENIZERS = {"Qwen2Tokenizer": _QWEN2_STEPS, "Qwen2TokenizerFast": _QWEN2_STEPS,
                              "GPT2Tokenizer": _GPT2_STEPS, "GPT2TokenizerFast": _GPT2_STEPS}


def _gpt2_layout_json(folder: Path) -> dict | None:
    """vocab.json + merges.txt as the tokenizer.json dict transformers would build from them; None without them."""
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        return None
    config = _json_object(folder / "tokenizer_config.json")
    vocab_map = _json_object(vocab_file)
    tokenizer_class = config.get("tokenizer_class")
    steps = GPT2_LAYOUT_PRE_TOKENIZERS.get(tokenizer_class)
    if steps is None or config.get("add_prefix_space"):
        raise TokenizerError(f"vocab.json + merges.txt of tokenizer_class {tokenizer_class!r}"
                             + (" with add_prefix_space" if steps else "") + ": its pre-tokenizer is not known",
                             "add the model's tokenizer.json (known here: " + ", ".join(GPT2_LAYOUT_PRE_TOKENIZERS)
                             + ")")
    lines = merges_file.read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines if line.strip() and not line.startswith("#version")]
    data = {"model": {"type": "BPE", "vocab": vocab_map, "merges": merges}, "pre_tokenizer": steps,
            "added_tokens": []}
    _check_tokenizer_json(data)
    return data


def _byte_level_bpe_vocab(tokenizer_json: dict, folder: Path, pre_override: str | None) -> Vocab:
    pre = detect_pre_tokenizer(tokenizer_json, pre_override)
    note = approximation(tokenizer_json, pre_override)
    tokens = _tokens_by_id(tokenizer_json["model"]["vocab"])
    _merge_pairs(tokenizer_json["model"])
    vocab = Vocab(model="gpt2", tokens=tokens, token_types=[TT.NORMAL] * len(tokens), pre=pre,
                  source=f"tokenizer.json (byte-level BPE, pre-tokenizer {pre}{'; ' + note if note else ''})")
    _append_added(vocab, _added_tokens(tokenizer_json, folder), score=None)
    return vocab


def _tokens_by_id(vocab_map: dict[str, int]) -> list[str]:
    tokens: list[str | None] = [None] * len(vocab_map)
    if not isinstance(vocab_map, dict):
        raise TokenizerError("tokenizer.json's model.vocab is not an object of token -> id",
                             "re-download tokenizer.json")
    for text, token_id in vocab_map.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or not 0 <= token_id < len(tokens) \
                or tokens[token_id] is not None:
            raise TokenizerError(f"tokenizer.json vocabulary ids are not 0..{len(tokens) - 1} (id {token_id})",
                                 "re-download tokenizer.json")
        tokens[token_id] = text
    return tokens  # type: ignore[return-value]


def _pad_to(vocab: Vocab, n_vocab: int | None) -> None:
    """Match the embedding's row count: llama.cpp requires one token per row."""
    if n_vocab is None:
        return
    if len(vocab.tokens) > n_vocab:
        raise TokenizerError(f"the tokenizer has {len(vocab.tokens)} tokens but the model only {n_vocab}",
                             "the tokenizer files do not belong to this checkpoint")
    while len(vocab.tokens) < n_vocab:
        _append(vocab, f"[PAD{len(vocab.tokens)}]", TT.UNUSED, -1000.0)


def _special_vocab(folder: Path, vocab: Vocab) -> gguf.SpecialVocab:
    with_merges = vocab.model in ("gpt2", "gemma4")
    special = gguf.SpecialVocab(folder, load_merges=with_merges, n_vocab=len(vocab.tokens))
    if with_merges and not special.merges:
        raise TokenizerError("tokenizer.json has no merges", "re-download tokenizer.json")
    if special.chat_template is None and (folder / "chat_template.jinja").is_file():
        special.chat_template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if vocab.model == "llama":
        # SentencePiece models name their own specials; fill what no config file stated.
        for kind, token_type in (("unk", TT.UNKNOWN),):
            if kind not in special.special_token_ids and token_type in vocab.token_types:
                special.special_token_ids[kind] = vocab.token_types.index(token_type)
        for kind, text in (("bos", "<s>"), ("eos", "</s>")):
            if kind not in special.special_token_ids and text in vocab.tokens:
                special.special_token_ids[kind] = vocab.tokens.index(text)
        # LlamaTokenizer's default when no file says otherwise: add <s>, not </s>.
        special.add_special_token.setdefault("bos", True)
        special.add_special_token.setdefault("eos", False)
    if vocab.model == "gpt2":
        # A tokenizer.json adds BOS only through its post-processor (read above); when nothing says so, llama.cpp
        # would prepend its default BOS id (11 for this model type) to every prompt. SmolLM3 names no BOS at all.
        special.add_special_token.setdefault("bos", False)
    if vocab.model == "gemma4":  # llama.cpp adds <bos> for gemma4 whatever the file says (llama-vocab.cpp)
        special.add_special_token["bos"] = True
    return special
