"""Gemma 3 (4B/12B/27B): SigLIP, its patch grid average-pooled 4x4, an RMS norm (1 + w) and a projection
matrix. llama.cpp: projector type ``gemma3`` (models/siglip.cpp), fixed-size preprocessing (mtmd-image.cpp)."""

from __future__ import annotations

import math

from ..common import plus_one
from ..spec import HFConfig
from .common import (SIGLIP_DEFAULTS, STR, U32, K, ProjectorSpec, normalisation, refuse, register, siglip_metadata,
                     siglip_shapes, siglip_tensors)

# clip.cpp's default for Gemma 3: patches per side averaged 4x4 (64x64 patches -> 16x16 = 256 tokens); other
# factors are written to clip.vision.projector.scale_factor.
GEMMA3_POOL_DEFAULT = 4
RESAMPLE_BILINEAR = 2  # PIL's code; llama.cpp resizes Gemma 3 images bilinearly

# Where checkpoints keep the tower: the Hub's 4.x layout (vision_tower.vision_model.*), transformers 5.x's
# (model.vision_tower.* / vision_tower.*).
SIGLIP_ROOT = r"(?:model\.)?vision_tower\.(?:vision_model\.)?"
GEMMA3_PROJECTOR_ROOT = r"(?:model\.)?multi_modal_projector\."


def gemma3_pooling(config: dict, vision: HFConfig, preproc: dict) -> tuple[int, int]:
    """(pooling kernel, image tokens): Gemma3MultiModalProjector averages the patch grid down to
    mm_tokens_per_image tokens, a square; llama.cpp pools by one integer factor per side."""
    image_size, patch = int(vision.get("image_size")), int(vision.get("patch_size"))
    tokens = int(config.get("mm_tokens_per_image", 256))
    per_side = math.isqrt(tokens)
    if image_size % patch or per_side * per_side != tokens or (image_size // patch) % per_side:
        refuse(f"image_size {image_size} / patch_size {patch} patches per side do not pool evenly to "
               f"mm_tokens_per_image {tokens} (a square number dividing them)",
               "llama.cpp pools the patch grid by one integer factor per side")
    seq = preproc.get("image_seq_length")
    if seq is not None and int(seq) != tokens:
        refuse(f"preprocessor image_seq_length {seq} differs from config mm_tokens_per_image {tokens}",
               "make them agree (the model's projector uses mm_tokens_per_image)")
    return (image_size // patch) // per_side, tokens


def _preprocessing(preproc: dict, image_size: int) -> list:
    """Gemma3ImageProcessor as llama.cpp's fixed-size path runs it: resize to image_size x image_size
    (bilinear), x1/255, normalise; no pan-and-scan."""
    size = (preproc or {}).get("size") or {}
    sides = {size.get("height"), size.get("width"), size.get("shortest_edge")} - {None}
    if preproc and sides and sides != {image_size}:
        refuse(f"the processor resizes to {size} but the vision tower takes {image_size}x{image_size}",
               "llama.cpp resizes to the tower's image_size; fix preprocessor_config.json's size")
    return normalisation(preproc, (
        (preproc.get("resample", RESAMPLE_BILINEAR) != RESAMPLE_BILINEAR,
         f"resample {preproc.get('resample')} (llama.cpp resizes Gemma 3 images bilinearly: 2)"),
        (bool(preproc.get("do_pan_and_scan")), "do_pan_and_scan (llama.cpp encodes one whole-image crop)"),
    ))


def _gemma3_metadata(config: dict, vision: HFConfig, preproc: dict, text_hidden: int) -> list:
    kernel, _ = gemma3_pooling(config, vision, preproc)
    out = [(K.Clip.PROJECTOR_TYPE, "gemma3", STR)] + siglip_metadata(vision, text_hidden)
    out += _preprocessing(preproc, int(vision.get("image_size")))
    if kernel != GEMMA3_POOL_DEFAULT:
        out.append((K.ClipVision.Projector.SCALE_FACTOR, kernel, U32))
    return out


def _gemma3_shapes(config: dict, vision: HFConfig, text_hidden: int) -> dict:
    hidden = int(vision.get("hidden_size"))
    return {"mm.input_projection.weight": (hidden, text_hidden), "mm.soft_emb_norm.weight": (hidden,),
            "v.post_ln.weight": (hidden,), **siglip_shapes(vision, int(vision.get("num_hidden_layers")))}


GEMMA3 = register(ProjectorSpec(
    hf_classes=("Gemma3ForConditionalGeneration",),
    projector_type="gemma3",
    tensors=siglip_tensors(SIGLIP_ROOT) + (
        (GEMMA3_PROJECTOR_ROOT + r"mm_input_projection_weight", "mm.input_projection.weight"),
        (GEMMA3_PROJECTOR_ROOT + r"mm_soft_emb_norm\.weight", "mm.soft_emb_norm.weight"),
    ),
    keep=rf"{SIGLIP_ROOT}|{GEMMA3_PROJECTOR_ROOT}",
    skip=SIGLIP_ROOT + r"head\.",  # SigLIP's pooling head: Gemma 3 projects every patch, not the pooled one
    vision_defaults=SIGLIP_DEFAULTS,
    text_defaults={"hidden_size": 2304},  # Gemma3TextConfig's
    # Gemma3RMSNorm scales by (1 + weight); clip.cpp's ggml_rms_norm * weight needs the 1 added.
    transforms={r"mm\.soft_emb_norm\.weight": plus_one},
    # llama.cpp's converter keeps SigLIP's patch and position embeddings in F32 for Gemma 3
    always_f32=r"v\.(patch_embd|position_embd)\.weight",
    # llama.cpp's converter keeps the projection matrix F16 in quantized projectors (llama.cpp issue 13025:
    # clip.cpp transposes it, which a block-quantized tensor cannot be)
    never_quantized=r"mm\.input_projection\.weight",
    metadata=_gemma3_metadata,
    image_tokens=lambda config, vision, preproc: gemma3_pooling(config, vision, preproc)[1],
    shapes=_gemma3_shapes,
))
