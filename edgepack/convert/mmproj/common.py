"""What every projector family shares: the ``ProjectorSpec`` a family declares, the registry, and the SigLIP
vision tower (Gemma 3, SmolVLM/Idefics3 and LFM2-VL all encode with a SigLIP-style ViT) with the preprocessing
checks llama.cpp's fixed pipelines allow. Facts cite llama.cpp 0.3.36's tools/mtmd/clip.cpp, clip-impl.h,
mtmd-image.cpp, models/siglip.cpp and conversion/*.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import gguf
import numpy as np

from ...errors import UnsupportedArchitecture
from ..spec import HFConfig

K = gguf.Keys
STR, U32, F32, BOOL = (gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32,
                       gguf.GGUFValueType.BOOL)


@dataclass(frozen=True)
class ProjectorSpec:
    """One family's projector, as data."""

    hf_classes: tuple[str, ...]
    projector_type: str  # clip.projector_type: the graph clip.cpp builds
    # (HF name pattern, GGUF name template with \1 for the layer index); first match wins
    tensors: tuple[tuple[str, str], ...]
    keep: str  # pattern of the checkpoint's tensors that belong to the projector file
    skip: str = r"$^"  # pattern of tensors under ``keep`` that llama.cpp's graph never reads
    vision_defaults: dict = field(default_factory=dict)
    text_defaults: dict = field(default_factory=dict)
    # GGUF name pattern -> fn(raw array, HFConfig) like ArchSpec.transforms
    transforms: dict[str, Callable[[np.ndarray, HFConfig], np.ndarray]] = field(default_factory=dict)
    always_f32: str = r"$^"  # GGUF names kept in F32 whatever the outtype
    never_quantized: str = r"$^"  # GGUF names kept in F16 when the outtype is q8_0
    # (config, vision config, processor settings, text hidden size) -> [(key, value, type)]; raises
    # UnsupportedArchitecture for what llama.cpp cannot reproduce. The processor settings are
    # preprocessor_config.json's, with what only processor_config.json names filled in from there
    metadata: Callable[[dict, HFConfig, dict, int], list] = lambda config, vision, preproc, text_hidden: []
    # (config, vision config, preprocessor config) -> embeddings one image becomes in the prompt (for a tiling
    # family: one tile's, as written in the model's processor config)
    image_tokens: Callable[[dict, HFConfig, dict], int] = lambda config, vision, preproc: 0
    # (config, vision config, text hidden size) -> {GGUF name: shape as the checkpoint stores it}: the tensors
    # whose shapes tie the weights to config.json (checked before anything is written)
    shapes: Callable[[dict, HFConfig, int], dict] = lambda config, vision, text_hidden: {}
    # vision layers the projector reads: num_hidden_layers, or fewer where the model takes an earlier layer's
    # output (LFM2-VL's vision_feature_layer); the layers beyond are left out of the file
    vision_layers: Callable[[dict, HFConfig], int] = lambda config, vision: int(vision.get("num_hidden_layers"))
    # vision config -> more (HF name pattern, GGUF name template) pairs whose names depend on the config
    # (Qwen3-VL's DeepStack mergers are named by the vision layer they read)
    config_tensors: Callable[[HFConfig], tuple] = lambda vision: ()
    # (GGUF name, checkpoint shape) -> [(GGUF name, shape, fn(array) -> array or None)]: the tensors one
    # checkpoint tensor becomes (Qwen-VL's Conv3d patch kernel is llama.cpp's two Conv2d kernels)
    views: Callable[[str, tuple], list] = lambda name, shape: [(name, shape, None)]


_PROJECTORS: dict[str, ProjectorSpec] = {}


def register(spec: ProjectorSpec) -> ProjectorSpec:
    for name in spec.hf_classes:
        _PROJECTORS[name] = spec
    return spec


def registered() -> dict[str, ProjectorSpec]:
    return _PROJECTORS


def refuse(what: str, hint: str):
    raise UnsupportedArchitecture(f"cannot write the projector: {what}", hint)


def square_grid_side(vision: HFConfig, key: str, hint: str) -> int:
    """Patches per side of a position table whose size ``vision[key]`` must be a square (llama.cpp resizes or
    resamples it as a square grid)."""
    n = int(vision.get(key))
    side = math.isqrt(n)
    if side * side != n:
        refuse(f"{key} {n} is not a square grid", hint)
    return side


# --- SigLIP ------------------------------------------------------------------------------------------------

# transformers' SiglipVisionConfig defaults, which a config.json's vision_config leaves out when equal.
SIGLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
                   "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}

# SigLIP's encoder, relative to the tower's root; GGUF names from clip-impl.h (TN_*).
SIGLIP_TENSORS = (
    (r"embeddings\.patch_embedding\.(weight|bias)", r"v.patch_embd.\1"),
    (r"embeddings\.position_embedding\.weight", "v.position_embd.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", r"v.blk.\1.attn_q.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)", r"v.blk.\1.attn_k.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", r"v.blk.\1.attn_v.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"v.blk.\1.attn_out.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"v.blk.\1.ln1.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"v.blk.\1.ln2.\2"),
    # fc1 widens (up), fc2 narrows (down): clip.cpp swaps them back only for old files that got this wrong.
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"v.blk.\1.ffn_up.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"v.blk.\1.ffn_down.\2"),
    (r"post_layernorm\.(weight|bias)", r"v.post_ln.\1"),
)

# The activations transformers names for SigLIP that are ggml_gelu's tanh approximation (clip.use_gelu).
TANH_GELU = {"gelu_pytorch_tanh", "gelu_new"}


def siglip_tensors(root: str) -> tuple[tuple[str, str], ...]:
    """SigLIP's name table under the checkpoint prefix ``root`` (a regex)."""
    return tuple((root + hf, name) for hf, name in SIGLIP_TENSORS)


def siglip_shapes(vision: HFConfig, layers: int) -> dict:
    hidden = int(vision.get("hidden_size"))
    return {f"v.blk.{layers - 1}.ffn_down.weight": (hidden, int(vision.get("intermediate_size")))}


def normalisation(preproc: dict, checks: tuple = ()) -> list:
    """clip.vision.image_mean/std, after refusing what llama.cpp's preprocessing never does (no rescale by
    1/255, no normalisation) and the family's own ``checks`` ((bad, what) pairs)."""
    if not preproc:
        refuse("preprocessor_config.json is missing (image mean/std and size live there)",
               "copy preprocessor_config.json from the model repository into the folder")
    mean, std = preproc.get("image_mean"), preproc.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3):
        refuse(f"preprocessor_config.json's image_mean/image_std are not 3 numbers each ({mean!r}, {std!r})",
               "re-download preprocessor_config.json")
    checks = (
        (preproc.get("do_rescale", True) is False
         or not math.isclose(preproc.get("rescale_factor", 1 / 255), 1 / 255, rel_tol=1e-6),
         "pixel rescaling other than x1/255"),
        (preproc.get("do_normalize", True) is False, "do_normalize false (llama.cpp always normalises)"),
    ) + tuple(checks)
    for bad, what in checks:
        if bad:
            refuse(f"preprocessor_config.json asks for {what}", "llama.cpp's mtmd cannot reproduce it")
    return [(K.ClipVision.IMAGE_MEAN, [float(v) for v in mean], None),
            (K.ClipVision.IMAGE_STD, [float(v) for v in std], None)]


def siglip_metadata(vision: HFConfig, text_hidden: int, *, layers: int | None = None,
                    image_size: int | None = None) -> list:
    """The clip.vision.* keys of a SigLIP tower (``layers``: the blocks the file holds)."""
    act = vision.get("hidden_act")
    if act not in TANH_GELU:
        refuse(f"vision activation {act!r}", "llama.cpp's SigLIP graph runs the tanh GELU only")
    if int(vision.get("num_channels")) != 3:
        refuse(f"{vision.get('num_channels')} image channels", "llama.cpp feeds RGB images (3 channels)")
    if vision.get("vision_use_head", default=False):
        refuse("vision_use_head is set", "the projector reads SigLIP's last hidden state, not its pooling head")
    return [
        (K.Clip.HAS_VISION_ENCODER, True, BOOL),
        (K.ClipVision.PROJECTION_DIM, text_hidden, U32),
        (K.ClipVision.IMAGE_SIZE, int(image_size or vision.get("image_size")), U32),
        (K.ClipVision.PATCH_SIZE, int(vision.get("patch_size")), U32),
        (K.ClipVision.EMBEDDING_LENGTH, int(vision.get("hidden_size")), U32),
        (K.ClipVision.FEED_FORWARD_LENGTH, int(vision.get("intermediate_size")), U32),
        (K.ClipVision.BLOCK_COUNT, int(layers or vision.get("num_hidden_layers")), U32),
        (K.ClipVision.Attention.HEAD_COUNT, int(vision.get("num_attention_heads")), U32),
        (K.ClipVision.Attention.LAYERNORM_EPS, float(vision.get("layer_norm_eps")), F32),
        (K.ClipVision.USE_GELU, True, BOOL),
    ]
