"""An image in the prompt, for ``edgepack fit --mmproj``: the image's prompt tokens and the time it adds before the
first token on a device (the projector's memory is ``memory.projector_bytes``).

A projector GGUF (``convert --mmproj``) is described from its header (the vision tower's geometry, clip.vision.*,
and its tensors), with the patches and tokens of one image at the tower's own tile size
(clip.vision.image_size, square: Gemma 3's whole image, one SmolVLM tile, a full LFM2-VL tile of 256 tokens, a
Qwen-VL image of that side). An app's real image can be several tiles (SmolVLM, LFM2-VL) or another size (Qwen),
and ``edgepack bench --image`` measures that one here; the projection is per tile. Time to first token of an image
= encoding (its FLOPs at the device's prompt GFLOP/s for the projector's weight type) + decoding its tokens at the
text model's projected prompt speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadGGUF, UsageError
from ..ggufheader import read_header
from ..quants import QT, quant_family

# projector type -> the patches merged (or pooled) per side into one token when the file names no factor
# (clip.cpp's defaults)
MERGES = {"gemma3": 4, "gemma4v": 3, "idefics3": 2, "lfm2": 2, "qwen3vl_merger": 2}
LFM2_MAX_TOKENS = 256  # clip.cpp's set_limit_image_tokens(64, 256) for LFM2


@dataclass(frozen=True)
class ProjectorDesc:
    path: str
    projector_type: str
    n_params: int
    quant_family: str  # of most of its matmul weights: which prompt GFLOP/s a device encodes at
    image_size: int  # the tile one projection assumes (pixels per side)
    patches: int  # of that tile
    image_tokens: int  # what it becomes in the prompt
    flops: float  # to encode it


def describe_projector(path: str | Path) -> ProjectorDesc:
    """The projector GGUF ``path`` from its header. Raises ``BadGGUF`` for a file that is not a projector,
    ``UsageError`` for a projector type fit cannot size yet."""
    header = read_header(path)
    if header.get("general.architecture") != "clip":
        raise BadGGUF(f"{path} is not a multimodal projector (general.architecture is "
                      f"{header.get('general.architecture')!r})",
                      "give the mmproj GGUF edgepack convert --mmproj wrote")
    kind = header.get("clip.projector_type")
    if kind not in MERGES:
        raise UsageError(f"fit cannot size a {kind!r} projector yet", f"sized: {', '.join(sorted(MERGES))}")
    size, patch = int(header.get("clip.vision.image_size")), int(header.get("clip.vision.patch_size"))
    hidden, layers = int(header.get("clip.vision.embedding_length")), int(header.get("clip.vision.block_count"))
    merge = int(header.get("clip.vision.projector.scale_factor") or header.get("clip.vision.spatial_merge_size")
                or MERGES[kind])
    patches = (size // patch) ** 2
    if kind == "lfm2":  # a full tile: the table resized to max_image_tokens x merge^2 patches
        patches = LFM2_MAX_TOKENS * merge * merge
        size = int(math.isqrt(patches)) * patch
    tokens = patches // (merge * merge)
    blocks = sum(t.n_elements for t in header.tensors if t.name.startswith("v.blk.") and len(t.shape) >= 2)
    embed = sum(t.n_elements for t in header.tensors if t.name.startswith("v.patch_embd"))
    mm = sum(t.n_elements for t in header.tensors if t.name.startswith("mm.") and len(t.shape) >= 2)
    # 2 FLOPs per weight per patch (tower) or per token (projector after the merge/pooling), plus attention
    # (QK^T and AV over every patch pair, every layer)
    flops = 2.0 * (blocks + embed) * patches + 4.0 * patches * patches * hidden * layers + 2.0 * mm * tokens
    matmul = {}
    for t in header.tensors:
        if len(t.shape) >= 2:
            family = quant_family(QT(int(t.type)))
            matmul[family] = matmul.get(family, 0) + t.n_bytes
    return ProjectorDesc(path=str(path), projector_type=kind, n_params=header.n_params,
                         quant_family=max(matmul, key=matmul.get) if matmul else "f16", image_size=size,
                         patches=patches, image_tokens=tokens, flops=flops)


def image_ttft_s(desc: ProjectorDesc, gflops: float, pp_tokens_per_s: float) -> dict:
    """Seconds before the first token that one image of ``desc.image_size`` adds on a device: encoding at
    ``gflops`` (the device backend's prompt GFLOP/s for the projector's weight type) and decoding its tokens at the
    text model's projected prompt speed."""
    encode_s = desc.flops / (gflops * 1e9)
    prefill_s = desc.image_tokens / pp_tokens_per_s
    return {"image_tokens": desc.image_tokens, "encode_s": encode_s, "prefill_s": prefill_s,
            "ttft_s": encode_s + prefill_s}
