"""What the projector tests share: a non-square test image, and a prompt with an image evaluated by llama.cpp as
an app does (text GGUF + mmproj through libmtmd)."""

from __future__ import annotations

import numpy as np

from tests.support.family_cases import QWEN35_TINY_TEXT
from tests.support.tinymodels import real_config


def nonsquare_image(height: int = 48, width: int = 80) -> np.ndarray:
    """A non-square RGB image with structure in both directions: gradients and a diagonal pattern."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), ((x + 2 * y) * 13) % 256],
                    axis=-1).astype(np.uint8)




def llama_cpp_image_prompt(text_gguf, mmproj, prompt: bytes, rgb: np.ndarray, n_ctx: int = 64
                           ) -> tuple[list[int], np.ndarray]:
    """(token ids with -1 for each image position, last-position logits): the prompt with the image evaluated
    by llama.cpp as an app does (mtmd_helper_eval_chunks: text batches, each image chunk's embeddings decoded
    as the projector type needs, non-causally for Gemma 3). F32 KV cache."""
    import ctypes

    import llama_cpp
    from llama_cpp import mtmd_cpp as mtmd

    from edgepack.evaluate import open_llama
    from edgepack.mtmd import projector, tokenized

    with open_llama(text_gguf, n_ctx=n_ctx, n_threads=2, n_batch=n_ctx, type_k=0, type_v=0) as llm:
        with projector(llm.model, mmproj) as ctx, tokenized(ctx, prompt, rgb, add_special=True) as chunks:
            ids: list[int] = []
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    count = ctypes.c_size_t()
                    tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                    ids += [tokens[j] for j in range(count.value)]
                else:
                    ids += [-1] * n
            n_past = llama_cpp.llama_pos(0)
            status = mtmd.mtmd_helper_eval_chunks(ctx, llm.ctx, chunks, 0, 0, n_ctx, True, ctypes.byref(n_past))
            assert status == 0
            # one position per token, except under M-RoPE (an image takes max(grid w, h) positions: Qwen-VL)
            assert n_past.value == len(ids) or mtmd.mtmd_decode_use_mrope(ctx)
            logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            return ids, np.ctypeslib.as_array(logits, shape=(llm.n_vocab(),)).copy()


def image_prompt_agreement(folder, text_gguf, reference, rgb: np.ndarray, image_tokens: int, tmp_path, label: str,
                           n_ctx: int) -> dict:
    """{outtype: (max |Δ| of the next-token logits, how far a flipped image moves transformers' logits)} for the
    prompt "Look: <image> what is it" through llama.cpp with the F32/F16/Q8_0 projector of ``folder`` vs
    ``reference(ids, rgb)`` (transformers' last-position logits for mtmd's ids, -1 at the image positions);
    asserts each has the image's token count and the same top-1."""
    from edgepack.convert.mmproj import convert_mmproj

    expected, out = None, {}
    for outtype in ("f32", "f16", "q8_0"):
        mmproj = convert_mmproj(folder, tmp_path / f"mmproj-{outtype}.gguf", outtype=outtype).output
        ids, got = llama_cpp_image_prompt(text_gguf, mmproj, b"Look: <__media__> what is it", rgb, n_ctx=n_ctx)
        assert ids.count(-1) == image_tokens
        if expected is None:
            expected, flipped = reference(ids, rgb), reference(ids, rgb[::-1, ::-1].copy())
        out[outtype] = (float(np.abs(expected - got).max()), float(np.abs(flipped - expected).max()))
        print(f"\n{label} image prompt {outtype.upper()}: {len(ids)} tokens ({image_tokens} image), next-token "
              f"logits max|d| {out[outtype][0]:.2e} (another image moves them {out[outtype][1]:.2e}), top-1 "
              f"{int(expected.argmax())} vs {int(got.argmax())}")
        assert int(expected.argmax()) == int(got.argmax())
    return out

def assert_refused(case, folder, files: dict[str, dict], message: str) -> None:
    """A copy of the checkpoint ``folder`` in ``case`` (its weights linked) with the JSON ``files`` written, which
    convert_mmproj refuses in one line naming ``message``, with a hint, writing nothing."""
    import json

    import pytest

    from edgepack.convert.mmproj import convert_mmproj
    from edgepack.errors import UnsupportedArchitecture

    case.mkdir()
    (case / "model.safetensors").symlink_to(folder / "model.safetensors")
    for name, data in files.items():
        (case / name).write_text(json.dumps(data))
    with pytest.raises(UnsupportedArchitecture) as info:
        convert_mmproj(case, case / "out.gguf")
    assert message in str(info.value) and info.value.hint and "\n" not in str(info.value)
    assert not (case / "out.gguf").exists()


# --- tiny Qwen-VL checkpoints (tests/fidelity/test_mmproj_qwen.py, the vision-language build test) -------------

# Their preprocessor_config.json (Qwen2VLImageProcessorFast through Qwen3VLProcessor; the same for Qwen3.5).
QWEN_VL_PREPROCESSOR = {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                        "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                        "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                        "image_processor_type": "Qwen2VLImageProcessorFast"}

# name -> (published config, what is shrunk, tokenizer case)
TINY_QWEN_VLM = {
    # Qwen3-VL-2B-Instruct: a 24-block tower whose layers 5, 11 and 17 feed DeepStack mergers
    "qwen3-vl-2b": (real_config("qwen3_vl_2b_instruct"), {
        "text_config": {"head_dim": 32, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                        "num_hidden_layers": 3, "num_key_value_heads": 1, "max_position_embeddings": 4096,
                        "rope_scaling": {"mrope_section": [6, 5, 5]}},
        "vision_config": {"deepstack_visual_indexes": [0, 2], "depth": 3, "hidden_size": 64,
                          "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 64}},
     "qwen2-trained"),
    "qwen3.5-0.8b": (real_config("qwen3_5_0.8b"), {
        "text_config": dict(QWEN35_TINY_TEXT, linear_num_key_heads=2, linear_num_value_heads=4),
        # an 8 x 8 learned position grid, bilinearly resampled to the image's 20 x 14 patches
        "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                          "out_hidden_size": 256, "num_position_embeddings": 64}},
     "qwen35-trained"),
}


def tiny_qwen_vlm(name: str, folder, tokenizer_folder):
    """A tiny random-weight checkpoint of ``TINY_QWEN_VLM[name]`` in ``folder``, with the tokenizer of
    ``tokenizer_folder`` and the real preprocessor_config.json; returns ``folder``."""
    import json

    from tests.support.family_cases import _merged, _round_up, tokenizer_size
    from tests.support.tinymodels import build_model

    real, tiny, _ = TINY_QWEN_VLM[name]
    vocab = _round_up(tokenizer_size(tokenizer_folder))
    # the image/video/vision marker ids inside the tiny vocabulary (the real ones are beyond it)
    markers = {"image_token_id": vocab - 1, "video_token_id": vocab - 2, "vision_end_token_id": vocab - 3,
               "vision_start_token_id": vocab - 4}
    config = _merged(real, {**tiny, **markers, "text_config": {**tiny["text_config"], "vocab_size": vocab}})
    config.pop("transformers_version", None)
    build_model(config, folder)
    for f in tokenizer_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN_VL_PREPROCESSOR))
    return folder


# LFM2-VL's added tokens that mtmd's lfm2 template and the processor use.
LFM2VL_ADDED = ["<|startoftext|>", "<image>", "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>",
                *[f"<|img_row_{r}_col_{c}|>" for r in range(1, 4) for c in range(1, 4)]]


def lfm2vl_config(name: str) -> dict:
    """LFM2-VL-450M's config.json, preprocessor_config.json or processor_config.json (tests/fixtures/configs)."""
    import json

    from tests.support.tinymodels import CONFIGS

    return json.loads((CONFIGS / f"lfm2_vl_450m.{name}.json").read_text())


def build_lfm2vl(root, *, vision: dict | None = None, text: dict | None = None, projector_hidden: int | None = None,
                 dtype: str = "float32"):
    """A random-weight Lfm2VlForConditionalGeneration in ``root``/model from LFM2-VL-450M's config (the given
    vision_config / text_config keys replaced: shrunk for the tests, none for the real sizes), the qwen2-style
    trained byte-level BPE with LFM2-VL's added tokens (vocabulary ~1.5k, where the real one has 65536), its
    processor files as published but use_thumbnail true (what llama.cpp reproduces). Returns the folder."""
    import json

    from tokenizers import AddedToken, Tokenizer

    from tests.support.family_cases import _merged, _round_up, build_tokenizer, tokenizer_size
    from tests.support.tinymodels import build_model

    folder, tok_folder = root / "model", root / "tok"
    build_tokenizer("qwen2-trained", tok_folder)  # the byte-level BPE the LFM2 family tests use
    tok = Tokenizer.from_file(str(tok_folder / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LFM2VL_ADDED])
    tok.save(str(tok_folder / "tokenizer.json"))
    tok_config = json.loads((tok_folder / "tokenizer_config.json").read_text())
    tok_config.update({"bos_token": "<|startoftext|>", "add_bos_token": True})
    (tok_folder / "tokenizer_config.json").write_text(json.dumps(tok_config))

    real = lfm2vl_config("config")
    for key in ("auto_map", "transformers_version"):
        real.pop(key)
    image_token = tok.token_to_id("<image>")
    overrides = {"model_type": "lfm2_vl", "text_config": {**(text or {}), "vocab_size": _round_up(tokenizer_size(
        tok_folder))}, "vision_config": vision or {}, "image_token_index": image_token,
        "image_token_id": image_token, "use_thumbnail": True}
    if projector_hidden:
        overrides["projector_hidden_size"] = projector_hidden
    build_model(_merged(real, overrides), folder, dtype=dtype)
    for f in tok_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "preprocessor_config.json").write_text(json.dumps(lfm2vl_config("preprocessor_config")))
    (folder / "processor_config.json").write_text(json.dumps({**lfm2vl_config("processor_config"),
                                                              "use_thumbnail": True}))
    return folder
