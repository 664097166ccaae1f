"""Checkpoints saved by transformers 5.x (this environment) and in transformers 4.x's layout convert alike.

5.x moved rope_theta/rope_scaling into ``rope_parameters``, writes ``dtype`` instead of ``torch_dtype``, saves
tokenizers as ``TokenizersBackend`` and drops ``add_bos_token`` from tokenizer_config.json (BOS is only in the
tokenizer.json post-processor). Only transformers 5 is installed here, so the 4.x checkpoint is the 5.x one
rewritten into the layout 4.x writes (the keys below are what 4.46 writes for the same model).
"""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest

from edgepack.convert import convert
from tests.support.tinymodels import TOKENIZERS, build_model, compare, hf_logits, llama_cpp_logits, real_config, shrink

pytestmark = pytest.mark.slow  # a checkpoint saved by transformers 5 and 4 layouts, converted and run


def _fields(path):
    reader = gguf.GGUFReader(path)
    keep = ("llama.", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.model", "tokenizer.chat_template")
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith(keep)}
    tensors = {t.name: np.array(t.data).tobytes() for t in reader.tensors}
    return fields, tensors


@pytest.fixture(scope="module")
def saved_by_v5(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("v5") / "model"
    config = shrink(real_config("llama3_1_8b"), vocab_size=32000, bos_token_id=1, eos_token_id=2)
    model = build_model(config, folder)
    # A tokenizer.json-only tokenizer as transformers 5 saves it (what Hub uploads made with 5.x look like).
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZERS / "tinyllama-chat-resaved-Dheena731/tokenizer.json"),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return folder, model


def test_v5_layout_is_what_we_claim(saved_by_v5):
    folder, _ = saved_by_v5
    config = json.loads((folder / "config.json").read_text())
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["transformers_version"].startswith("5.")
    assert "rope_parameters" in config and "rope_theta" not in config
    assert tok_config["tokenizer_class"] == "TokenizersBackend" and "add_bos_token" not in tok_config


def test_v5_checkpoint_converts_with_bos_and_rope(saved_by_v5):
    folder, model = saved_by_v5
    out = folder.parent / "v5.gguf"
    convert(folder, out, outtype="f32")
    fields, tensors = _fields(out)
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.ggml.bos_token_id"] == 1
    assert fields["llama.rope.freq_base"] == pytest.approx(500000.0)
    assert "rope_freqs.weight" in tensors
    ids = [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889]
    max_abs, top1 = compare(hf_logits(model, ids), llama_cpp_logits(out, ids))
    assert max_abs <= 1e-4 and top1 == 1.0


def test_v4_layout_converts_identically(saved_by_v5):
    folder, _ = saved_by_v5
    v4 = folder.parent / "v4"
    shutil.copytree(folder, v4)
    config = json.loads((v4 / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope if rope.get("rope_type") != "default" else None
    config["torch_dtype"] = config.pop("dtype", "float32")
    config["transformers_version"] = "4.46.0"
    (v4 / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((v4 / "tokenizer_config.json").read_text())
    tok_config.update(tokenizer_class="LlamaTokenizer", add_bos_token=True, add_eos_token=False, legacy=False)
    (v4 / "tokenizer_config.json").write_text(json.dumps(tok_config))

    convert(folder, folder.parent / "a.gguf", outtype="f32")
    convert(v4, folder.parent / "b.gguf", outtype="f32")
    fields_v5, tensors_v5 = _fields(folder.parent / "a.gguf")
    fields_v4, tensors_v4 = _fields(folder.parent / "b.gguf")
    assert fields_v4 == fields_v5
    assert tensors_v4 == tensors_v5
