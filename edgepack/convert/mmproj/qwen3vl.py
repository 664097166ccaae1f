"""Qwen3-VL and Qwen3.5: their vision tower (a ViT with a Conv3d patch embedding over two frames, a learned
position grid resampled to each image, 2D rope, fused qkv), the 2x2 patch merger and, for Qwen3-VL, the
DeepStack mergers that hand intermediate layers' features to the first decoder layers. llama.cpp: projector
type ``qwen3vl_merger`` (models/qwen3vl.cpp) with dynamic-resolution preprocessing (mtmd-image.cpp,
``mtmd_image_preprocessor_dyn_size``); facts from llama.cpp 0.3.36's conversion/qwen3vl.py and clip.cpp.

What llama.cpp does with an image, and what the converter therefore checks:

* The image is resized to a multiple of patch_size x spatial_merge_size on each side, keeping the aspect ratio
  (transformers' ``smart_resize``), with Pillow-compatible bicubic resampling (resample 3, the processor's),
  then normalised with the file's mean/std. The aspect-preserving fit is letterboxed on black where the rounded
  size changes the ratio (transformers stretches); an image whose sides are already multiples of
  patch_size x merge (or whose rounding keeps the ratio) is encoded identically.
* The token budget is llama.cpp's own: 8 to 4096 merged tokens unless the app sets ``image_min_tokens`` /
  ``image_max_tokens``; the processor's ``size`` (min/max pixels) is not read from the file. The converter
  reports the processor's bounds in tokens so an app can pass them.
* The tower runs its MLP with the tanh GELU (``gelu_pytorch_tanh``, refused otherwise); the merger's GELU is
  exact (erf) in transformers and the tanh form in llama.cpp's graph, a difference by design of llama.cpp
  (measured in tests/fidelity/test_mmproj_qwen.py).
"""

from __future__ import annotations

from ..spec import HFConfig
from .common import BOOL, F32, STR, U32, K, ProjectorSpec, normalisation, refuse, register, square_grid_side

# transformers' Qwen3VLVisionConfig defaults (Qwen3_5VisionConfig's are the same but deepstack [])
QWEN3VL_VISION_DEFAULTS = {"depth": 27, "hidden_size": 1152, "hidden_act": "gelu_pytorch_tanh",
                           "intermediate_size": 4304, "num_heads": 16, "in_channels": 3, "patch_size": 16,
                           "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 3584,
                           "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]}
QWEN35_VISION_DEFAULTS = dict(QWEN3VL_VISION_DEFAULTS, deepstack_visual_indexes=[])
# transformers' Qwen3VLVisionBlock / patch mergers use LayerNorm(eps=1e-6), not a config value.
LAYER_NORM_EPS = 1e-6
RESAMPLE_BICUBIC = 3  # PIL's code: llama.cpp resizes Qwen-VL images bicubically (clip.cpp)
LLAMA_CPP_TOKEN_RANGE = (8, 4096)  # clip.cpp: set_limit_image_tokens(8, 4096) for the Qwen-VL projectors

VISUAL_ROOT = r"(?:model\.)?visual\."
QWEN3VL_TENSORS = tuple((VISUAL_ROOT + hf, name) for hf, name in (
    (r"patch_embed\.proj\.weight", "v.patch_embd.weight"),
    (r"patch_embed\.proj\.bias", "v.patch_embd.bias"),
    (r"pos_embed\.weight", "v.position_embd.weight"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"v.blk.\1.ln1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"v.blk.\1.ln2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"v.blk.\1.attn_qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"v.blk.\1.attn_out.\2"),
    (r"blocks\.(\d+)\.mlp\.linear_fc1\.(weight|bias)", r"v.blk.\1.ffn_up.\2"),
    (r"blocks\.(\d+)\.mlp\.linear_fc2\.(weight|bias)", r"v.blk.\1.ffn_down.\2"),
    # the merger's norm runs on each patch before the 2x2 shuffle: clip.cpp's post_ln
    (r"merger\.norm\.(weight|bias)", r"v.post_ln.\1"),
    (r"merger\.linear_fc1\.(weight|bias)", r"mm.0.\1"),
    (r"merger\.linear_fc2\.(weight|bias)", r"mm.2.\1"),
))


def _deepstack_tensors(vision: HFConfig) -> tuple:
    """deepstack_merger_list.i -> v.deepstack.<vision layer it reads>: llama.cpp indexes them by layer."""
    out = []
    for i, layer in enumerate(_deepstack(vision)):
        for hf, name in (("norm", "norm"), ("linear_fc1", "fc1"), ("linear_fc2", "fc2")):
            out.append((rf"{VISUAL_ROOT}deepstack_merger_list\.{i}\.{hf}\.(weight|bias)",
                        rf"v.deepstack.{layer}.{name}.\1"))
    return tuple(out)


def _deepstack(vision: HFConfig) -> list[int]:
    layers = list(vision.get("deepstack_visual_indexes"))
    depth = int(vision.get("depth"))
    if any(not isinstance(i, int) or not 0 <= i < depth for i in layers) or len(set(layers)) != len(layers):
        refuse(f"deepstack_visual_indexes {layers} are not distinct layers of the {depth}-layer tower",
                "config.json is damaged")
    return layers


def _split_frames(gguf_name: str, shape: tuple):
    """The Conv3d patch embedding (out, in, 2 frames, p, p) as the two Conv2d kernels llama.cpp sums
    (v.patch_embd.weight for frame 0, .weight.1 for frame 1): a still image is the same frame twice."""
    if gguf_name != "v.patch_embd.weight":
        return [(gguf_name, shape, None)]
    out, channels, _, p, q = shape
    return [(gguf_name, (out, channels, p, q), lambda a: a[:, :, 0]),
            (gguf_name + ".1", (out, channels, p, q), lambda a: a[:, :, 1])]


def grid_side(vision: HFConfig) -> int:
    """Patches per side of the learned position grid (num_position_embeddings = side^2)."""
    return square_grid_side(vision, "num_position_embeddings", "llama.cpp resamples a square position grid")


def _factor(vision: HFConfig) -> int:
    return int(vision.get("patch_size")) * int(vision.get("spatial_merge_size"))


def processor_token_range(vision: HFConfig, preproc: dict) -> tuple[int, int] | None:
    """The processor's (min, max) merged tokens per image, from its size.shortest_edge/longest_edge pixels."""
    size = preproc.get("size") or {}
    low, high = size.get("shortest_edge", preproc.get("min_pixels")), size.get("longest_edge", preproc.get("max_pixels"))
    if low is None or high is None:
        return None
    area = _factor(vision) ** 2
    return -(-int(low) // area), int(high) // area


def _metadata(config: dict, vision: HFConfig, preproc: dict, text_hidden: int) -> list:
    if vision.get("hidden_act") != "gelu_pytorch_tanh":
        refuse(f"vision activation {vision.get('hidden_act')!r}", "llama.cpp's qwen3vl graph runs the tanh GELU")
    checks = (
        (int(vision.get("in_channels")) != 3, f"{vision.get('in_channels')} image channels"),
        (int(vision.get("temporal_patch_size")) != 2,
         f"temporal_patch_size {vision.get('temporal_patch_size')} (llama.cpp splits the patch kernel in 2 frames)"),
        (int(vision.get("out_hidden_size")) != text_hidden,
         f"out_hidden_size {vision.get('out_hidden_size')} != the text model's hidden_size {text_hidden}"),
        (int(preproc.get("patch_size", vision.get("patch_size"))) != int(vision.get("patch_size")),
         f"patch_size {preproc.get('patch_size')} (the tower's is {vision.get('patch_size')})"),
        (int(preproc.get("merge_size", vision.get("spatial_merge_size"))) != int(vision.get("spatial_merge_size")),
         f"merge_size {preproc.get('merge_size')} (the tower merges {vision.get('spatial_merge_size')})"),
        (int(preproc.get("temporal_patch_size", 2)) != 2, f"temporal_patch_size {preproc.get('temporal_patch_size')}"),
    )
    deepstack = set(_deepstack(vision))
    depth = int(vision.get("depth"))
    side = grid_side(vision)
    return [
        (K.Clip.PROJECTOR_TYPE, "qwen3vl_merger", STR),
        (K.Clip.HAS_VISION_ENCODER, True, BOOL),
        (K.ClipVision.PROJECTION_DIM, text_hidden, U32),
        # llama.cpp's converter writes the position grid's side in pixels here; clip.cpp reads the grid's size
        # from the tensor and resizes every image itself
        (K.ClipVision.IMAGE_SIZE, side * int(vision.get("patch_size")), U32),
        (K.ClipVision.PATCH_SIZE, int(vision.get("patch_size")), U32),
        (K.ClipVision.EMBEDDING_LENGTH, int(vision.get("hidden_size")), U32),
        (K.ClipVision.FEED_FORWARD_LENGTH, int(vision.get("intermediate_size")), U32),
        (K.ClipVision.BLOCK_COUNT, depth, U32),
        (K.ClipVision.Attention.HEAD_COUNT, int(vision.get("num_heads")), U32),
        (K.ClipVision.Attention.LAYERNORM_EPS, LAYER_NORM_EPS, F32),
        (K.ClipVision.USE_GELU, True, BOOL),
        (K.ClipVision.SPATIAL_MERGE_SIZE, int(vision.get("spatial_merge_size")), U32),
        (K.ClipVision.IS_DEEPSTACK_LAYERS, [i in deepstack for i in range(depth)], None),
    ] + normalisation(preproc, checks + (
        (preproc.get("resample", RESAMPLE_BICUBIC) != RESAMPLE_BICUBIC,
         f"resample {preproc.get('resample')} (llama.cpp resizes Qwen-VL images bicubically: 3)"),))


def _shapes(config: dict, vision: HFConfig, text_hidden: int) -> dict:
    """GGUF names -> shapes config.json implies (the patch kernel as the two frames llama.cpp reads)."""
    hidden, merged = int(vision.get("hidden_size")), int(vision.get("hidden_size")) * int(
        vision.get("spatial_merge_size")) ** 2
    p, depth = int(vision.get("patch_size")), int(vision.get("depth"))
    shapes = {"v.patch_embd.weight": (hidden, 3, p, p), "v.patch_embd.weight.1": (hidden, 3, p, p),
              "v.position_embd.weight": (grid_side(vision) ** 2, hidden),
              f"v.blk.{depth - 1}.attn_qkv.weight": (3 * hidden, hidden),
              f"v.blk.{depth - 1}.ffn_down.weight": (hidden, int(vision.get("intermediate_size"))),
              "mm.0.weight": (merged, merged), "mm.2.weight": (text_hidden, merged)}
    for layer in _deepstack(vision):
        shapes[f"v.deepstack.{layer}.fc2.weight"] = (text_hidden, merged)
    return shapes


def image_tokens(config: dict, vision: HFConfig, preproc: dict) -> int:
    """Tokens of an image_size x image_size image (the position grid's own size)."""
    side = grid_side(vision) // int(vision.get("spatial_merge_size"))
    return side * side


def _spec(classes: tuple, defaults: dict) -> ProjectorSpec:
    return ProjectorSpec(
        hf_classes=classes,
        projector_type="qwen3vl_merger",
        tensors=QWEN3VL_TENSORS,
        config_tensors=_deepstack_tensors,
        keep=VISUAL_ROOT,
        vision_defaults=defaults,
        # clip.cpp resamples the position grid per image (ggml_interpolate), in F32
        always_f32=r"v\.position_embd\.weight",
        # llama.cpp's converter: the patch kernels F16 in F16 files, F32 otherwise (never block-quantized)
        never_quantized=r"v\.patch_embd\.weight(\.1)?",
        metadata=_metadata,
        image_tokens=image_tokens,
        shapes=_shapes,
        vision_layers=lambda config, vision: int(vision.get("depth")),
        views=_split_frames,
    )


QWEN3VL = register(_spec(("Qwen3VLForConditionalGeneration",), QWEN3VL_VISION_DEFAULTS))
QWEN35 = register(_spec(("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"),
                        QWEN35_VISION_DEFAULTS))
