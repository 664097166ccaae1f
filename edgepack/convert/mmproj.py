"""Multimodal projectors: a vision-language checkpoint's vision tower + projector -> llama.cpp's mmproj GGUF.

llama.cpp runs a vision-language model as two files: the text model (``convert``) and the projector that
``libmtmd`` loads beside it (``general.architecture`` "clip", ``clip.*`` keys, ``v.*`` / ``mm.*`` tensors).
Each family is a ``ProjectorSpec``: which checkpoint tensors are its vision tower and projector, their GGUF
names, the config defaults config.json leaves out, and the checks that refuse a checkpoint whose vision
settings llama.cpp's graph or preprocessing would not reproduce. Facts cite llama.cpp 0.3.36's
tools/mtmd/clip.cpp, clip-impl.h, models/siglip.cpp and conversion/gemma.py.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from .. import __version__
from ..errors import BadCheckpoint, UnsupportedArchitecture, UsageError
from ..fileio import atomic_path, check_output_path
from ..progress import QUIET, Progress
from .checkpoint import Checkpoint, load_json
from .common import plus_one
from .core import QT, _cast, _held_dtype
from .spec import HFConfig

K = gguf.Keys
STR, U32, F32, BOOL = (gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32,
                       gguf.GGUFValueType.BOOL)
MMPROJ_OUTTYPES = ("f16", "f32", "q8_0")
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


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
    # (config, vision config, preprocessor config, text hidden size) -> [(key, value, type)]; raises
    # UnsupportedArchitecture for what llama.cpp cannot reproduce
    metadata: Callable[[dict, HFConfig, dict, int], list] = lambda config, vision, preproc, text_hidden: []
    # (config, vision config, preprocessor config) -> embeddings one image becomes in the prompt
    image_tokens: Callable[[dict, HFConfig, dict], int] = lambda config, vision, preproc: 0


@dataclass(frozen=True)
class MmprojResult:
    output: Path
    architecture: str
    projector_type: str
    outtype: str
    n_tensors: int
    n_params: int
    size_bytes: int
    seconds: float
    image_size: int
    image_tokens: int  # embeddings one image becomes in the text model's prompt


_PROJECTORS: dict[str, ProjectorSpec] = {}


def register(spec: ProjectorSpec) -> ProjectorSpec:
    for name in spec.hf_classes:
        _PROJECTORS[name] = spec
    return spec


def supported_projectors() -> dict[str, str]:
    return {name: spec.projector_type for name, spec in sorted(_PROJECTORS.items())}


def _refuse(what: str, hint: str):
    raise UnsupportedArchitecture(f"cannot write the projector: {what}", hint)


# --- SigLIP (the vision tower of Gemma 3, and later of SmolVLM and LFM2-VL) --------------------------------

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
# Where checkpoints keep the tower: the Hub's 4.x layout (vision_tower.vision_model.*), transformers 5.x's
# (model.vision_tower.* / vision_tower.*).
SIGLIP_ROOT = r"(?:model\.)?vision_tower\.(?:vision_model\.)?"

# The activations transformers names for SigLIP that are ggml_gelu's tanh approximation (clip.use_gelu).
TANH_GELU = {"gelu_pytorch_tanh", "gelu_new"}


def _preprocessing(config: HFConfig, preproc: dict, image_size: int, resample_bilinear: int = 2) -> list:
    """image mean/std, after checking the rest of the processor does what llama.cpp's fixed-size path does:
    resize to image_size x image_size (bilinear, clip.cpp's Gemma 3 setting), scale by 1/255, normalise."""
    if not preproc:
        _refuse("preprocessor_config.json is missing (image mean/std and size live there)",
                "copy preprocessor_config.json from the model repository into the folder")
    mean, std = preproc.get("image_mean"), preproc.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3):
        _refuse(f"preprocessor_config.json's image_mean/image_std are not 3 numbers each ({mean!r}, {std!r})",
                "re-download preprocessor_config.json")
    size = preproc.get("size") or {}
    sides = {size.get("height"), size.get("width"), size.get("shortest_edge")} - {None}
    if sides and sides != {image_size}:
        _refuse(f"the processor resizes to {size} but the vision tower takes {image_size}x{image_size}",
                "llama.cpp resizes to the tower's image_size; fix preprocessor_config.json's size")
    checks = (
        (preproc.get("resample", resample_bilinear) != resample_bilinear,
         f"resample {preproc.get('resample')} (llama.cpp resizes Gemma 3 images bilinearly: 2)"),
        (preproc.get("do_rescale", True) is False
         or not math.isclose(preproc.get("rescale_factor", 1 / 255), 1 / 255, rel_tol=1e-6),
         "pixel rescaling other than x1/255"),
        (preproc.get("do_normalize", True) is False, "do_normalize false (llama.cpp always normalises)"),
        (bool(preproc.get("do_pan_and_scan")), "do_pan_and_scan (llama.cpp encodes one whole-image crop)"),
    )
    for bad, what in checks:
        if bad:
            _refuse(f"preprocessor_config.json asks for {what}", "llama.cpp's mtmd cannot reproduce it")
    return [(K.ClipVision.IMAGE_MEAN, [float(v) for v in mean], None),
            (K.ClipVision.IMAGE_STD, [float(v) for v in std], None)]


def _siglip_metadata(config: dict, vision: HFConfig, text_hidden: int) -> list:
    act = vision.get("hidden_act")
    if act not in TANH_GELU:
        _refuse(f"vision activation {act!r}", "llama.cpp's SigLIP graph runs the tanh GELU only")
    if int(vision.get("num_channels")) != 3:
        _refuse(f"{vision.get('num_channels')} image channels", "llama.cpp feeds RGB images (3 channels)")
    if vision.get("vision_use_head", default=False):
        _refuse("vision_use_head is set", "the projector reads SigLIP's last hidden state, not its pooling head")
    return [
        (K.Clip.HAS_VISION_ENCODER, True, BOOL),
        (K.ClipVision.PROJECTION_DIM, text_hidden, U32),
        (K.ClipVision.IMAGE_SIZE, int(vision.get("image_size")), U32),
        (K.ClipVision.PATCH_SIZE, int(vision.get("patch_size")), U32),
        (K.ClipVision.EMBEDDING_LENGTH, int(vision.get("hidden_size")), U32),
        (K.ClipVision.FEED_FORWARD_LENGTH, int(vision.get("intermediate_size")), U32),
        (K.ClipVision.BLOCK_COUNT, int(vision.get("num_hidden_layers")), U32),
        (K.ClipVision.Attention.HEAD_COUNT, int(vision.get("num_attention_heads")), U32),
        (K.ClipVision.Attention.LAYERNORM_EPS, float(vision.get("layer_norm_eps")), F32),
        (K.ClipVision.USE_GELU, True, BOOL),
    ]


# --- Gemma 3 ---------------------------------------------------------------------------------------------

# clip.cpp's default for Gemma 3: patches per side averaged 4x4 (64x64 patches -> 16x16 = 256 tokens); other
# factors are written to clip.vision.projector.scale_factor.
GEMMA3_POOL_DEFAULT = 4


def gemma3_pooling(config: dict, vision: HFConfig, preproc: dict) -> tuple[int, int]:
    """(pooling kernel, image tokens): Gemma3MultiModalProjector averages the patch grid down to
    mm_tokens_per_image tokens, a square; llama.cpp pools by one integer factor per side."""
    image_size, patch = int(vision.get("image_size")), int(vision.get("patch_size"))
    tokens = int(config.get("mm_tokens_per_image", 256))
    per_side = math.isqrt(tokens)
    if image_size % patch or per_side * per_side != tokens or (image_size // patch) % per_side:
        _refuse(f"image_size {image_size} / patch_size {patch} patches per side do not pool evenly to "
                f"mm_tokens_per_image {tokens} (a square number dividing them)",
                "llama.cpp pools the patch grid by one integer factor per side")
    seq = preproc.get("image_seq_length")
    if seq is not None and int(seq) != tokens:
        _refuse(f"preprocessor image_seq_length {seq} differs from config mm_tokens_per_image {tokens}",
                "make them agree (the model's projector uses mm_tokens_per_image)")
    return (image_size // patch) // per_side, tokens


def _gemma3_metadata(config: dict, vision: HFConfig, preproc: dict, text_hidden: int) -> list:
    kernel, _ = gemma3_pooling(config, vision, preproc)
    out = [(K.Clip.PROJECTOR_TYPE, "gemma3", STR)] + _siglip_metadata(config, vision, text_hidden)
    out += _preprocessing(HFConfig(config), preproc, int(vision.get("image_size")))
    if kernel != GEMMA3_POOL_DEFAULT:
        out.append((K.ClipVision.Projector.SCALE_FACTOR, kernel, U32))
    return out


GEMMA3_PROJECTOR_ROOT = r"(?:model\.)?multi_modal_projector\."

GEMMA3 = register(ProjectorSpec(
    hf_classes=("Gemma3ForConditionalGeneration",),
    projector_type="gemma3",
    tensors=tuple((SIGLIP_ROOT + hf, name) for hf, name in SIGLIP_TENSORS) + (
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
))


# --- the writer ------------------------------------------------------------------------------------------

def projector_spec(config: dict) -> ProjectorSpec:
    arch = (config.get("architectures") or [None])[0]
    spec = _PROJECTORS.get(arch)
    if spec is None:
        raise UnsupportedArchitecture(
            f"{arch} has no multimodal projector converter",
            f"--mmproj supports {', '.join(sorted(_PROJECTORS))}; convert the text model without --mmproj")
    return spec


def _plan(spec: ProjectorSpec, checkpoint: Checkpoint, outtype: str) -> list[tuple[str, str, tuple, QT]]:
    """[(HF name, GGUF name, shape, type)] for every projector tensor, in checkpoint order."""
    keep, skip = re.compile(spec.keep), re.compile(spec.skip)
    patterns = [(re.compile(hf), name) for hf, name in spec.tensors]
    plan = []
    for hf_name, info in checkpoint.tensors.items():
        if not keep.match(hf_name) or skip.match(hf_name):
            continue
        gguf_name = next((m.expand(name) for p, name in patterns if (m := p.fullmatch(hf_name))), None)
        if gguf_name is None:
            raise UnsupportedArchitecture(f"cannot write the projector: unknown vision tensor {hf_name}",
                                          "this checkpoint's vision tower differs from the family's")
        shape = tuple(info.shape)
        plan.append((hf_name, gguf_name, shape, _tensor_type(spec, gguf_name, shape, outtype)))
    if not plan:
        raise BadCheckpoint("the checkpoint holds no vision tower tensors",
                            "is this the full vision-language checkpoint, not its text-only export?")
    return plan


def _tensor_type(spec: ProjectorSpec, gguf_name: str, shape: tuple, outtype: str) -> QT:
    if len(shape) < 2 or outtype == "f32" or re.fullmatch(spec.always_f32, gguf_name):
        return QT.F32
    block = gguf.GGML_QUANT_SIZES[QT.Q8_0][0]
    if outtype == "q8_0" and shape[-1] % block == 0 and not re.fullmatch(spec.never_quantized, gguf_name):
        return QT.Q8_0
    return QT.F16


def _nbytes(shape: tuple, qtype: QT) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * type_size


def _check_shapes(plan: list, vision: HFConfig, text_hidden: int) -> None:
    hidden, layers = int(vision.get("hidden_size")), int(vision.get("num_hidden_layers"))
    names = {g: shape for _, g, shape, _ in plan}
    expected = {"mm.input_projection.weight": (hidden, text_hidden), "mm.soft_emb_norm.weight": (hidden,),
                "v.post_ln.weight": (hidden,), f"v.blk.{layers - 1}.ffn_down.weight":
                    (hidden, int(vision.get("intermediate_size")))}
    for name, shape in expected.items():
        if names.get(name) != shape:
            raise BadCheckpoint(f"projector tensor {name} has shape {names.get(name)}, config.json implies {shape}",
                                "config.json and the weights do not belong together")
    extra = sorted(n for n in names if n.startswith("v.blk.") and int(n.split(".")[2]) >= layers)
    if extra:
        raise BadCheckpoint(f"vision tensor {extra[0]} beyond num_hidden_layers {layers}",
                            "config.json and the weights do not belong together")


@dataclass(frozen=True)
class _Prepared:
    spec: ProjectorSpec
    config: dict
    vision: HFConfig
    preproc: dict
    metadata: list
    checkpoint: Checkpoint
    plan: list


def _prepare(src: Path, outtype: str) -> _Prepared:
    """Everything that can be wrong with the input, found before anything is written."""
    if outtype not in MMPROJ_OUTTYPES:
        raise UsageError(f"unknown projector outtype {outtype!r}", f"choose one of {', '.join(MMPROJ_OUTTYPES)}")
    if not src.is_dir():
        raise BadCheckpoint(f"{src} is not a folder", "give the path of a Hugging Face model folder")
    config = load_json(src / "config.json", "config.json")
    spec = projector_spec(config)
    if not isinstance(config.get("vision_config"), dict):
        raise BadCheckpoint("config.json has no vision_config", "re-download config.json")
    vision = HFConfig(config["vision_config"], spec.vision_defaults)
    text_hidden = int(HFConfig(config, spec.text_defaults).get("hidden_size"))
    preproc_path = src / "preprocessor_config.json"
    preproc = load_json(preproc_path, preproc_path.name) if preproc_path.is_file() else {}
    metadata = spec.metadata(config, vision, preproc, text_hidden)
    checkpoint = Checkpoint(src)
    plan = _plan(spec, checkpoint, outtype)
    _check_shapes(plan, vision, text_hidden)
    return _Prepared(spec, config, vision, preproc, metadata, checkpoint, plan)


def check_mmproj(src: str | Path, outtype: str = "f16") -> None:
    """Raise what ``convert_mmproj`` would refuse, writing nothing (to refuse before converting the text model)."""
    _prepare(Path(src), outtype)


def default_mmproj_path(src: str | Path, out_dir: Path, outtype: str = "f16") -> Path:
    """llama.cpp's naming: mmproj-<model>-<TYPE>.gguf."""
    return out_dir / f"mmproj-{Path(src).resolve().name}-{outtype.upper()}.gguf"


def convert_mmproj(src: str | Path, out: str | Path, *, outtype: str = "f16", force: bool = False,
                   progress: Progress = QUIET) -> MmprojResult:
    """Write the vision tower + projector of the vision-language checkpoint ``src`` as llama.cpp's mmproj GGUF
    ``out`` (F16 matmul weights by default, F32, or Q8_0 where llama.cpp's converter quantizes). Refuses, before writing anything, a checkpoint whose
    vision settings llama.cpp cannot reproduce. Nothing is left behind on failure."""
    started = time.monotonic()
    src, out = Path(src), Path(out)
    p = _prepare(src, outtype)
    check_output_path(out, force)

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(f"{src.resolve().name} projector")
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_string("edgepack.version", __version__)
    writer.add_string("edgepack.source.architecture", p.config["architectures"][0])
    for key, value, value_type in p.metadata:
        if value_type is None:
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, value_type)
    for _, gguf_name, shape, qtype in p.plan:
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)

    transforms = [(re.compile(pattern), fn) for pattern, fn in p.spec.transforms.items()]
    total = sum(int(np.prod(shape)) for _, _, shape, _ in p.plan)
    with atomic_path(out) as tmp:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        progress.start(f"converting to {out.name}", total)
        for hf_name, gguf_name, shape, qtype in p.plan:
            data = p.checkpoint.read(hf_name)
            for pattern, fn in transforms:
                if pattern.fullmatch(gguf_name):
                    data = fn(data, p.vision)
            writer.write_tensor_data(_cast(data, _held_dtype(data), qtype))
            progress.advance(int(np.prod(shape)))
            del data
        writer.close()
        progress.finish()
    return MmprojResult(output=out, architecture=p.config["architectures"][0],
                        projector_type=p.spec.projector_type, outtype=outtype, n_tensors=len(p.plan),
                        n_params=total, size_bytes=out.stat().st_size, seconds=round(time.monotonic() - started, 3),
                        image_size=int(p.vision.get("image_size")),
                        image_tokens=p.spec.image_tokens(p.config, p.vision, p.preproc))
