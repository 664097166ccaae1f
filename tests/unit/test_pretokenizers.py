"""Which llama.cpp pre-tokenizer a tokenizer.json's pre_tokenizer steps map to (the ids themselves are checked
against the real tokenizers in tests/fidelity/test_tokenizers.py)."""

import pytest

from edgepack.convert.pretokenizers import detect_pre_tokenizer
from edgepack.errors import TokenizerError


def _falcon_like(punctuation_behavior: str) -> dict:
    return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Punctuation", "behavior": punctuation_behavior},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        {"type": "Digits", "individual_digits": False},
        {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated", "invert": False}]}}


def test_falcons_steps_are_llama_cpps_falcon():
    assert detect_pre_tokenizer(_falcon_like("Contiguous")) == "falcon"


def test_punctuation_split_mark_by_mark_is_not_falcon():
    # llama.cpp's falcon regex keeps a run of punctuation together; HF's Isolated splits every mark
    with pytest.raises(TokenizerError, match="punctuation-isolated"):
        detect_pre_tokenizer(_falcon_like("Isolated"))
