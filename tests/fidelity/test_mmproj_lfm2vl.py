"""LFM2-VL projectors (``edgepack convert --mmproj``), proved against transformers through llama.cpp's libmtmd on
non-square images: a small one that both runtimes upscale to one tile, and a large one that both cut into
512-pixel tiles plus a thumbnail.

The checkpoint: a tiny random-weight Lfm2VlForConditionalGeneration from LiquidAI/LFM2-VL-450M's config.json
(tests/fixtures/configs, the first-release copy: model_type "lfm2-vl" and its auto_map for remote code, which
transformers 5.x names "lfm2_vl" natively), the SigLIP2 tower shrunk to 2 layers of 64 with the real 16-pixel
patches, 16 x 16 position table and downsample factor 2, the text model to 2 LFM2 layers. Its
preprocessor_config.json and processor_config.json as published, except use_thumbnail: the first release says
false, which llama.cpp does not reproduce for tiled images (its LFM2 preprocessor always adds the thumbnail;
convert refuses the published file, see test_lfm2vl_mmproj_refusals), so the test sets it true, as transformers'
Lfm2VlImageProcessor defaults it. The tiling limits (64-256 tokens, 512-pixel tiles, 2-10 tiles) are llama.cpp's
hard-coded ones, so they are not shrunk: the images are full size.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack.convert import convert
from edgepack.convert.mmproj import convert_mmproj
from edgepack.mtmd import image_embeddings as mtmd_image_embeddings
from tests.support.family_cases import _merged
from tests.support.tinymodels import max_abs_and_cosine
from tests.support.vision_cases import (assert_refused, build_lfm2vl, lfm2vl_config, llama_cpp_image_prompt,
                                        nonsquare_image)

pytestmark = pytest.mark.slow  # a tiny VLM built with transformers, then seconds per test

TINY_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_TEXT = {"hidden_size": 64, "block_dim": 64, "conv_dim": 64, "conv_dim_out": 64, "intermediate_size": 128,
             "block_ff_dim": 128, "num_hidden_layers": 2, "layer_types": ["conv", "full_attention"],
             "num_attention_heads": 2, "num_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 4096}
MIN_COSINE = 0.9999  # the bar
# (height, width) -> what both runtimes make of it: 80 x 48 is upscaled to 352 x 224 (77 tokens); 1000 x 600 is cut
# into 3 x 2 tiles of 512 (256 tokens each) plus a 640 x 384 thumbnail (240 tokens)
IMAGES = {(48, 80): 77, (600, 1000): 6 * 256 + 240}


@pytest.fixture(scope="module")
def lfm2vl(tmp_path_factory):
    """(checkpoint folder, F32 text GGUF, transformers model, the image processor's function)."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("lfm2vl")
    folder = build_lfm2vl(root, vision=TINY_VISION, text=TINY_TEXT, projector_hidden=128)
    text = convert(folder, root / "text-F32.gguf", outtype="f32").output
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, text, model, lfm2vl_pixels


def lfm2vl_pixels(rgb: np.ndarray, patch: int = 16, factor: int = 2, tile: int = 512, min_tokens: int = 64,
                  max_tokens: int = 256, min_tiles: int = 2, max_tiles: int = 10, tolerance: float = 2.0,
                  letterbox: bool = False) -> dict:
    """transformers' Lfm2VlImageProcessor, step by step, for one image with LFM2-VL-450M's settings (the test
    environment has no torchvision, which that class imports, and no torchvision wheel for the CPU torch 2.13.0 is
    in the package registries; ``scripts/check_lfm2vl_preprocessing.py`` compares the two where it is installed): a single tile resized so both sides are multiples of patch x factor within
    min-max tokens, or a large image resized to a grid of tiles (the tile grid closest to its aspect ratio) plus a
    thumbnail; bilinear with antialiasing on uint8 (torchvision's resize of a tensor), x1/255, normalised with
    mean/std 0.5, cut into patches flattened (row, column, channel), padded to the longest sequence.
    ``letterbox``: the grid as llama.cpp 0.3.36 makes it instead (mtmd-image.cpp, PAD_CEIL for LFM2's refined
    image): the image scaled to fit the grid with its aspect ratio kept (sides rounded up) and centred on black,
    where transformers stretches it."""
    import math

    import torch

    unit = patch * factor
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    height, width = rgb.shape[:2]

    def resize(h: int, w: int):
        return torch.nn.functional.interpolate(image, size=(h, w), mode="bilinear", align_corners=False,
                                               antialias=True)

    h_bar, w_bar = max(unit, round(height / unit) * unit), max(unit, round(width / unit) * unit)
    if h_bar * w_bar > max_tokens * unit * unit:
        beta = math.sqrt(height * width / (max_tokens * unit * unit))
        h_bar = max(unit, math.floor(height / beta / unit) * unit)
        w_bar = max(unit, math.floor(width / beta / unit) * unit)
    elif h_bar * w_bar < min_tokens * unit * unit:
        beta = math.sqrt(min_tokens * unit * unit / (height * width))
        h_bar, w_bar = math.ceil(height * beta / unit) * unit, math.ceil(width * beta / unit) * unit
    large = (max(patch, round(height / unit) * unit) * max(patch, round(width / unit) * unit)
             > max_tokens * unit * unit * tolerance)
    if large:
        ratios = sorted({(w, h) for n in range(min_tiles, max_tiles + 1) for w in range(1, n + 1)
                         for h in range(1, n + 1) if min_tiles <= w * h <= max_tiles}, key=lambda r: r[0] * r[1])
        best, best_diff = (1, 1), float("inf")
        for w, h in ratios:
            diff = abs(width / height - w / h)
            if diff < best_diff:
                best, best_diff = (w, h), diff
            elif diff == best_diff and width * height > 0.5 * tile * tile * w * h:
                best = (w, h)
        grid_w, grid_h = best
        whole = resize(tile * grid_h, tile * grid_w)
        if letterbox:
            scale = min(np.float32(tile * grid_w) / np.float32(width), np.float32(tile * grid_h) / np.float32(height))
            fit_w = min(math.ceil(np.float32(width) * scale), tile * grid_w)
            fit_h = min(math.ceil(np.float32(height) * scale), tile * grid_h)
            top, left = (tile * grid_h - fit_h) // 2, (tile * grid_w - fit_w) // 2
            whole = torch.zeros_like(whole)
            whole[..., top:top + fit_h, left:left + fit_w] = resize(fit_h, fit_w)
        frames = [whole[..., r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                  for r in range(grid_h) for c in range(grid_w)] + [resize(h_bar, w_bar)]
    else:
        frames = [resize(h_bar, w_bar)]
    longest = max(max_tokens * factor ** 2, (tile // patch) ** 2)
    pixels, shapes, masks = [], [], []
    for frame in frames:
        x = (frame.float() / 255 - 0.5) / 0.5
        _, channels, h, w = x.shape
        x = x.reshape(1, channels, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
        x = x.reshape(-1, patch * patch * channels)
        mask = torch.zeros(longest, dtype=torch.int32)
        mask[:len(x)] = 1
        pixels.append(torch.nn.functional.pad(x, (0, 0, 0, longest - len(x))))
        shapes.append([h // patch, w // patch])
        masks.append(mask)
    return {"pixel_values": torch.stack(pixels), "spatial_shapes": torch.tensor(shapes),
            "pixel_attention_mask": torch.stack(masks)}


def _transformers_embeddings(model, processor, rgb: np.ndarray, **options) -> np.ndarray:
    """The image processor (resize or tile, x1/255, normalise, patchify) + transformers' SigLIP2 tower +
    projector: (tokens, hidden), tiles row by row and the thumbnail last."""
    import torch

    inputs = processor(rgb, **options)
    with torch.no_grad():
        out = model.get_image_features(inputs["pixel_values"], inputs["spatial_shapes"],
                                       inputs["pixel_attention_mask"])
    return torch.cat(list(out.pooler_output)).numpy()


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_lfm2vl_mmproj_embeddings_match_transformers(lfm2vl, tmp_path, outtype):
    import gguf

    folder, text, model, processor = lfm2vl
    result = convert_mmproj(folder, tmp_path / f"mmproj-{outtype}.gguf", outtype=outtype)
    assert (result.projector_type, result.image_size, result.image_tokens) == ("lfm2", 256, 64)
    for (height, width), tokens in IMAGES.items():
        rgb = nonsquare_image(height, width)
        got = mtmd_image_embeddings(text, result.output, rgb)
        # what llama.cpp encodes (for the tiled image: its letterboxed grid), through transformers' tower
        reference = _transformers_embeddings(model, processor, rgb, letterbox=True)
        assert got.shape == reference.shape == (tokens, 64)
        max_abs, cosine = max_abs_and_cosine(reference, got)
        # ... and transformers' own preprocessing, which stretches the image over the grid
        _, cosine_stretched = max_abs_and_cosine(_transformers_embeddings(model, processor, rgb), got)
        print(f"\nLFM2-VL mmproj {outtype.upper()} {width}x{height} ({tokens} embeddings up to "
              f"{np.abs(reference).max():.2f}): max|d| {max_abs:.2e} 1-cos {1 - cosine:.1e}; against "
              f"transformers' stretched grid cos {cosine_stretched:.4f}")
        assert cosine >= MIN_COSINE
        assert max_abs <= {"f32": 1e-3, "f16": 1e-3, "q8_0": 1e-2}[outtype]  # measured 1.6e-4, 1.8e-4, 3.6e-3
        if tokens == IMAGES[(48, 80)]:  # one tile: no grid, the same pixels
            assert cosine_stretched == cosine
        else:
            assert cosine_stretched < 0.999

    reader = gguf.GGUFReader(result.output)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    assert fields["clip.projector_type"] == "lfm2" and fields["clip.vision.projector.scale_factor"] == 2
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors["v.patch_embd.weight"].shape) == [16, 16, 3, 64]  # ggml order: a conv kernel
    assert tensors["v.patch_embd.weight"].tensor_type.name == "F32"
    assert tensors["mm.1.weight"].tensor_type.name == outtype.upper()


def test_lfm2vl_image_prompt_next_token_agrees(lfm2vl, tmp_path):
    """A prompt with the small image in it: llama.cpp (text GGUF + mmproj through mtmd, <|image_start|> ...
    <|image_end|>) and transformers (Lfm2VlForConditionalGeneration with the same ids and pixels) give the same
    next token."""
    import torch

    folder, text, model, processor = lfm2vl
    config = json.loads((folder / "config.json").read_text())
    rgb = nonsquare_image()
    inputs = processor(rgb)
    for outtype in ("f32", "f16", "q8_0"):
        mmproj = convert_mmproj(folder, tmp_path / f"mmproj-{outtype}.gguf", outtype=outtype).output
        ids, got = llama_cpp_image_prompt(text, mmproj, b"Look: <__media__> what is it", rgb, n_ctx=128)
        assert ids.count(-1) == IMAGES[(48, 80)]
        input_ids = torch.tensor([[config["image_token_id"] if t == -1 else t for t in ids]])
        with torch.no_grad():
            reference = model(input_ids=input_ids, pixel_values=inputs["pixel_values"],
                              spatial_shapes=inputs["spatial_shapes"],
                              pixel_attention_mask=inputs["pixel_attention_mask"]).logits[0, -1].numpy()
        max_abs = float(np.abs(reference - got).max())
        print(f"\nLFM2-VL image prompt {outtype.upper()}: {len(ids)} tokens ({ids.count(-1)} image), next-token "
              f"logits max|d| {max_abs:.2e}, top-1 {int(reference.argmax())} vs {int(got.argmax())}")
        assert int(reference.argmax()) == int(got.argmax())
        assert max_abs <= {"q8_0": 5e-3}.get(outtype, 5e-4)  # measured 4.0e-5 (F32), 5.4e-5 (F16), 2.0e-3 (Q8_0)


def test_lfm2vl_mmproj_refusals(lfm2vl, tmp_path):
    """What llama.cpp's LFM2 path cannot reproduce is refused in one line, before anything is written; the
    first-release processor_config.json (use_thumbnail false) among them."""
    folder, _, _, _ = lfm2vl
    config = json.loads((folder / "config.json").read_text())
    processor = json.loads((folder / "processor_config.json").read_text())
    cases = (
        ({}, {"use_thumbnail": False}, "use_thumbnail False"),
        ({"use_thumbnail": False}, {}, "config.json sets use_thumbnail False"),
        ({}, {"max_image_tokens": 128}, "max_image_tokens 128"),
        ({}, {"tile_size": 384}, "tile_size 384"),
        ({"vision_feature_layer": -2}, {}, "vision_feature_layer -2"),
        ({"projector_hidden_act": "relu"}, {}, "projector activation 'relu'"),
        ({}, {"image_processor": {"resample": 3}}, "resample 3"),
    )
    for i, (config_change, processor_change, message) in enumerate(cases):
        preprocessor = lfm2vl_config("preprocessor_config")
        if "image_processor" in processor_change:  # transformers 5.x's layout: the settings nested there
            preprocessor.pop("resample")
        assert_refused(tmp_path / f"case{i}", folder, {"config.json": _merged(config, config_change),
                                                        "processor_config.json": _merged(processor, processor_change),
                                                        "preprocessor_config.json": preprocessor}, message)


def test_fit_projects_an_image_as_llama_cpp_runs_it(lfm2vl, tmp_path):
    """``edgepack fit --mmproj``: a full LFM2-VL tile (512 x 512) is the 256 tokens mtmd makes of it; each row adds
    the projector's memory and projects the image's time to first token (encoding FLOPs at the device's prompt
    GFLOP/s, its tokens at the projected prompt speed)."""
    from click.testing import CliRunner

    from edgepack.cli import cli
    from edgepack.fit import MB, Variant, describe_gguf, describe_projector, fit, projector_bytes
    from edgepack.profiles import get_profile

    folder, text, _, _ = lfm2vl
    result = convert_mmproj(folder, tmp_path / "mmproj.gguf")
    desc = describe_projector(result.output)
    assert (desc.projector_type, desc.image_size, desc.patches, desc.image_tokens) == ("lfm2", 512, 1024, 256)
    assert desc.n_params == result.n_params and desc.quant_family == "f16"
    assert mtmd_image_embeddings(text, result.output, nonsquare_image(512, 512)).shape[0] == desc.image_tokens

    profile = get_profile("pixel-8")
    extra = projector_bytes(result.output, result.compute_bytes)
    [plain] = fit([Variant(describe_gguf(text))], [profile]).rows
    [row] = fit([Variant(describe_gguf(text))], [profile], projector_bytes=extra, image=desc).rows
    assert row.memory_total_mb == pytest.approx(plain.memory_total_mb + extra / MB, abs=0.02)
    gflops = profile.gflops(row.backend, "f16").value
    assert row.image["image_tokens"] == 256 and plain.image is None
    assert row.image["encode_s"] == pytest.approx(desc.flops / (gflops * 1e9), rel=1e-3)
    assert row.image["prefill_s"] == pytest.approx(256 / row.pp_tokens_per_s, rel=1e-3)
    assert row.image["ttft_s"] == pytest.approx(row.image["encode_s"] + row.image["prefill_s"], rel=1e-3)
    shown = CliRunner().invoke(cli, ["fit", str(text), "--mmproj", str(result.output), "-p", "pixel-8"])
    assert shown.exit_code == 0, shown.output
    assert "one image (256 tokens) adds" in shown.output
