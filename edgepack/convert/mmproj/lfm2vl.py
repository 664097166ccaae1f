"""LFM2-VL: a SigLIP2 NaFlex tower (linear patch embedding, its 16 x 16 position table resized bilinearly, with
antialiasing, to each image's patch grid), pixel unshuffle by ``downsample_factor``, a LayerNorm and a two-layer
GELU MLP. llama.cpp: projector type ``lfm2`` (models/siglip.cpp), its own preprocessor (mtmd-image.cpp,
mtmd_image_preprocessor_lfm2): an image is resized (bilinear) to a multiple of patch x factor within 64-256
tokens, or, when larger than twice that, cut into 512-pixel tiles with a thumbnail; those limits are hard-coded
in clip.cpp, so a processor that sets others is refused. The text model is LFM2 (convert/families/lfm2.py)."""

from __future__ import annotations

import math

from ..spec import HFConfig
from .common import (SIGLIP_DEFAULTS, STR, TANH_GELU, U32, K, ProjectorSpec, normalisation, refuse, register,
                     siglip_metadata, siglip_shapes, siglip_tensors, square_grid_side)

# Siglip2VisionConfig's defaults (num_patches: the position table, 16 x 16).
SIGLIP2_DEFAULTS = {**SIGLIP_DEFAULTS, "num_patches": 256}
RESAMPLE_BILINEAR = 2  # PIL's code; clip.cpp resizes LFM2 images bilinearly
# What clip.cpp / mtmd-image.cpp hard-code for LFM2 (set_limit_image_tokens(64, 256), mtmd_image_preprocessor_lfm2),
# as transformers' Lfm2VlImageProcessor defaults them.
FIXED = {"min_image_tokens": 64, "max_image_tokens": 256, "min_tiles": 2, "max_tiles": 10, "tile_size": 512,
         "max_pixels_tolerance": 2.0, "use_thumbnail": True, "do_image_splitting": True}
# transformers' GELUs that clip.cpp's FFN_GELU computes: tanh-approximated in ggml; "gelu" (erf) differs from it
# by < 5e-4 per activation, as in llama.cpp's own LFM2-VL conversion.
PROJECTOR_ACTS = {"gelu"} | TANH_GELU
ROOT = r"(?:model\.)?vision_tower\.(?:vision_model\.)?"  # 4.x Hub and transformers 5.x layouts
PROJECTOR = r"(?:model\.)?multi_modal_projector\."


def _grid(vision: HFConfig) -> int:
    """Patches per side of the position table."""
    return square_grid_side(vision, "num_patches", "llama.cpp resizes a square position table")


def _checks(config: dict, vision: HFConfig, preproc: dict) -> None:
    for key, fixed in FIXED.items():
        for where, source in (("config.json", config), ("the processor config", preproc)):
            if key in source and source[key] != fixed:
                thumb = " (images up to about 724 x 724 pixels are not tiled and are unaffected)" \
                    if key in ("use_thumbnail", "do_image_splitting") else ""
                refuse(f"{where} sets {key} {source[key]!r}; llama.cpp's LFM2 preprocessor always uses {fixed!r}"
                       f"{thumb}", f"set {key} to {fixed!r} there to accept llama.cpp's behaviour")
    factor = int(config.get("downsample_factor", 2))
    patch = int(vision.get("patch_size"))
    for key, want in (("downsample_factor", factor), ("encoder_patch_size", patch)):
        for source in (config, preproc):
            if key in source and int(source[key]) != want:
                refuse(f"the processor's {key} {source[key]} differs from the model's {want}",
                       "make config.json and the processor config agree")
    layer = config.get("vision_feature_layer", -1)
    if layer != -1:
        refuse(f"vision_feature_layer {layer} (transformers' Lfm2Vl reads the tower's last layer)",
               "only -1, the last layer, is reproduced")
    if config.get("projector_bias", True) is False:
        refuse("projector_bias false", "llama.cpp's LFM2 projector needs the MLP's biases")
    act = config.get("projector_hidden_act", "gelu")
    if act not in PROJECTOR_ACTS:
        refuse(f"projector activation {act!r}", "llama.cpp's LFM2 projector runs a GELU")


def _metadata(config: dict, vision: HFConfig, preproc: dict, text_hidden: int) -> list:
    _checks(config, vision, preproc)
    patch = int(vision.get("patch_size"))
    out = [(K.Clip.PROJECTOR_TYPE, "lfm2", STR)]
    out += siglip_metadata(vision, text_hidden, image_size=_grid(vision) * patch)
    out += normalisation(preproc, ((preproc.get("resample", RESAMPLE_BILINEAR) != RESAMPLE_BILINEAR,
                                    f"resample {preproc.get('resample')} (llama.cpp resizes LFM2 images "
                                    "bilinearly: 2)"),))
    return out + [(K.ClipVision.Projector.SCALE_FACTOR, int(config.get("downsample_factor", 2)), U32)]


def _shapes(config: dict, vision: HFConfig, text_hidden: int) -> dict:
    hidden, patch = int(vision.get("hidden_size")), int(vision.get("patch_size"))
    merged = hidden * int(config.get("downsample_factor", 2)) ** 2
    projector = int(config.get("projector_hidden_size", 2560))
    shapes = {"v.patch_embd.weight": (hidden, 3, patch, patch),
              "v.position_embd.weight": (int(vision.get("num_patches")), hidden),
              "mm.1.weight": (projector, merged), "mm.2.weight": (text_hidden, projector),
              **siglip_shapes(vision, int(vision.get("num_hidden_layers")))}
    if config.get("projector_use_layernorm", True):
        shapes["mm.input_norm.weight"] = (merged,)
    return shapes


def _views(name: str, shape: tuple) -> list:
    """Siglip2's patch embedding is a linear map of each patch flattened as (row, column, channel); clip.cpp
    convolves with a (hidden, channel, row, column) kernel: the same weights, reordered."""
    if name != "v.patch_embd.weight":
        return [(name, shape, None)]
    hidden, patch = shape[0], math.isqrt(shape[1] // 3)
    return [(name, (hidden, 3, patch, patch),
             lambda data: data.reshape(hidden, patch, patch, 3).transpose(0, 3, 1, 2))]


LFM2VL = register(ProjectorSpec(
    hf_classes=("Lfm2VlForConditionalGeneration",),
    projector_type="lfm2",
    tensors=siglip_tensors(ROOT) + (
        (PROJECTOR + r"layer_norm\.(weight|bias)", r"mm.input_norm.\1"),
        (PROJECTOR + r"linear_1\.(weight|bias)", r"mm.1.\1"),
        (PROJECTOR + r"linear_2\.(weight|bias)", r"mm.2.\1"),
    ),
    keep=rf"{ROOT}|{PROJECTOR}",
    skip=ROOT + r"head\.",  # a pooling head, if saved: LFM2-VL projects every patch
    vision_defaults=SIGLIP2_DEFAULTS,
    text_defaults={"hidden_size": 1024},  # Lfm2Config's
    views=_views,
    always_f32=r"v\.(patch_embd|position_embd)\.weight",
    metadata=_metadata,
    # an image of image_size (the position table's side in pixels): its patches merged factor x factor; llama.cpp
    # sizes a real image to 64-256 tokens, or tiles of 256 plus a thumbnail
    image_tokens=lambda config, vision, preproc: (_grid(vision) // int(config.get("downsample_factor", 2))) ** 2,
    shapes=_shapes,
))
