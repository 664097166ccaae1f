"""Token ids from edgepack's GGUF vocabularies (tokenized by llama.cpp) equal the model's own tokenizer's ids.

Special-token strings: HF ``tokenizers`` always matches added tokens inside text, so tokenizer.json cases are
compared with llama.cpp's ``special=True``; ``sentencepiece`` never matches control pieces, so SentencePiece
cases use ``special=False``. Each side is held to the tokenizer the model was trained with.
"""

from __future__ import annotations

import json
import unicodedata

import gguf
import llama_cpp
import pytest

from edgepack.convert import convert
from tests.support.tokenizer_cases import CASES, TRICKY_TEXTS, all_texts


def _config(vocab_size: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
            "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
            "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "vocab_size": vocab_size}


# Two tokenizers (SentencePiece, tokenizer.json BPE) stay in the fast tier (pytest -m "not slow"); all run in
# the full one.
FAST_CASES = {"llama2-spm", "phi3-json"}


@pytest.fixture(scope="module", ids=lambda c: c.name,
                params=[c if c.name in FAST_CASES else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def vocab_gguf(request, tmp_path_factory):
    case = request.param
    folder = case.build(tmp_path_factory.mktemp(case.name))
    (folder / "config.json").write_text(json.dumps(_config(case.vocab_size)))
    out = folder / "vocab.gguf"
    convert(folder, out, vocab_only=True)
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    yield case, folder, out, llm
    llm.close()


def _normalized_added_tokens(folder) -> list[str]:
    """Added tokens flagged ``normalized: true``: HF matches them after normalisation (swallowing the spaces
    around them), which a GGUF vocabulary cannot express. README: "Known tokenizer differences"."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return []
    return [t["content"] for t in json.loads(path.read_text())["added_tokens"] if t.get("normalized")]


# Token texts llama.cpp makes end-of-generation control tokens whatever the GGUF says (src/llama-vocab.cpp lists
# them by text), so that special=True matches them inside text. Qwen's vocabulary has "</s>" as an ordinary token.
LLAMA_CPP_FORCED_CONTROL = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<eos>")


def _forced_control_tokens(folder) -> list[str]:
    """Ordinary vocabulary entries (not added tokens) that llama.cpp turns into control tokens by their text.
    README: "Known tokenizer differences"."""
    if (folder / "tokenizer.json").is_file():
        data = json.loads((folder / "tokenizer.json").read_text())
        vocab, added = data["model"]["vocab"], {t["content"] for t in data["added_tokens"]}
    elif (folder / "vocab.json").is_file():  # added tokens live in tokenizer_config.json, not in vocab.json
        vocab, added = json.loads((folder / "vocab.json").read_text()), set()
    else:
        return []
    return [t for t in LLAMA_CPP_FORCED_CONTROL if t in vocab and t not in added]


def test_token_ids_match_the_models_own_tokenizer(vocab_gguf):
    case, folder, _, llm = vocab_gguf
    truth = case.truth_encoder(folder)
    parse_special = case.truth != "sentencepiece"
    mismatches = []
    normalized_specials = _normalized_added_tokens(folder) + _forced_control_tokens(folder) if parse_special else []
    texts = [t for t in all_texts() if not any(s in t for s in normalized_specials)]
    assert len(texts) >= len(all_texts()) - 3
    for text in texts:
        expected = truth(text)
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=parse_special)
        if got != expected:
            mismatches.append((text, expected[:12], got[:12]))
    assert not mismatches, f"{len(mismatches)}/{len(texts)} texts differ, first: {mismatches[:3]}"


def test_special_tokens_and_bos(vocab_gguf):
    case, folder, out, llm = vocab_gguf
    reader = gguf.GGUFReader(out)
    fields = {f.name: f for f in reader.fields.values()}
    # Qwen's, SmolLM3's and Falcon's tokenizer files name no BOS (config.json's bos_token_id may) and add none.
    no_bos = {"qwen3-json": "qwen2", "qwen3-vocab-merges": "qwen2", "smollm3-json": "llama-bpe", "falcon-json": "falcon"}
    if case.name in no_bos:
        assert llm.tokenize(b"Hello", add_bos=True) == llm.tokenize(b"Hello", add_bos=False)
        assert fields["tokenizer.ggml.pre"].contents() == no_bos[case.name]
        return
    if case.name in ("phi4-mini-json", "tekken-json"):  # derived from the o200k / tekken regex (no --pre-tokenizer)
        assert fields["tokenizer.ggml.pre"].contents() == "granite-embed-multi-97m"
    bos = int(fields["tokenizer.ggml.bos_token_id"].parts[-1][0])
    assert llm.token_bos() == bos
    # add_bos as the original tokenizer does it (all these models prepend BOS, except where Phi-3's and
    # Phi-4-mini's configs say no).
    with_bos = llm.tokenize(b"Hello", add_bos=True)
    expected_add_bos = case.name not in ("phi3-json", "phi4-mini-json")
    assert (with_bos[0] == bos) == expected_add_bos
    if case.name == "llama3-json":
        assert fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
        assert llm.token_bos() == 128000
    if case.name in ("tinyllama-spm", "tinyllama-json", "llama3-json"):
        assert "tokenizer.chat_template" in fields


def test_normalized_special_token_strings_differ_as_documented(tmp_path):
    """The one known difference, pinned so that a change on either side shows up."""
    case = next(c for c in CASES if c.name == "llama2-json")
    folder = case.build(tmp_path / "tok")
    (folder / "config.json").write_text(json.dumps(_config(case.vocab_size)))
    convert(folder, folder / "vocab.gguf", vocab_only=True)
    llm = llama_cpp.Llama(str(folder / "vocab.gguf"), vocab_only=True, verbose=False)
    text = "<s> looks special </s>"
    assert case.truth_encoder(folder)(text) == [1, 3430, 4266, 2]  # HF drops the spaces next to <s>, </s>
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == [1, 29871, 3430, 4266, 29871, 2]
    llm.close()


@pytest.mark.slow
def test_qwen_differences_are_llama_cpp_behaviour_as_documented(tmp_path):
    """The two places where a Qwen GGUF's ids differ from HF tokenizers, pinned so a change on either side shows:
    llama.cpp applies no NFC normalisation (HF composes c + U+0301 into ć before splitting), and llama.cpp makes
    a token whose text is "</s>" a control token, which special=True then matches inside text."""
    case = next(c for c in CASES if c.name == "qwen3-json")
    folder = case.build(tmp_path / "tok")
    (folder / "config.json").write_text(json.dumps(_config(case.vocab_size)))
    convert(folder, folder / "vocab.gguf", vocab_only=True)
    llm = llama_cpp.Llama(str(folder / "vocab.gguf"), vocab_only=True, verbose=False)
    truth = case.truth_encoder(folder)
    decomposed = "c\u0301"  # what NFC turns into "\u0107"
    assert truth(decomposed) == truth("\u0107") != llm.tokenize(decomposed.encode(), add_bos=False, special=False)
    assert llm.tokenize("\u0107".encode(), add_bos=False, special=False) == truth("\u0107")
    text = "<s> looks special </s>"
    ordinary = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert ordinary == truth(text)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) != ordinary
    llm.close()


@pytest.mark.slow
def test_tekken_is_mistral_commons_own_split_but_for_the_documented_contractions(tmp_path):
    """tekken has no exact llama.cpp pre-tokenizer. The tokenizer.json transformers converts equals mistral-common's
    own encoding (tiktoken over tekken.json) on every test text without special-token strings; edgepack writes
    granite-embed-multi-97m and says it approximates; the one kind of text where ids differ (a contraction after
    letters running into more letters) is pinned, and llama.cpp's own "tekken" name is shown to split Devanagari
    and Thai differently (why it is not used)."""
    from tests.support.tokenizer_cases import tekken_encoder

    case = next(c for c in CASES if c.name == "tekken-json")
    folder = case.build(tmp_path / "tok")
    (folder / "config.json").write_text(json.dumps(_config(case.vocab_size)))
    hf, mistral_common = case.truth_encoder(folder), tekken_encoder()
    plain = [t for t in all_texts() if not any(s in t for s in ("<s>", "</s>", "[INST]", "[/INST]"))]
    assert len(plain) == len(all_texts()) - 2
    assert all(hf(t) == mistral_common(t) for t in plain)
    result = convert(folder, folder / "vocab.gguf", vocab_only=True)
    assert "granite-embed-multi-97m; tekken's split approximated" in result.tokenizer
    convert(folder, folder / "tekken.gguf", vocab_only=True, pre_tokenizer="tekken")
    llm = llama_cpp.Llama(str(folder / "vocab.gguf"), vocab_only=True, verbose=False)
    as_tekken = llama_cpp.Llama(str(folder / "tekken.gguf"), vocab_only=True, verbose=False)

    def ids(model, text):
        return model.tokenize(text.encode(), add_bos=False, special=False)
    assert ids(llm, "O'Reilly") != mistral_common("O'Reilly") == ids(as_tekken, "O'Reilly") == [1079, 1039, 111981]
    assert ids(llm, "O'Reilly") == [1079, 1039, 2596, 14637]  # O, ', Re, illy: "'Re" split off as o200k's contraction
    marked = [t for t in plain if any(unicodedata.category(c).startswith("M") for c in t)]
    assert all(ids(llm, t) == mistral_common(t) for t in marked)
    assert sum(ids(as_tekken, t) != mistral_common(t) for t in marked) >= 5
    llm.close()
    as_tekken.close()


def test_specials_are_control_tokens_not_text(vocab_gguf):
    """A control token's text in user input must not become the control token unless asked (special=False)."""
    case, _, _, llm = vocab_gguf
    text = "<|begin_of_text|>" if case.name == "llama3-json" else "<s>"
    as_text = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert llm.token_bos() not in as_text


def test_transformers_llama_tokenizer_leading_space_vs_sentencepiece(tmp_path):
    """Where transformers' own Llama tokenizer disagrees with sentencepiece, llama.cpp sides with sentencepiece.

    Recent transformers builds the Llama tokenizer from tokenizer.model with a Metaspace pre-tokenizer that
    treats text after a leading space differently from sentencepiece's dummy prefix. The README says so.
    """
    import sentencepiece
    import transformers

    case = next(c for c in CASES if c.name == "llama2-spm")
    folder = case.build(tmp_path / "tok")
    (folder / "config.json").write_text(json.dumps(_config(case.vocab_size)))
    convert(folder, folder / "vocab.gguf", vocab_only=True)
    llm = llama_cpp.Llama(str(folder / "vocab.gguf"), vocab_only=True, verbose=False)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    hf = transformers.LlamaTokenizer(vocab_file=str(folder / "tokenizer.model"))
    disagreements = 0
    for text in TRICKY_TEXTS:
        spm_ids = sp.encode(text)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == spm_ids, text
        if hf.encode(text, add_special_tokens=False) != spm_ids:
            disagreements += 1
    llm.close()
    # Record (not require) the transformers disagreement; llama.cpp must follow sentencepiece either way.
    print(f"transformers LlamaTokenizer differs from sentencepiece on {disagreements}/{len(TRICKY_TEXTS)} texts")


def test_corrupted_tokenizer_json_is_refused(tmp_path):
    """onnxruntime-extensions' Llama-2 tokenizer.json lost U+00A0 in four vocab keys: ids collide."""
    from tests.support.tinymodels import TOKENIZERS

    from edgepack.errors import TokenizerError

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((TOKENIZERS / "llama2-ortx/tokenizer.json").read_bytes())
    (folder / "config.json").write_text(json.dumps(_config(32000)))
    with pytest.raises(TokenizerError):
        convert(folder, folder / "vocab.gguf", vocab_only=True)
    assert not (folder / "vocab.gguf").exists()


def test_vocab_and_merges_of_an_unknown_class_are_refused(tmp_path):
    """vocab.json + merges.txt say nothing about the pre-tokenizer: only classes whose split is fixed are read."""
    from edgepack.errors import TokenizerError

    case = next(c for c in CASES if c.name == "qwen3-vocab-merges")
    folder = case.build(tmp_path / "tok")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, tokenizer_class="MysteryTokenizer")))
    (folder / "config.json").write_text(json.dumps(_config(case.vocab_size)))
    with pytest.raises(TokenizerError, match="MysteryTokenizer"):
        convert(folder, folder / "vocab.gguf", vocab_only=True)
    assert not (folder / "vocab.gguf").exists()
