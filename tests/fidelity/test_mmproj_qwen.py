"""Qwen3-VL and Qwen3.5 projectors (``convert --mmproj``, projector type qwen3vl_merger), proved against
transformers through llama.cpp's libmtmd as tests/fidelity/test_mmproj.py proves Gemma 3's.

Tiny random-weight checkpoints from the real configs: Qwen3-VL-2B-Instruct's structure (its DeepStack mergers
kept: two of a 3-block tower, non-adjacent, so the layer-indexed names are exercised) and Qwen3.5-0.8B's
(tests/fixtures/configs; no DeepStack), with the real 16-pixel patches, 2x2 merge, 2-frame Conv3d patch kernel
and the real preprocessor_config.json (min 65536 / max 16777216 pixels, mean = std = 0.5, bicubic).

The image is non-square (330 x 230): both sides resize it to 320 x 224 (20 x 14 patches, 10 x 7 = 70 tokens),
bicubically, so preprocessing is part of what is compared. An image whose rounded size changes its aspect ratio
is letterboxed by llama.cpp (mtmd-image.cpp) where transformers stretches it: shown on 300 x 250.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import cli
from edgepack.convert import convert
from edgepack.convert.mmproj import convert_mmproj
from edgepack.errors import BadGGUF
from edgepack.mtmd import image_embeddings as mtmd_image_embeddings
from tests.support.family_cases import _merged
from tests.support.tinymodels import max_abs_and_cosine
from tests.support.vision_cases import (QWEN_VL_PREPROCESSOR, TINY_QWEN_VLM, assert_refused, image_prompt_agreement,
                                         nonsquare_image, tiny_qwen_vlm)

pytestmark = pytest.mark.slow  # tiny VLMs built with transformers, then seconds per test

IMAGE_TOKENS = 70  # 330 x 230 -> 320 x 224 -> 20 x 14 patches -> 10 x 7 merged
MIN_COSINE = 0.9999
MAX_ABS = {"f32": 1e-3, "f16": 2e-3, "q8_0": 1e-2}


@pytest.fixture(scope="module", params=sorted(TINY_QWEN_VLM))
def qwen_vlm(request, tmp_path_factory, tokenizer_folders):
    """(name, checkpoint folder, F32 text GGUF, transformers model, its PIL image processor, deepstack count)."""
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    name = request.param
    root = tmp_path_factory.mktemp(name)
    folder = tiny_qwen_vlm(name, root / "model", tokenizer_folders(TINY_QWEN_VLM[name][2]))
    deepstack = len(json.loads((folder / "config.json").read_text())["vision_config"]["deepstack_visual_indexes"])
    text = convert(folder, root / "text-F32.gguf", outtype="f32").output
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return name, folder, text, model, Qwen2VLImageProcessorPil.from_pretrained(folder), deepstack


def _transformers_embeddings(model, processor, image) -> np.ndarray:
    """Vision tower + merger (and DeepStack mergers, concatenated after it as llama.cpp hands them to the text
    model) on the processor's pixels (smart resize, bicubic, x1/255, normalise)."""
    import torch

    batch = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        out = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
    deepstack = getattr(out, "deepstack_features", None) or []  # Qwen3.5's tower has none
    return torch.cat([out.pooler_output[0]] + [f[0] for f in deepstack], dim=-1).numpy()


def _letterboxed(rgb: np.ndarray, width: int, height: int):
    """What mtmd's dynamic-size preprocessor feeds the tower when the rounded size changes the aspect ratio:
    scaled by min(w'/w, h'/h) (float), sides rounded up, Pillow-bicubic resized, centred on black."""
    from PIL import Image

    h, w, _ = rgb.shape
    scale = min(np.float32(width) / np.float32(w), np.float32(height) / np.float32(h))
    new_w, new_h = min(int(np.ceil(np.float32(w) * scale)), width), min(int(np.ceil(np.float32(h) * scale)), height)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(Image.fromarray(rgb).resize((new_w, new_h), Image.BICUBIC), ((width - new_w) // 2,
                                                                              (height - new_h) // 2))
    return canvas


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_qwen_mmproj_embeddings_match_transformers(qwen_vlm, tmp_path, outtype):
    from PIL import Image

    name, folder, text, model, processor, deepstack = qwen_vlm
    result = convert_mmproj(folder, tmp_path / f"mmproj-{outtype}.gguf", outtype=outtype)
    assert result.projector_type == "qwen3vl_merger"
    # libmtmd's compute buffer for its largest default image (4096 tokens), read from its log when it loaded the file
    assert 1 << 20 < result.compute_bytes < 1 << 30
    hidden = json.loads((folder / "config.json").read_text())["text_config"]["hidden_size"]

    rgb = nonsquare_image(230, 330)
    got = mtmd_image_embeddings(text, result.output, rgb)
    assert got.shape == (IMAGE_TOKENS, hidden * (1 + deepstack))
    reference = _transformers_embeddings(model, processor, Image.fromarray(rgb))
    max_abs, cosine = max_abs_and_cosine(reference, got)
    # The rounded size changes the aspect ratio: llama.cpp letterboxes, transformers stretches.
    odd = nonsquare_image(250, 300)  # -> 288 x 256; llama.cpp fits 288 x 240 inside it
    letterboxed = max_abs_and_cosine(_transformers_embeddings(model, processor, _letterboxed(odd, 288, 256)),
                                     mtmd_image_embeddings(text, result.output, odd))
    _, stretched_cos = max_abs_and_cosine(_transformers_embeddings(model, processor, Image.fromarray(odd)),
                                          mtmd_image_embeddings(text, result.output, odd))
    print(f"\n{name} mmproj {outtype.upper()} (embeddings up to {np.abs(reference).max():.2f}): 330x230 max|d| "
          f"{max_abs:.2e} 1-cos {1 - cosine:.1e}; 300x250 letterboxed max|d| {letterboxed[0]:.2e} "
          f"1-cos {1 - letterboxed[1]:.1e}, vs transformers' stretch cos {stretched_cos:.4f}")
    assert cosine >= MIN_COSINE and max_abs <= MAX_ABS[outtype]
    assert letterboxed[1] >= MIN_COSINE and letterboxed[0] <= MAX_ABS[outtype]
    assert stretched_cos < 0.9999

    reader = gguf.GGUFReader(result.output)
    fields = {f: v.contents() for f, v in reader.fields.items()}
    vision = json.loads((folder / "config.json").read_text())["vision_config"]
    assert fields["clip.projector_type"] == "qwen3vl_merger" and fields["clip.vision.spatial_merge_size"] == 2
    flags = fields.get("clip.vision.is_deepstack_layers")
    assert flags == [i in vision.get("deepstack_visual_indexes", []) for i in range(vision["depth"])]
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["v.position_embd.weight"] == "F32"
    assert types["v.patch_embd.weight"] == types["v.patch_embd.weight.1"] == ("F32" if outtype == "f32" else "F16")
    assert types["v.blk.0.attn_qkv.weight"] == types["mm.0.weight"] == outtype.upper()
    assert sum(n.startswith("v.deepstack.") and n.endswith("fc1.weight") for n in types) == deepstack


def test_qwen_image_prompt_next_token_agrees(qwen_vlm, tmp_path):
    """A prompt with the image in it: llama.cpp (text GGUF + projector through mtmd, which gives the image
    tokens their M-RoPE grid positions and the DeepStack embeddings to the first layers) and transformers (the
    same ids and pixels, positions from its get_rope_index) give the same next token; another image moves the
    logits far more than the two runtimes differ."""
    import torch
    from PIL import Image

    name, folder, text, model, processor, _ = qwen_vlm
    image_token = json.loads((folder / "config.json").read_text())["image_token_id"]

    def reference(ids: list[int], rgb: np.ndarray) -> np.ndarray:
        batch = processor(images=Image.fromarray(rgb), return_tensors="pt")
        input_ids = torch.tensor([[image_token if t == -1 else t for t in ids]])
        with torch.no_grad():
            return model(input_ids=input_ids, pixel_values=batch["pixel_values"],
                         image_grid_thw=batch["image_grid_thw"],
                         mm_token_type_ids=(input_ids == image_token).int()).logits[0, -1].numpy()

    results = image_prompt_agreement(folder, text, reference, nonsquare_image(230, 330), IMAGE_TOKENS, tmp_path,
                                     name, 160)
    # measured F32/F16 4.8e-5/7.1e-5 (Qwen3-VL), 2.7e-4/4.1e-4 (Qwen3.5); Q8_0 1.9e-3 and 1.8e-2
    for outtype, (max_abs, other) in results.items():
        assert max_abs <= {"q8_0": 3e-2}.get(outtype, 5e-4) and other > 10 * max_abs


def test_qwen_mmproj_refusals(qwen_vlm, tmp_path):
    """What llama.cpp's Qwen-VL path cannot reproduce is refused in one line, before anything is written."""
    name, folder, _, _, _, _ = qwen_vlm
    config = json.loads((folder / "config.json").read_text())
    cases = (
        ({}, {"resample": 2}, "resample 2"),
        ({"vision_config": {"hidden_act": "gelu"}}, {}, "vision activation 'gelu'"),
        ({"vision_config": {"temporal_patch_size": 3}}, {}, "temporal_patch_size 3"),
        ({"vision_config": {"num_position_embeddings": 60}}, {}, "not a square grid"),
        ({"vision_config": {"out_hidden_size": 48}}, {}, "out_hidden_size 48"),
        ({}, {"merge_size": 4}, "merge_size 4"),
        ({"vision_config": {"deepstack_visual_indexes": [0, 9]}}, {}, "deepstack_visual_indexes"),
    )
    for i, (config_change, preprocessor_change, message) in enumerate(cases):
        assert_refused(tmp_path / f"case{i}", folder, {"config.json": _merged(config, config_change),
                                                        "preprocessor_config.json": _merged(QWEN_VL_PREPROCESSOR,
                                                                                            preprocessor_change)},
                       message)


def test_qwen_convert_cli_writes_both(qwen_vlm, tmp_path):
    """`convert SRC --mmproj` converts the text model (qwen3vl / qwen35) and writes the projector beside it."""
    name, folder, _, _, _, _ = qwen_vlm
    out = tmp_path / "text.gguf"
    result = CliRunner().invoke(cli, ["convert", str(folder), "-o", str(out), "--mmproj", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    arch = gguf.GGUFReader(out).fields["general.architecture"].contents()
    assert arch == {"qwen3-vl-2b": "qwen3vl", "qwen3.5-0.8b": "qwen35"}[name]
    assert payload["mmproj"]["projector_type"] == "qwen3vl_merger"
    assert (tmp_path / "mmproj-model-F16.gguf").is_file()


def test_fit_counts_the_projector(qwen_vlm, tmp_path):
    """`fit --mmproj`: every variant's memory holds the projector's tensors and the compute buffer libmtmd reserved
    when it loaded the file (the same figure convert_mmproj measured), and nothing else changes."""
    from edgepack.ggufheader import read_header

    name, folder, text, _, _, _ = qwen_vlm
    made = convert_mmproj(folder, tmp_path / "mmproj.gguf")
    runs = {}
    for extra in ([], ["--mmproj", str(made.output)]):
        result = CliRunner().invoke(cli, ["fit", str(text), "-p", "pixel-8", "--ctx", "256", "--json", *extra])
        assert result.exit_code == 0, result.output
        runs[bool(extra)] = json.loads(result.output)["rows"][0]
    expected_mb = (read_header(made.output).data_bytes + made.compute_bytes) / 1e6
    assert "projector_mb" not in runs[False]["memory"]
    assert runs[True]["memory"]["projector_mb"] == pytest.approx(expected_mb, abs=0.01)
    assert runs[True]["memory_total_mb"] == pytest.approx(runs[False]["memory_total_mb"] + expected_mb, abs=0.02)
    wrong = CliRunner().invoke(cli, ["fit", str(text), "-p", "pixel-8", "--mmproj", str(text)])
    assert isinstance(wrong.exception, BadGGUF) and "not a multimodal projector" in str(wrong.exception)
