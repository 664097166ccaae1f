"""Gemma 4 (E2B/E4B/31B): its own ViT (linear patch embedding over HWC pixels scaled to [-1, 1], x/y position
tables, 2D rope, sandwich RMS norms, gated GELU MLP, optional clamped linears), the patch grid average-pooled
k x k and scaled by sqrt(hidden), optional standardisation, then an RMS norm without scale and the projection.
llama.cpp: projector type ``gemma4v`` (models/gemma4v.cpp) with dynamic-size preprocessing (mtmd-image.cpp);
facts from llama.cpp 0.3.36's conversion/gemma.py (Gemma4VisionAudioModel) and clip.cpp. The audio tower of
E2B/E4B is not part of this file.

Preprocessing differs by design. Gemma4ImageProcessor scales every image (up or down) to fill its budget of
``max_soft_tokens`` (sides a multiple of pooling_kernel_size x patch_size, rounded down) and stretches it there;
llama.cpp rounds each side to the nearest multiple, resizes only outside 70..1120 tokens (``image_min_tokens`` /
``image_max_tokens`` change that) and letterboxes. An image already at the processor's size (a multiple of
48 pixels on each side for the released 16-pixel patches and 3x3 pooling, filling the budget) is encoded
identically; an app that wants transformers' tokens resizes to that size first (bicubic), as the tests do.
"""

from __future__ import annotations

import math

from ..spec import HFConfig
from .common import BOOL, F32, STR, U32, K, ProjectorSpec, normalisation, refuse, register

# transformers' Gemma4VisionConfig defaults, which a config.json's vision_config leaves out when equal.
GEMMA4_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 16,
                          "num_attention_heads": 12, "num_key_value_heads": 12, "head_dim": 64,
                          "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "attention_bias": False,
                          "pooling_kernel_size": 3, "patch_size": 16, "position_embedding_size": 10 * 1024,
                          "use_clipped_linears": False, "standardize": False}
POOL_DEFAULT = 3  # clip.cpp's n_merge for gemma4v; other kernels are written to clip.vision.projector.scale_factor
ROPE_THETA = 100.0  # clip.cpp hard-codes the tower's rope base for gemma4v
RESAMPLE_BICUBIC = 3
SOFT_TOKENS_DEFAULT = 280  # Gemma4ImageProcessor's max_soft_tokens

TOWER = r"(?:model\.)?vision_tower\."
LAYER = TOWER + r"encoder\.layers\.(\d+)\."
CLAMPS = r"(weight|input_min|input_max|output_min|output_max)"
GEMMA4_TENSORS = (
    (TOWER + r"patch_embedder\.input_proj\.weight", "v.patch_embd.weight"),
    (TOWER + r"patch_embedder\.position_embedding_table", "v.position_embd.weight"),
    (TOWER + r"std_(bias|scale)", r"v.std_\1"),
    (LAYER + r"self_attn\.q_proj\.(?:linear\.)?" + CLAMPS, r"v.blk.\1.attn_q.\2"),
    (LAYER + r"self_attn\.k_proj\.(?:linear\.)?" + CLAMPS, r"v.blk.\1.attn_k.\2"),
    (LAYER + r"self_attn\.v_proj\.(?:linear\.)?" + CLAMPS, r"v.blk.\1.attn_v.\2"),
    (LAYER + r"self_attn\.o_proj\.(?:linear\.)?" + CLAMPS, r"v.blk.\1.attn_out.\2"),
    (LAYER + r"self_attn\.q_norm\.weight", r"v.blk.\1.attn_q_norm.weight"),
    (LAYER + r"self_attn\.k_norm\.weight", r"v.blk.\1.attn_k_norm.weight"),
    (LAYER + r"mlp\.gate_proj\.(?:linear\.)?" + CLAMPS, r"v.blk.\1.ffn_gate.\2"),
    (LAYER + r"mlp\.up_proj\.(?:linear\.)?" + CLAMPS, r"v.blk.\1.ffn_up.\2"),
    (LAYER + r"mlp\.down_proj\.(?:linear\.)?" + CLAMPS, r"v.blk.\1.ffn_down.\2"),
    # Gemma4RMSNorm multiplies by w (not 1 + w): stored as is
    (LAYER + r"input_layernorm\.weight", r"v.blk.\1.ln1.weight"),
    (LAYER + r"post_attention_layernorm\.weight", r"v.blk.\1.attn_post_norm.weight"),
    (LAYER + r"pre_feedforward_layernorm\.weight", r"v.blk.\1.ln2.weight"),
    (LAYER + r"post_feedforward_layernorm\.weight", r"v.blk.\1.ffn_post_norm.weight"),
    (r"(?:model\.)?embed_vision\.embedding_projection\.weight", "mm.input_projection.weight"),
)


def _views(name: str, shape: tuple) -> list:
    """The linear patch embedding (hidden, p*p*3 over HWC pixels) as the conv kernel clip.cpp runs over CHW
    pixels (hidden, 3, p, p); the clamp bounds (0-d in the checkpoint) as 1-element tensors."""
    if name == "v.patch_embd.weight":
        hidden, pixels = shape
        p = math.isqrt(pixels // 3)
        return [(name, (hidden, 3, p, p), lambda a: a.reshape(hidden, p, p, 3).transpose(0, 3, 1, 2))]
    if shape == ():
        return [(name, (1,), lambda a: a.reshape(1))]
    return [(name, shape, None)]


def soft_tokens(preproc: dict) -> int:
    tokens = int(preproc.get("max_soft_tokens", SOFT_TOKENS_DEFAULT))
    if tokens <= 0:
        refuse(f"max_soft_tokens {tokens}", "re-download preprocessor_config.json")
    return tokens


def square_image(vision: HFConfig, preproc: dict) -> tuple[int, int]:
    """(side, tokens): the size Gemma4ImageProcessor gives a square image (the largest multiple of kernel x patch
    within the token budget), which llama.cpp then encodes unchanged: the same tokens in both runtimes."""
    step = int(vision.get("pooling_kernel_size")) * int(vision.get("patch_size"))
    per_side = math.isqrt(soft_tokens(preproc))
    return per_side * step, per_side * per_side


def _metadata(config: dict, vision: HFConfig, preproc: dict, text_hidden: int) -> list:
    hidden, heads = int(vision.get("hidden_size")), int(vision.get("num_attention_heads"))
    rope = (vision.get("rope_parameters", default=None) or {}).get("rope_theta", ROPE_THETA)
    kernel, patch = int(vision.get("pooling_kernel_size")), int(vision.get("patch_size"))
    if vision.get("hidden_activation") != "gelu_pytorch_tanh":
        refuse(f"vision activation {vision.get('hidden_activation')!r}", "llama.cpp's gemma4v runs the tanh GELU")
    checks = (
        (int(vision.get("head_dim")) * heads != hidden,
         f"head_dim {vision.get('head_dim')} x {heads} heads != hidden_size {hidden} (llama.cpp splits hidden)"),
        (int(vision.get("num_key_value_heads")) != heads, "grouped key/value heads in the vision tower"),
        (bool(vision.get("attention_bias")), "attention biases in the vision tower"),
        (float(rope) != ROPE_THETA, f"vision rope_theta {rope} (llama.cpp uses {ROPE_THETA:g})"),
        (int(preproc.get("patch_size", patch)) != patch, f"patch_size {preproc.get('patch_size')} (the tower's is {patch})"),
        (int(preproc.get("pooling_kernel_size", kernel)) != kernel,
         f"pooling_kernel_size {preproc.get('pooling_kernel_size')} (the tower pools {kernel})"),
        (preproc.get("resample", RESAMPLE_BICUBIC) != RESAMPLE_BICUBIC,
         f"resample {preproc.get('resample')} (llama.cpp resizes Gemma 4 images bicubically: 3)"),
    )
    out = [
        (K.Clip.PROJECTOR_TYPE, "gemma4v", STR),
        (K.Clip.HAS_VISION_ENCODER, True, BOOL),
        (K.ClipVision.PROJECTION_DIM, text_hidden, U32),
        # clip.cpp sizes every image itself for gemma4v; the square image the processor makes, for reference
        (K.ClipVision.IMAGE_SIZE, square_image(vision, preproc)[0], U32),
        (K.ClipVision.PATCH_SIZE, patch, U32),
        (K.ClipVision.EMBEDDING_LENGTH, hidden, U32),
        (K.ClipVision.FEED_FORWARD_LENGTH, int(vision.get("intermediate_size")), U32),
        (K.ClipVision.BLOCK_COUNT, int(vision.get("num_hidden_layers")), U32),
        (K.ClipVision.Attention.HEAD_COUNT, heads, U32),
        (K.ClipVision.Attention.LAYERNORM_EPS, float(vision.get("rms_norm_eps")), F32),
        (K.ClipVision.USE_GELU, True, BOOL),
    ] + normalisation(preproc, checks)
    if kernel != POOL_DEFAULT:
        out.append((K.ClipVision.Projector.SCALE_FACTOR, kernel, U32))
    return out


def _shapes(config: dict, vision: HFConfig, text_hidden: int) -> dict:
    hidden, layers, p = int(vision.get("hidden_size")), int(vision.get("num_hidden_layers")), int(
        vision.get("patch_size"))
    shapes = {"v.patch_embd.weight": (hidden, 3, p, p),
              "v.position_embd.weight": (2, int(vision.get("position_embedding_size")), hidden),
              f"v.blk.{layers - 1}.ffn_down.weight": (hidden, int(vision.get("intermediate_size"))),
              "mm.input_projection.weight": (text_hidden, hidden)}
    if vision.get("standardize"):
        shapes["v.std_scale"] = (hidden,)
    return shapes


GEMMA4 = register(ProjectorSpec(
    hf_classes=("Gemma4ForConditionalGeneration",),
    projector_type="gemma4v",
    tensors=GEMMA4_TENSORS,
    keep=rf"{TOWER}|(?:model\.)?embed_vision\.",
    vision_defaults=GEMMA4_VISION_DEFAULTS,
    text_defaults={"hidden_size": 1536},
    # llama.cpp's converter keeps the position tables F32; clip.cpp reads the clamp bounds as F32 scalars
    always_f32=r"v\.position_embd\.weight|.*\.(input|output)_(min|max)",
    never_quantized=r"v\.patch_embd\.weight",
    metadata=_metadata,
    image_tokens=lambda config, vision, preproc: square_image(vision, preproc)[1],
    shapes=_shapes,
    views=_views,
))
