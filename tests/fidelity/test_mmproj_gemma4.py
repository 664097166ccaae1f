"""Gemma 4 projector (``convert --mmproj``, projector type gemma4v), proved against transformers through
llama.cpp's libmtmd as tests/fidelity/test_mmproj.py proves Gemma 3's.

A tiny random-weight Gemma4ForConditionalGeneration from gemma-4-E2B-it's config: the vision tower shrunk to 2
layers of 32 with the real 16-pixel patches, 3x3 pooling, 10240-entry x/y position tables, clamped linears (their
bounds set finite, so that clamping acts) and standardisation; the text model 2 layers at E2B's real width 1536
(llama.cpp decodes an image block causally only for the E2B/E4B widths, as transformers does for them; mtmd.cpp
mtmd_decode_use_non_causal). Gemma4ImageProcessor's preprocessing (bicubic, budget of 280 tokens, mean 0, std 1).

Images: 960 x 672 (non-square, exactly the 280-token budget: both runtimes encode it unchanged, 60 x 42 patches
pooled to 20 x 14) and 500 x 350, which transformers scales up to fill the budget and llama.cpp would encode at
its own rounded size: the app resizing it to the processor's size first gets transformers' embeddings.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from edgepack.convert import convert
from edgepack.convert.mmproj import convert_mmproj
from edgepack.mtmd import image_embeddings as mtmd_image_embeddings
from tests.support.family_cases import _merged, _round_up, tokenizer_size
from tests.support.gemma_configs import GEMMA4_E2B_IT
from tests.support.tinymodels import build_model, max_abs_and_cosine
from tests.support.vision_cases import assert_refused, image_prompt_agreement, nonsquare_image

pytestmark = pytest.mark.slow  # a tiny VLM at E2B's text width built with transformers, then seconds per test

# google/gemma-4-E2B-it's preprocessor_config.json (Gemma4ImageProcessor's values as published).
GEMMA4_PREPROCESSOR = {"image_processor_type": "Gemma4ImageProcessor", "processor_class": "Gemma4Processor",
                       "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
                       "do_normalize": True, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
                       "patch_size": 16, "max_soft_tokens": 280, "pooling_kernel_size": 3}
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "num_key_value_heads": 2, "head_dim": 16, "use_clipped_linears": True, "standardize": True}
TINY_TEXT = {"hidden_size": 1536, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": 64, "global_head_dim": 128, "intermediate_size": 128, "hidden_size_per_layer_input": 16,
             "num_kv_shared_layers": 0, "layer_types": ["sliding_attention", "full_attention"]}
TOKENS = 280
MIN_COSINE = {"f32": 0.9999, "f16": 0.9999,
              # Q8_0 (the tower's matmuls, and ggml's Q8_0 matmul quantizes their inputs too): measured 1-cos 3.0e-4
              # on this 32-wide tower, where one 32-value block is a whole row; the bar is F32/F16
              "q8_0": 0.999}
# ggml's GELU reads an FP16 table (test_families' gelu_table): F32 lands near 1e-3 on embeddings up to ~0.6
MAX_ABS = {"f32": 2e-3, "f16": 3e-3, "q8_0": 5e-2}


def _set_buffers(folder) -> None:
    """Finite clamp bounds on every clippable linear (transformers initialises them to +-inf: no clamping), tight
    enough that some activations are clipped, and standardisation buffers away from 0 / 1 (build_model draws
    parameters only)."""
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    rng = np.random.default_rng(0)
    for name in tensors:
        bound = {"input_max": 1.5, "input_min": -1.5, "output_max": 0.3, "output_min": -0.3}.get(name.rsplit(".", 1)[-1])
        if bound is not None and "vision_tower" in name:
            tensors[name] = np.asarray(bound * (1 + 0.1 * rng.random()), dtype=tensors[name].dtype)
        elif name.endswith(("vision_tower.std_bias", "vision_tower.std_scale")):
            base = 1.0 if name.endswith("scale") else 0.0
            tensors[name] = (base + 0.1 * rng.standard_normal(tensors[name].shape)).astype(tensors[name].dtype)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def gemma4_vlm(tmp_path_factory, tokenizer_folders):
    """(checkpoint folder, F32 text GGUF, transformers model, its PIL image processor)."""
    import torch
    import transformers
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    root = tmp_path_factory.mktemp("gemma4-vlm")
    tok = tokenizer_folders("gemma-trained")
    vocab = _round_up(tokenizer_size(tok))
    config = _merged(GEMMA4_E2B_IT, {
        "text_config": {**TINY_TEXT, "vocab_size": vocab, "vocab_size_per_layer_input": vocab},
        "vision_config": TINY_VISION, "audio_config": None,
        # the image markers inside the tiny vocabulary (the real ids are beyond it)
        "image_token_id": vocab - 1, "boi_token_id": vocab - 2, "eoi_token_id": vocab - 3})
    folder = root / "model"
    build_model(config, folder)
    _set_buffers(folder)
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "preprocessor_config.json").write_text(json.dumps(GEMMA4_PREPROCESSOR))
    text = convert(folder, root / "text-F32.gguf", outtype="f32").output
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, text, model, Gemma4ImageProcessorPil.from_pretrained(folder)


def _transformers_embeddings(model, processor, image) -> np.ndarray:
    """Vision tower (patches, clamped linears, pooling, standardisation) + embedder on the processor's pixels."""
    import torch

    batch = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        return model.model.get_image_features(batch["pixel_values"], batch["image_position_ids"]).pooler_output[0].numpy()


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_gemma4_mmproj_embeddings_match_transformers(gemma4_vlm, tmp_path, outtype):
    from PIL import Image
    from transformers.models.gemma4.image_processing_pil_gemma4 import get_aspect_ratio_preserving_size

    folder, text, model, processor = gemma4_vlm
    result = convert_mmproj(folder, tmp_path / f"mmproj-{outtype}.gguf", outtype=outtype)
    assert (result.projector_type, result.image_size, result.image_tokens) == ("gemma4v", 768, 256)
    # libmtmd's compute buffer for its largest default image (1120 tokens), read from its log when it loaded the file
    assert 1 << 20 < result.compute_bytes < 1 << 30

    rgb = nonsquare_image(672, 960)
    got = mtmd_image_embeddings(text, result.output, rgb)
    assert got.shape == (TOKENS, TINY_TEXT["hidden_size"])
    reference = _transformers_embeddings(model, processor, Image.fromarray(rgb))
    max_abs, cosine = max_abs_and_cosine(reference, got)
    # 500 x 350: transformers scales it to fill the budget; the app resizing it to that size itself hands mtmd an
    # image it encodes unchanged.
    small = nonsquare_image(350, 500)
    height, width = get_aspect_ratio_preserving_size(350, 500, 16, TOKENS * 9, 3)
    resized = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))
    small_reference = _transformers_embeddings(model, processor, Image.fromarray(small))
    by_app = max_abs_and_cosine(small_reference, mtmd_image_embeddings(text, result.output, resized))
    raw_tokens = mtmd_image_embeddings(text, result.output, small).shape[0]
    print(f"\nGemma 4 mmproj {outtype.upper()} (embeddings up to {np.abs(reference).max():.2f}): 960x672 max|d| "
          f"{max_abs:.2e} 1-cos {1 - cosine:.1e}; 500x350 resized by the app to {width}x{height} max|d| "
          f"{by_app[0]:.2e} 1-cos {1 - by_app[1]:.1e} ({small_reference.shape[0]} tokens; as is, llama.cpp "
          f"makes {raw_tokens})")
    assert cosine >= MIN_COSINE[outtype] and max_abs <= MAX_ABS[outtype]
    assert by_app[1] >= MIN_COSINE[outtype] and by_app[0] <= MAX_ABS[outtype]
    assert raw_tokens != small_reference.shape[0]

    reader = gguf.GGUFReader(result.output)
    fields = {f: v.contents() for f, v in reader.fields.items()}
    assert fields["clip.projector_type"] == "gemma4v" and "clip.vision.projector.scale_factor" not in fields
    assert fields["clip.vision.image_mean"] == [0.0] * 3 and fields["clip.vision.image_std"] == [1.0] * 3
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["v.position_embd.weight"] == types["v.blk.0.attn_q.input_max"] == types["v.std_scale"] == "F32"
    assert types["v.blk.1.ffn_gate.weight"] == types["mm.input_projection.weight"] == outtype.upper()


def test_gemma4_image_prompt_next_token_agrees(gemma4_vlm, tmp_path):
    """A prompt with the image in it: llama.cpp (text GGUF + projector through mtmd, the image block causal at
    E2B's width) and Gemma4ForConditionalGeneration (same ids and pixels) give the same next token; another image
    moves the logits far more than the two runtimes differ."""
    import torch
    from PIL import Image

    folder, text, model, processor = gemma4_vlm
    image_token = json.loads((folder / "config.json").read_text())["image_token_id"]

    def reference(ids: list[int], rgb: np.ndarray) -> np.ndarray:
        batch = processor(images=Image.fromarray(rgb), return_tensors="pt")
        input_ids = torch.tensor([[image_token if t == -1 else t for t in ids]])
        with torch.no_grad():
            return model(input_ids=input_ids, pixel_values=batch["pixel_values"],
                         image_position_ids=batch["image_position_ids"],
                         mm_token_type_ids=(input_ids == image_token).long()).logits[0, -1].numpy()

    results = image_prompt_agreement(folder, text, reference, nonsquare_image(672, 960), TOKENS, tmp_path, "Gemma 4",
                                     320)
    # measured 8.6e-3 / 9.4e-3 / 0.13 (F32/F16/Q8_0 projector): the text model's FP16-table GELU at width 1536
    for outtype, (max_abs, other) in results.items():
        assert max_abs <= {"q8_0": 0.25}.get(outtype, 2e-2) and other > 10 * max_abs


def test_gemma4_mmproj_refusals(gemma4_vlm, tmp_path):
    """What llama.cpp's gemma4v graph cannot reproduce is refused in one line, before anything is written."""
    folder, _, _, _ = gemma4_vlm
    config = json.loads((folder / "config.json").read_text())
    cases = (
        ({}, {"resample": 2}, "resample 2"),
        ({}, {"pooling_kernel_size": 4}, "pooling_kernel_size 4"),
        ({"vision_config": {"hidden_activation": "silu"}}, {}, "vision activation 'silu'"),
        ({"vision_config": {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"}}}, {}, "rope_theta"),
        ({"vision_config": {"num_key_value_heads": 1}}, {}, "grouped key/value heads"),
        ({"vision_config": {"head_dim": 8}}, {}, "head_dim 8"),
    )
    for i, (config_change, preprocessor_change, message) in enumerate(cases):
        assert_refused(tmp_path / f"case{i}", folder, {"config.json": _merged(config, config_change),
                                                        "preprocessor_config.json": _merged(GEMMA4_PREPROCESSOR,
                                                                                            preprocessor_change)},
                       message)
