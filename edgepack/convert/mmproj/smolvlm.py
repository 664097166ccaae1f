"""SmolVLM / SmolVLM2 and Idefics3: SigLIP (Idefics3VisionTransformer), pixel shuffle by ``scale_factor`` and one
bias-free linear projection (the connector). llama.cpp: projector type ``idefics3`` (models/siglip.cpp), its
own tiling preprocessor (mtmd-image.cpp, mtmd_image_preprocessor_idefics3): the image resized so its longest
side is ``size.longest_edge`` (Lanczos), stretched up to whole tiles of image_size, cut into tiles (row by row)
plus the whole image shrunk to one tile, encoded last; the same steps as Idefics3ImageProcessor /
SmolVLMImageProcessor with ``do_image_splitting``."""

from __future__ import annotations

from ..spec import HFConfig
from .common import (SIGLIP_DEFAULTS, STR, U32, K, ProjectorSpec, normalisation, refuse, register, siglip_metadata,
                     siglip_shapes, siglip_tensors)

# Idefics3VisionConfig / SmolVLMVisionConfig defaults (SigLIP so400m's width, 32-pixel patches), which a
# config.json's vision_config leaves out (SmolVLM2's names neither intermediate_size nor the layer count).
IDEFICS3_VISION_DEFAULTS = {**SIGLIP_DEFAULTS, "hidden_size": 1152, "num_attention_heads": 16, "patch_size": 32}
RESAMPLE_LANCZOS = 1  # PIL's code; clip.cpp resizes idefics3 images with its Lanczos filter, whatever the file says
ROOT = r"model\.vision_model\."  # 4.x Hub checkpoints and transformers 5.x alike
CONNECTOR = r"model\.connector\.modality_projection\.proj\.weight"


def _tiling(config: dict, vision: HFConfig, preproc: dict) -> tuple[int, int]:
    """(longest edge the image is resized to, tokens per tile), after refusing a processor llama.cpp's idefics3
    path would not follow."""
    image_size, patch = int(vision.get("image_size")), int(vision.get("patch_size"))
    scale = int(config.get("scale_factor", 2))
    # the patch convolution drops what is left over (SmolVLM-Instruct: 384 pixels / 14 = 27 patches, llama.cpp too)
    per_side = image_size // patch
    if scale < 1 or per_side % scale:
        refuse(f"image_size {image_size} / patch_size {patch} = {per_side} patches per side do not shuffle evenly "
               f"by scale_factor {scale}", "the connector's pixel shuffle needs whole groups of patches")
    tile = ((preproc or {}).get("max_image_size") or {}).get("longest_edge", image_size)
    longest = ((preproc or {}).get("size") or {}).get("longest_edge")
    if preproc and tile != image_size:
        refuse(f"max_image_size.longest_edge {tile} is not the vision tower's image_size {image_size}",
               "llama.cpp cuts tiles of image_size; fix preprocessor_config.json")
    if preproc and (not isinstance(longest, int) or longest < image_size or longest % image_size):
        refuse(f"size.longest_edge {longest!r} is not a whole number of {image_size}-pixel tiles",
               "transformers rounds such a size up differently from llama.cpp; fix preprocessor_config.json")
    return longest or image_size, (per_side // scale) ** 2


def _metadata(config: dict, vision: HFConfig, preproc: dict, text_hidden: int) -> list:
    longest, _ = _tiling(config, vision, preproc)
    out = [(K.Clip.PROJECTOR_TYPE, "idefics3", STR)] + siglip_metadata(vision, text_hidden)
    out += normalisation(preproc, (
        (preproc.get("resample", RESAMPLE_LANCZOS) != RESAMPLE_LANCZOS,
         f"resample {preproc.get('resample')} (llama.cpp resizes idefics3 images with Lanczos: 1)"),
        (preproc.get("do_image_splitting", True) is False,
         "do_image_splitting false (llama.cpp always tiles an image larger than one tile)"),
        (preproc.get("do_resize", True) is False, "do_resize false (llama.cpp resizes to size.longest_edge)"),
    ))
    return out + [(K.ClipVision.Projector.SCALE_FACTOR, int(config.get("scale_factor", 2)), U32),
                  (K.ClipVision.PREPROC_IMAGE_SIZE, int(longest), U32)]


def _shapes(config: dict, vision: HFConfig, text_hidden: int) -> dict:
    hidden, scale = int(vision.get("hidden_size")), int(config.get("scale_factor", 2))
    return {"mm.model.fc.weight": (text_hidden, hidden * scale * scale), "v.post_ln.weight": (hidden,),
            **siglip_shapes(vision, int(vision.get("num_hidden_layers")))}


SMOLVLM = register(ProjectorSpec(
    hf_classes=("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"),
    projector_type="idefics3",
    tensors=siglip_tensors(ROOT) + ((CONNECTOR, "mm.model.fc.weight"),),
    keep=rf"{ROOT}|{CONNECTOR}",
    vision_defaults=IDEFICS3_VISION_DEFAULTS,
    text_defaults={"hidden_size": 4096},  # transformers' LlamaConfig default (SmolVLM's text_config is a Llama)
    # llama.cpp's converter keeps the tower's embeddings (patch kernel, positions) in F32
    always_f32=r"v\.(patch_embd|position_embd)\.weight",
    metadata=_metadata,
    image_tokens=lambda config, vision, preproc: _tiling(config, vision, preproc)[1],
    shapes=_shapes,
))
