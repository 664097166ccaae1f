"""Multimodal projectors (``edgepack convert --mmproj``): the vision part of a vision-language checkpoint as
llama.cpp's mmproj GGUF, proved by encoding a non-square image through llama.cpp's libmtmd (llama-cpp-python's
bindings, the projector loaded beside the converted text model) and through transformers.

Gemma 3: a tiny random-weight Gemma3ForConditionalGeneration from gemma-3-4b-it's config, its SigLIP tower
shrunk (2 layers, 64 wide) with the real 14-pixel patches and the real 4x4 average pooling (112-pixel images:
8x8 patches -> 2x2 = 4 tokens, mm_tokens_per_image 4), and gemma-3-4b-it's preprocessor_config.json with its
size shrunk to 112.

What llama.cpp 0.3.36 does with a non-square image differs from transformers: Gemma3ImageProcessor stretches it
to the square input, mtmd (mtmd-image.cpp, PAD_CEIL for Gemma 3) keeps its aspect ratio and pads it with black.
The tests show both: llama.cpp agrees with transformers on the image it actually encodes (letterboxed), and on
the original image when the app stretches it to image_size itself (then mtmd does not resize).
"""

from __future__ import annotations

import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import cli
from edgepack.convert import convert
from edgepack.convert.mmproj import convert_mmproj
from edgepack.errors import BadCheckpoint, UnsupportedArchitecture
from edgepack.mtmd import image_embeddings as mtmd_image_embeddings
from tests.support.family_cases import _merged, _round_up, tokenizer_size
from tests.support.gemma_configs import GEMMA3_4B_IT, GEMMA3_4B_IT_PREPROCESSOR
from tests.support.tinymodels import build_model, max_abs_and_cosine
from tests.support.vision_cases import llama_cpp_image_prompt, nonsquare_image

# The tiny VLM costs ~6 CPU-seconds: F32 embeddings, the CLI and the refusals stay in the fast tier (Gemma 3 is the
# projector family there); the other types, the bundle and the image prompt run in the full one.

IMAGE_SIZE = 112  # 8 x 8 patches of 14 pixels, pooled 4 x 4 (gemma-3-4b-it's factor: 64 x 64 -> 16 x 16)
TINY_VISION = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": IMAGE_SIZE}
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32}
TOKENS = 4
# The bar for every family: image embeddings agree to cosine >= 0.9999.
MIN_COSINE = 0.9999
MAX_ABS = {"f32": 1e-3, "f16": 1e-2, "q8_0": 5e-3}


def _letterboxed(rgb: np.ndarray, size: int):
    """What mtmd-image.cpp's fixed-size preprocessor feeds Gemma 3's tower: scaled by min(size/w, size/h) (float),
    sides rounded up, Pillow-bilinear resized, centred on black."""
    from PIL import Image

    height, width, _ = rgb.shape
    scale = min(np.float32(size) / np.float32(width), np.float32(size) / np.float32(height))
    new_w = min(int(np.ceil(np.float32(width) * scale)), size)
    new_h = min(int(np.ceil(np.float32(height) * scale)), size)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR), ((size - new_w) // 2,
                                                                               (size - new_h) // 2))
    return canvas


@pytest.fixture(scope="module")
def gemma3_vlm(tmp_path_factory, tokenizer_folders):
    """(checkpoint folder, F32 text GGUF, transformers model, its image processor)."""
    import torch
    import transformers
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    root = tmp_path_factory.mktemp("gemma3-vlm")
    tok = tokenizer_folders("gemma-trained")
    config = _merged(GEMMA3_4B_IT, {"text_config": {**TINY_TEXT, "vocab_size": _round_up(tokenizer_size(tok))},
                                    "vision_config": TINY_VISION, "mm_tokens_per_image": TOKENS})
    config.pop("transformers_version")
    folder = root / "model"
    build_model(config, folder)
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    preprocessor = _merged(GEMMA3_4B_IT_PREPROCESSOR, {"size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                       "image_seq_length": TOKENS})
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    text = convert(folder, root / "text-F32.gguf", outtype="f32").output
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, text, model, Gemma3ImageProcessorPil.from_pretrained(folder)


def _transformers_embeddings(model, processor, image) -> np.ndarray:
    """Vision tower + projector on the processor's pixels (resize, x1/255, normalise)."""
    import torch

    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model.get_image_features(pixels).pooler_output[0].numpy()


@pytest.mark.parametrize("outtype", ["f32", pytest.param("f16", marks=pytest.mark.slow),
                                     pytest.param("q8_0", marks=pytest.mark.slow)])
def test_gemma3_mmproj_embeddings_match_transformers(gemma3_vlm, tmp_path, outtype):
    from PIL import Image

    folder, text, model, processor = gemma3_vlm
    result = convert_mmproj(folder, tmp_path / f"mmproj-{outtype}.gguf", outtype=outtype)
    assert (result.projector_type, result.image_tokens, result.image_size) == ("gemma3", TOKENS, IMAGE_SIZE)
    rgb = nonsquare_image()
    assert rgb.shape[0] != rgb.shape[1]

    # 1. The non-square image as an app hands it to mtmd: llama.cpp letterboxes it; transformers on that image.
    got = mtmd_image_embeddings(text, result.output, rgb)
    assert got.shape == (TOKENS, 64)
    max_abs, cosine = max_abs_and_cosine(_transformers_embeddings(model, processor, _letterboxed(rgb, IMAGE_SIZE)),
                                         got)
    # 2. The app stretches it to image_size first (as Gemma3ImageProcessor does): transformers on the original.
    stretched = np.asarray(Image.fromarray(rgb).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    reference = _transformers_embeddings(model, processor, Image.fromarray(rgb))
    max_abs_s, cosine_s = max_abs_and_cosine(reference, mtmd_image_embeddings(text, result.output, stretched))
    # 3. ... which is not what mtmd does with the raw non-square image (the difference the README states).
    _, cosine_raw = max_abs_and_cosine(reference, got)
    print(f"\nGemma 3 mmproj {outtype.upper()} (embeddings up to {np.abs(reference).max():.2f}): letterboxed "
          f"max|d| {max_abs:.2e} 1-cos {1 - cosine:.1e}; stretched by the app max|d| {max_abs_s:.2e} "
          f"1-cos {1 - cosine_s:.1e}; raw non-square vs transformers' stretch cos {cosine_raw:.4f}")
    assert cosine >= MIN_COSINE and max_abs <= MAX_ABS[outtype]
    assert cosine_s >= MIN_COSINE and max_abs_s <= MAX_ABS[outtype]
    assert cosine_raw < 0.999

    reader = gguf.GGUFReader(result.output)
    fields = {name: f.contents() for name, f in reader.fields.items()}
    assert fields["general.architecture"] == "clip" and fields["clip.projector_type"] == "gemma3"
    assert fields["clip.vision.image_mean"] == pytest.approx([0.5] * 3)
    assert "clip.vision.projector.scale_factor" not in fields  # 4, clip.cpp's Gemma 3 default
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["v.patch_embd.weight"] == types["v.position_embd.weight"] == "F32"
    assert types["v.blk.0.attn_q.weight"] == types["v.blk.1.ffn_down.weight"] == outtype.upper()
    # llama.cpp's converter never quantizes the projection matrix (clip.cpp transposes it)
    assert types["mm.input_projection.weight"] == ("F32" if outtype == "f32" else "F16")


def test_gemma3_mmproj_cli_and_hub_layout(gemma3_vlm, tmp_path):
    """`convert --mmproj` writes both files (default name beside the output); the Hub's 4.x layout
    (vision_tower.vision_model.*) gives the same projector."""
    from safetensors.numpy import load_file, save_file

    folder, _, _, _ = gemma3_vlm
    out = tmp_path / "text.gguf"
    result = CliRunner().invoke(cli, ["convert", str(folder), "-o", str(out), "--mmproj", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    mmproj = tmp_path / "mmproj-model-F16.gguf"
    assert payload["mmproj"]["output"] == str(mmproj) and payload["convert"]["output"] == str(out)
    assert mmproj.is_file() and out.is_file()
    human = CliRunner().invoke(cli, ["convert", str(folder), "-o", str(out), "--mmproj", str(tmp_path / "p.gguf"),
                                     "--mmproj-outtype", "f32", "--force"])
    assert human.exit_code == 0, human.output
    assert "projector gemma3" in human.output
    assert f"{TOKENS} tokens per {IMAGE_SIZE}x{IMAGE_SIZE} image tile" in human.output
    swallowed = CliRunner().invoke(cli, ["convert", "--mmproj", str(folder), "-o", str(out)])
    assert swallowed.exit_code == 2 and "put --mmproj after SRC" in swallowed.output

    hub = tmp_path / "hub"
    hub.mkdir()
    for f in folder.iterdir():
        if f.suffix != ".safetensors":
            (hub / f.name).write_bytes(f.read_bytes())
    tensors = load_file(folder / "model.safetensors")
    save_file({n.replace("vision_tower.", "vision_tower.vision_model.", 1): t for n, t in tensors.items()},
              hub / "model.safetensors")
    convert_mmproj(hub, tmp_path / "hub.gguf")
    expected = {t.name: np.array(t.data) for t in gguf.GGUFReader(mmproj).tensors}
    got = {t.name: np.array(t.data) for t in gguf.GGUFReader(tmp_path / "hub.gguf").tensors}
    assert got.keys() == expected.keys() and all(np.array_equal(got[n], expected[n]) for n in expected)


def test_gemma3_mmproj_refusals(gemma3_vlm, tmp_path):
    """What llama.cpp's Gemma 3 path cannot reproduce is refused in one line, before anything is written."""
    folder, _, _, _ = gemma3_vlm
    config = json.loads((folder / "config.json").read_text())
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    cases = (
        ({"mm_tokens_per_image": 9}, {"image_seq_length": 9}, "do not pool evenly"),
        ({}, {"resample": 3}, "resample 3"),
        ({}, {"do_pan_and_scan": True}, "do_pan_and_scan"),
        ({}, {"size": {"height": 224, "width": 224}}, "takes 112x112"),
        ({}, {"image_seq_length": 16}, "image_seq_length 16"),
        ({"vision_config": {"hidden_act": "relu"}}, {}, "vision activation 'relu'"),
        ({}, None, "preprocessor_config.json is missing"),
    )
    for i, (config_change, preprocessor_change, message) in enumerate(cases):
        case = tmp_path / f"case{i}"
        case.mkdir()
        (case / "model.safetensors").symlink_to(folder / "model.safetensors")
        (case / "config.json").write_text(json.dumps(_merged(config, config_change)))
        if preprocessor_change is not None:
            (case / "preprocessor_config.json").write_text(json.dumps(_merged(preprocessor, preprocessor_change)))
        with pytest.raises(UnsupportedArchitecture) as info:
            convert_mmproj(case, tmp_path / "out.gguf")
        assert message in str(info.value) and info.value.hint and "\n" not in str(info.value)
        assert not (tmp_path / "out.gguf").exists()
    # The CLI refuses before converting the text model: neither file is written.
    (tmp_path / "case1" / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    done = subprocess.run([sys.executable, "-m", "edgepack", "convert", str(tmp_path / "case1"), "-o",
                           str(tmp_path / "t.gguf"), "--mmproj"], capture_output=True, text=True, timeout=300)
    assert done.returncode == UnsupportedArchitecture.exit_code, done.stderr
    assert "resample 3" in done.stderr and "hint:" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.gguf"))
    # A text-only class has no projector; a checkpoint without vision tensors has nothing to write.
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UnsupportedArchitecture, match="no multimodal projector converter"):
        convert_mmproj(llama, tmp_path / "out.gguf")
    from safetensors.numpy import load_file, save_file

    text_only = tmp_path / "text-only"
    text_only.mkdir()
    for f in ("config.json", "preprocessor_config.json"):
        (text_only / f).write_bytes((folder / f).read_bytes())
    save_file({n: t for n, t in load_file(folder / "model.safetensors").items() if "vision" not in n
               and "multi_modal" not in n}, text_only / "model.safetensors")
    with pytest.raises(BadCheckpoint, match="no vision tower tensors"):
        convert_mmproj(text_only, tmp_path / "out.gguf")


@pytest.mark.slow
def test_bundle_ships_and_verifies_the_projector(gemma3_vlm, tmp_path):
    """Role mmproj in the manifest, hashed; verify checks its facts against the text model and that mtmd loads it
    and encodes an image; a changed byte, a claim that is not the GGUF's, or a projector for another width fails."""
    from edgepack.bundle import read_manifest, seal, verify_bundle, write_bundle
    from edgepack.errors import BadGGUF, VerifyError

    folder, text, _, _ = gemma3_vlm
    mmproj = convert_mmproj(folder, tmp_path / "mmproj.gguf").output
    source = {"kind": "local", "name": "gemma3-tiny", "folder": "model", "license": None, "sha256": "0" * 64}
    bundle = tmp_path / "bundle"
    write_bundle(bundle, model=text, quant="F32", profile={"name": "pixel-8"}, source=source, mmproj=mmproj,
                 model_name="gemma3-tiny")
    manifest = read_manifest(bundle)
    roles = {f["path"]: f["role"] for f in manifest["files"]}
    assert roles["mmproj-gemma3-tiny.gguf"] == "mmproj"
    assert manifest["mmproj"]["projector_type"] == "gemma3" and manifest["mmproj"]["projection_dim"] == 64
    result = verify_bundle(bundle)
    assert result.mmproj == "mmproj-gemma3-tiny.gguf" and result.loaded
    shown = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert shown.exit_code == 0 and "projector mmproj-gemma3-tiny.gguf encodes an image" in shown.output

    flipped = tmp_path / "flipped"
    write_bundle(flipped, model=text, quant="F32", profile={"name": "pixel-8"}, source=source, mmproj=mmproj,
                 model_name="gemma3-tiny")
    data = bytearray((flipped / "mmproj-gemma3-tiny.gguf").read_bytes())
    data[-10] ^= 1
    (flipped / "mmproj-gemma3-tiny.gguf").write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="mmproj-gemma3-tiny.gguf sha256"):
        verify_bundle(flipped)

    claimed = json.loads((bundle / "manifest.json").read_text())
    claimed["mmproj"]["image_size"] = 896
    (bundle / "manifest.json").write_text(json.dumps(seal({k: v for k, v in claimed.items() if k != "integrity"})))
    with pytest.raises(VerifyError, match="mmproj.image_size"):
        verify_bundle(bundle, load=False)
    with pytest.raises(BadGGUF, match="not a multimodal projector"):
        write_bundle(tmp_path / "wrong", model=text, quant="F32", profile={"name": "pixel-8"}, source=source,
                     mmproj=text)


@pytest.mark.slow
def test_gemma3_image_prompt_next_token_agrees(gemma3_vlm, tmp_path):
    """A prompt with the image in it: llama.cpp (text GGUF + mmproj through mtmd) and transformers
    (Gemma3ForConditionalGeneration with the same pixels and ids, the image block attending both ways) give the
    same next token."""
    import torch

    folder, text, model, processor = gemma3_vlm
    config = json.loads((folder / "config.json").read_text())
    rgb = nonsquare_image()
    for outtype in ("f32", "f16", "q8_0"):
        mmproj = convert_mmproj(folder, tmp_path / f"mmproj-{outtype}.gguf", outtype=outtype).output
        ids, got = llama_cpp_image_prompt(text, mmproj, b"Look: <__media__> what is it", rgb)
        assert ids.count(-1) == TOKENS
        image_token = config["image_token_index"]
        input_ids = torch.tensor([[image_token if t == -1 else t for t in ids]])
        pixels = processor(images=_letterboxed(rgb, IMAGE_SIZE), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            reference = model(input_ids=input_ids, pixel_values=pixels, token_type_ids=(input_ids == image_token).long()
                              ).logits[0, -1].numpy()
        max_abs = float(np.abs(reference - got).max())
        print(f"\nGemma 3 image prompt {outtype.upper()}: {len(ids)} tokens ({TOKENS} image), next-token logits "
              f"max|d| {max_abs:.2e}, top-1 {int(reference.argmax())} vs {int(got.argmax())}")
        assert int(reference.argmax()) == int(got.argmax())
        # measured 4.9e-4 (F32 and F16 projector), 1.3e-3 (Q8_0); transformers with the image block causal
        # instead: 2.4e-3
        assert max_abs <= {"q8_0": 4e-3}.get(outtype, 1.5e-3)
