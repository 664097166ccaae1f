"""SmolVLM / Idefics3 projectors (``edgepack convert --mmproj``), proved against transformers through llama.cpp's
libmtmd on a non-square image that llama.cpp and SmolVLMImageProcessor both tile.

The checkpoint: a tiny random-weight SmolVLMForConditionalGeneration from SmolVLM2-500M-Video-Instruct's config
(tests/fixtures/configs) with its real 16-pixel patches and pixel-shuffle factor 4, the tower shrunk to 2 layers
of 64 and 128-pixel tiles (8 x 8 patches -> 2 x 2 = 4 tokens per tile); its preprocessor_config.json with the
sizes shrunk by the same factor (tiles of 128, longest edge 3 tiles: real 512 and 4 tiles of 2048) and
everything else as published (Lanczos, mean/std 0.5). The tokenizer is the SmolLM-style byte-level BPE the
family tests train, with SmolVLM's added tokens (<global-img>, <row_R_col_C>, <fake_token_around_image>,
<image>, <end_of_utterance>) and the "\\n\\n" token mtmd looks up.

An 80 x 48 image is resized (longest side 384, Lanczos) to 384 x 240, stretched to 3 x 2 tiles of 128 and
encoded as 6 tiles row by row plus the whole image shrunk to one tile: 7 x 4 = 28 embeddings, in that order in
both runtimes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.convert import convert
from edgepack.convert.mmproj import convert_mmproj
from edgepack.mtmd import image_embeddings as mtmd_image_embeddings
from tests.support.family_cases import _merged, _round_up, build_tokenizer, tokenizer_size
from tests.support.tinymodels import CONFIGS, build_model, max_abs_and_cosine
from tests.support.vision_cases import assert_refused, llama_cpp_image_prompt, nonsquare_image

pytestmark = pytest.mark.slow  # a tiny VLM built with transformers, then seconds per test

TILE = 128
TINY_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": TILE, "max_image_size": {"longest_edge": TILE}, "size": {"longest_edge": 3 * TILE}}
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 32, "max_position_embeddings": 512}
TOKENS_PER_TILE = 4
TILES = 3 * 2 + 1  # the grid plus the overview
MIN_COSINE = 0.9999  # the bar
SMOLVLM_ADDED = ["<global-img>", *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)],
                 "<fake_token_around_image>", "<image>", "<end_of_utterance>"]


def _smolvlm_tokenizer(folder):
    """The SmolLM-style trained BPE plus "\\n\\n" (a merge SmolLM2's vocabulary has; mtmd's idefics3 template
    looks the token up) and SmolVLM's added tokens after the vocabulary, as its tokenizer.json lists them."""
    from tokenizers import AddedToken, Tokenizer

    build_tokenizer("smollm-trained", folder)
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    vocab["ĊĊ"] = max(vocab.values()) + 1
    merges.append(["Ċ", "Ċ"] if merges and isinstance(merges[0], list) else "Ċ Ċ")
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SMOLVLM_ADDED])
    tok.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update({"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
                   "unk_token": "<|endoftext|>", "additional_special_tokens": ["<fake_token_around_image>",
                                                                               "<image>", "<end_of_utterance>"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok


def _build(root, overrides: dict, processor_class):
    """(checkpoint folder, F32 text GGUF, transformers model, its image processor) of SmolVLM2-500M's config with
    the tiny sizes and ``overrides``."""
    import torch
    import transformers

    folder = root / "model"
    tok_folder = root / "tok"
    tok_folder.mkdir()
    tok = _smolvlm_tokenizer(tok_folder)
    real = json.loads((CONFIGS / "smolvlm2_500m_video_instruct.config.json").read_text())
    vocab = _round_up(tokenizer_size(tok_folder))
    config = _merged(_merged(real, {"text_config": {**TINY_TEXT, "vocab_size": vocab}, "vision_config": TINY_VISION,
                                    "vocab_size": vocab, "image_token_id": tok.token_to_id("<image>")}), overrides)
    config.pop("transformers_version")
    build_model(config, folder)
    for f in tok_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    preprocessor = json.loads((CONFIGS / "smolvlm2_500m_video_instruct.preprocessor_config.json").read_text())
    preprocessor = _merged(preprocessor, {"max_image_size": {"longest_edge": TILE},
                                          "size": {"longest_edge": 3 * TILE}})
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    text = convert(folder, root / "text-F32.gguf", outtype="f32").output
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, text, model, processor_class.from_pretrained(folder)


@pytest.fixture(scope="module")
def smolvlm(tmp_path_factory):
    """(checkpoint folder, F32 text GGUF, transformers model, its image processor)."""
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    return _build(tmp_path_factory.mktemp("smolvlm"), {}, SmolVLMImageProcessorPil)


@pytest.fixture(scope="module")
def idefics3(tmp_path_factory):
    """The same checkpoint as Idefics3ForConditionalGeneration, SmolVLM v1's class (SmolVLM-256M/500M-Instruct,
    Idefics3-8B), with Idefics3ImageProcessor."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    overrides = {"architectures": ["Idefics3ForConditionalGeneration"], "model_type": "idefics3",
                 "vision_config": {"model_type": "idefics3_vision"}}
    return _build(tmp_path_factory.mktemp("idefics3"), overrides, Idefics3ImageProcessorPil)


def _transformers_embeddings(model, processor, rgb: np.ndarray) -> np.ndarray:
    """SmolVLMImageProcessor (resize, tile, x1/255, normalise) + vision tower + connector: (tokens, hidden),
    tiles row by row and the overview last."""
    import torch
    from PIL import Image

    inputs = processor(images=[[Image.fromarray(rgb)]], return_tensors="pt")
    with torch.no_grad():
        out = model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"])
    return torch.cat(list(out.pooler_output)).numpy()


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_smolvlm_mmproj_embeddings_match_transformers(smolvlm, tmp_path, outtype):
    import gguf

    folder, text, model, processor = smolvlm
    result = convert_mmproj(folder, tmp_path / f"mmproj-{outtype}.gguf", outtype=outtype)
    assert (result.projector_type, result.image_tokens, result.image_size) == ("idefics3", TOKENS_PER_TILE, TILE)
    rgb = nonsquare_image()
    got = mtmd_image_embeddings(text, result.output, rgb)
    reference = _transformers_embeddings(model, processor, rgb)
    assert got.shape == reference.shape == (TILES * TOKENS_PER_TILE, 64)
    max_abs, cosine = max_abs_and_cosine(reference, got)
    worst_tile = min(max_abs_and_cosine(reference[i:i + 4], got[i:i + 4])[1] for i in range(0, len(got), 4))
    print(f"\nSmolVLM mmproj {outtype.upper()} (embeddings up to {np.abs(reference).max():.2f}, {TILES} tiles): "
          f"max|d| {max_abs:.2e} 1-cos {1 - cosine:.1e} (worst tile 1-cos {1 - worst_tile:.1e})")
    assert cosine >= MIN_COSINE and worst_tile >= MIN_COSINE
    # measured 5.8e-4 (F32: llama.cpp's Lanczos against Pillow's), 1.1e-3 (F16), 2.2e-2 (Q8_0 connector)
    assert max_abs <= {"f32": 2e-3, "f16": 4e-3, "q8_0": 5e-2}[outtype]

    reader = gguf.GGUFReader(result.output)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    assert fields["clip.projector_type"] == "idefics3" and fields["clip.vision.projector.scale_factor"] == 4
    assert fields["clip.vision.preproc_image_size"] == 3 * TILE and fields["clip.vision.image_size"] == TILE
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["v.patch_embd.weight"] == types["v.position_embd.weight"] == "F32"
    assert types["mm.model.fc.weight"] == types["v.blk.1.ffn_down.weight"] == outtype.upper()


def test_smolvlm_image_prompt_next_token_agrees(smolvlm, tmp_path):
    """A prompt with the image in it: llama.cpp (text GGUF + mmproj through mtmd, its idefics3 tile template)
    and transformers (SmolVLMForConditionalGeneration with the same ids and pixels) give the same next token."""
    import torch
    from PIL import Image

    folder, text, model, processor = smolvlm
    config = json.loads((folder / "config.json").read_text())
    rgb = nonsquare_image()
    inputs = processor(images=[[Image.fromarray(rgb)]], return_tensors="pt")
    for outtype in ("f32", "f16", "q8_0"):
        mmproj = convert_mmproj(folder, tmp_path / f"mmproj-{outtype}.gguf", outtype=outtype).output
        ids, got = llama_cpp_image_prompt(text, mmproj, b"Look: <__media__> what is it", rgb, n_ctx=128)
        assert ids.count(-1) == TILES * TOKENS_PER_TILE
        input_ids = torch.tensor([[config["image_token_id"] if t == -1 else t for t in ids]])
        with torch.no_grad():
            reference = model(input_ids=input_ids, pixel_values=inputs["pixel_values"],
                              pixel_attention_mask=inputs["pixel_attention_mask"]).logits[0, -1].numpy()
        max_abs = float(np.abs(reference - got).max())
        print(f"\nSmolVLM image prompt {outtype.upper()}: {len(ids)} tokens ({ids.count(-1)} image), next-token "
              f"logits max|d| {max_abs:.2e}, top-1 {int(reference.argmax())} vs {int(got.argmax())}")
        assert int(reference.argmax()) == int(got.argmax())
        assert max_abs <= {"q8_0": 5e-3}.get(outtype, 5e-4)  # measured 2.2e-5 (F32), 5.8e-5 (F16), 1.5e-3 (Q8_0)


def test_smolvlm_mmproj_refusals(smolvlm, tmp_path):
    """What llama.cpp's idefics3 path cannot reproduce is refused in one line, before anything is written."""
    folder, _, _, _ = smolvlm
    config = json.loads((folder / "config.json").read_text())
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    cases = (
        ({}, {"resample": 2}, "resample 2"),
        ({}, {"do_image_splitting": False}, "do_image_splitting false"),
        ({}, {"max_image_size": {"longest_edge": 256}}, "max_image_size.longest_edge 256"),
        ({}, {"size": {"longest_edge": 300}}, "size.longest_edge 300"),
        ({"scale_factor": 3}, {}, "scale_factor 3"),
    )
    for i, (config_change, preprocessor_change, message) in enumerate(cases):
        assert_refused(tmp_path / f"case{i}", folder, {"config.json": _merged(config, config_change),
                                                        "preprocessor_config.json": _merged(preprocessor,
                                                                                            preprocessor_change)},
                       message)


def test_a_projector_llama_cpp_refuses_is_never_written(smolvlm, tmp_path, monkeypatch):
    """The writer loads every projector through libmtmd (in a child) before renaming it into place: a family spec
    that wrote keys llama.cpp refuses (here an unknown projector type) leaves no file, and says so in one line."""
    import dataclasses

    from edgepack.convert.mmproj.common import STR, K, registered
    from edgepack.convert.mmproj.smolvlm import SMOLVLM
    from edgepack.errors import BadGGUF

    def broken(*args):
        return [(K.Clip.PROJECTOR_TYPE, "no-such-projector", STR)] + SMOLVLM.metadata(*args)[1:]

    monkeypatch.setitem(registered(), "SmolVLMForConditionalGeneration", dataclasses.replace(SMOLVLM, metadata=broken))
    folder, _, _, _ = smolvlm
    with pytest.raises(BadGGUF, match="llama.cpp's mtmd cannot load the projector") as info:
        convert_mmproj(folder, tmp_path / "mmproj.gguf")
    assert "\n" not in str(info.value) and info.value.hint
    assert not list(tmp_path.iterdir())


def test_bench_times_the_first_token_of_an_image_prompt(smolvlm, tmp_path):
    """`edgepack bench --mmproj --image`: the image file decoded by libmtmd, its 7 chunks (28 tokens) encoded and
    the prompt decoded, timed to the first token; the encoding is part of it. Bad combinations are one line."""
    from PIL import Image

    from edgepack.bench import bench
    from edgepack.cli import cli
    from edgepack.errors import BadGGUF, UsageError

    folder, text, _, _ = smolvlm
    mmproj = convert_mmproj(folder, tmp_path / "mmproj.gguf").output
    png = tmp_path / "photo.png"
    Image.fromarray(nonsquare_image()).save(png)
    [m] = bench([text], mmproj=mmproj, image=png, reps=2, n_prompt=16, n_gen=4, threads=2).models
    i = m.image
    assert (i["image_tokens"], i["image_chunks"]) == (TILES * TOKENS_PER_TILE, TILES)
    assert i["prompt_tokens"] > i["image_tokens"] and len(i["ttft_s"].runs) == len(i["encode_s"].runs) == 2
    assert i["encode_s"].min > 0 and i["ttft_s"].min > 0  # timings on a shared host: their order is not asserted
    shown = CliRunner().invoke(cli, ["bench", str(text), "--mmproj", str(mmproj), "--image", str(png), "--reps", "1",
                                     "--n-prompt", "16", "--n-gen", "4", "--threads", "2"])
    assert shown.exit_code == 0, shown.output
    assert f"image photo.png = {TILES * TOKENS_PER_TILE} tokens ({TILES} chunks)" in shown.output
    assert "time to first token" in shown.output

    with pytest.raises(UsageError, match="go together"):
        bench([text], image=png)
    (tmp_path / "not-an-image.png").write_bytes(b"not a picture")
    with pytest.raises(BadGGUF, match="llama.cpp cannot read the image"):
        bench([text], mmproj=mmproj, image=tmp_path / "not-an-image.png", reps=1, n_prompt=8, n_gen=2, threads=2)


def test_eval_compares_models_with_an_image_in_the_context(smolvlm, tmp_path):
    """`edgepack eval --mmproj --image`: the text read after the image (28 image tokens as mtmd makes them); the
    reference against itself agrees exactly, its F16 conversion nearly; another image changes the logits."""
    from PIL import Image

    from edgepack.cli import cli
    from edgepack.evaluate_image import _image_prompt_logits, evaluate_image

    folder, text, _, _ = smolvlm
    mmproj = convert_mmproj(folder, tmp_path / "mmproj.gguf").output
    f16 = convert(folder, tmp_path / "text-F16.gguf", outtype="f16").output
    png, flipped = tmp_path / "photo.png", tmp_path / "flipped.png"
    Image.fromarray(nonsquare_image()).save(png)
    Image.fromarray(nonsquare_image()[::-1]).save(flipped)
    same, half = evaluate_image([text, f16], text, mmproj=mmproj, image=png, n_tokens=48, threads=2)
    assert same.image_tokens == TILES * TOKENS_PER_TILE and same.n_scored == 48
    assert same.mean_kld < 1e-9 and same.top1_agreement == 1.0 and same.ppl == pytest.approx(same.ref_ppl)
    print(f"\nF16 vs F32 text model after the image: KLD {half.mean_kld:.2e}, top-1 {half.top1_agreement:.3f}")
    assert 0 < half.mean_kld < 1e-3 and half.top1_agreement >= 0.9
    _, _, a = _image_prompt_logits(text, mmproj, png, "It was a bright cold day in April.", 16, 2)
    _, _, b = _image_prompt_logits(text, mmproj, flipped, "It was a bright cold day in April.", 16, 2)
    assert float(np.abs(a - b).max()) > 1e-3  # the image is in the context
    shown = CliRunner().invoke(cli, ["eval", str(f16), "--ref", str(text), "--mmproj", str(mmproj), "--image", str(png),
                                     "--image-tokens", "32", "--threads", "2"])
    assert shown.exit_code == 0, shown.output
    assert f"with photo.png ({TILES * TOKENS_PER_TILE} image tokens) before 32 text tokens" in shown.output


def test_idefics3_class_matches_transformers(idefics3, tmp_path):
    """Idefics3ForConditionalGeneration (SmolVLM v1's class) converts the same way: embeddings through mtmd match
    Idefics3ImageProcessor + the tower + connector, and an image prompt gives transformers' next token."""
    import torch
    from PIL import Image

    folder, text, model, processor = idefics3
    mmproj = convert_mmproj(folder, tmp_path / "mmproj.gguf", outtype="f32").output
    rgb = nonsquare_image()
    got = mtmd_image_embeddings(text, mmproj, rgb)
    max_abs, cosine = max_abs_and_cosine(_transformers_embeddings(model, processor, rgb), got)
    ids, logits = llama_cpp_image_prompt(text, mmproj, b"Look: <__media__> what is it", rgb, n_ctx=128)
    inputs = processor(images=[[Image.fromarray(rgb)]], return_tensors="pt")
    image_token = json.loads((folder / "config.json").read_text())["image_token_id"]
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([[image_token if t == -1 else t for t in ids]]),
                          pixel_values=inputs["pixel_values"],
                          pixel_attention_mask=inputs["pixel_attention_mask"]).logits[0, -1].numpy()
    print(f"\nIdefics3 mmproj F32: max|d| {max_abs:.2e} 1-cos {1 - cosine:.1e}; next-token logits max|d| "
          f"{float(np.abs(reference - logits).max()):.2e}")
    assert cosine >= MIN_COSINE and max_abs <= 2e-3
    assert int(reference.argmax()) == int(logits.argmax())
