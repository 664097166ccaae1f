"""The projector writer every family shares: plan the tensors a family's spec names, refuse what llama.cpp
could not reproduce before writing, write the GGUF atomically."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ... import __version__
from ... import gguf_keys as keys
from ...errors import BadCheckpoint, UnsupportedArchitecture, UsageError
from ...fileio import atomic_path, check_output_path
from ...mtmd import check_projector_loads
from ...progress import QUIET, Progress
from ..checkpoint import Checkpoint, load_json
from ..core import QT, _cast, _held_dtype
from ..spec import HFConfig
from .common import ProjectorSpec, registered

MMPROJ_OUTTYPES = ("f16", "f32", "q8_0")
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_BLOCK = re.compile(r"v\.blk\.(\d+)\.")


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
    image_tokens: int  # embeddings one image (one tile, for the tiling families) becomes in the text model's prompt
    compute_bytes: int = 0  # the compute buffer libmtmd reserved when it loaded the file (for its largest image)


def supported_projectors() -> dict[str, str]:
    return {name: spec.projector_type for name, spec in sorted(registered().items())}


def projector_spec(config: dict) -> ProjectorSpec:
    arch = (config.get("architectures") or [None])[0]
    spec = registered().get(arch)
    if spec is None:
        raise UnsupportedArchitecture(
            f"{arch} has no multimodal projector converter",
            f"--mmproj supports {', '.join(sorted(registered()))}; convert the text model without --mmproj")
    return spec


def _plan(spec: ProjectorSpec, checkpoint: Checkpoint, outtype: str, layers: int, total: int,
          vision: HFConfig) -> list:
    """[(HF name, GGUF name, shape, type, view)] for every projector tensor, in checkpoint order (``view``: what
    the spec's ``views`` takes from the checkpoint tensor, None for all of it); vision blocks from
    ``layers`` on (which the model never reads) are left out, blocks from ``total`` (num_hidden_layers) on are
    refused."""
    keep, skip = re.compile(spec.keep), re.compile(spec.skip)
    patterns = [(re.compile(hf), name) for hf, name in spec.tensors + spec.config_tensors(vision)]
    plan = []
    for hf_name, info in checkpoint.tensors.items():
        if not keep.match(hf_name) or skip.match(hf_name):
            continue
        gguf_name = next((m.expand(name) for p, name in patterns if (m := p.fullmatch(hf_name))), None)
        if gguf_name is None:
            raise UnsupportedArchitecture(f"cannot write the projector: unknown vision tensor {hf_name}",
                                          "this checkpoint's vision tower differs from the family's")
        block = _BLOCK.match(gguf_name)
        if block and int(block.group(1)) >= total:
            raise BadCheckpoint(f"vision tensor {hf_name} beyond num_hidden_layers {total}",
                                "config.json and the weights do not belong together")
        if block and int(block.group(1)) >= layers:
            continue
        for name, shape, view in spec.views(gguf_name, tuple(info.shape)):
            plan.append((hf_name, name, shape, _tensor_type(spec, name, shape, outtype), view))
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


def _check_shapes(spec: ProjectorSpec, plan: list, config: dict, vision: HFConfig, text_hidden: int,
                  layers: int) -> None:
    names = {g: shape for _, g, shape, _, _ in plan}
    for name, shape in spec.shapes(config, vision, text_hidden).items():
        if names.get(name) != tuple(shape):
            raise BadCheckpoint(f"projector tensor {name} has shape {names.get(name)}, config.json implies "
                                f"{tuple(shape)}", "config.json and the weights do not belong together")
    if not any(name.startswith(f"v.blk.{layers - 1}.") for name in names):
        raise BadCheckpoint(f"the vision tower has fewer than the {layers} blocks config.json names",
                            "config.json and the weights do not belong together")


def _processor_settings(src: Path) -> dict:
    """The image processor's settings: preprocessor_config.json, and what only processor_config.json names
    (LFM2-VL keeps its tiling there, at the top level or, as transformers 5.x saves it, under image_processor)."""
    settings = {}
    for name in ("processor_config.json", "preprocessor_config.json"):  # the later file wins
        if (src / name).is_file():
            data = load_json(src / name, name)
            nested = data.get("image_processor")
            settings.update({**data, **(nested if isinstance(nested, dict) else {})})
    settings.pop("image_processor", None)
    return settings


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
    preproc = _processor_settings(src)
    metadata = spec.metadata(config, vision, preproc, text_hidden)
    layers = spec.vision_layers(config, vision)
    checkpoint = Checkpoint(src)
    plan = _plan(spec, checkpoint, outtype, layers, int(vision.get("num_hidden_layers", "depth")), vision)
    _check_shapes(spec, plan, config, vision, text_hidden, layers)
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
    ``out`` (F16 matmul weights by default, F32, or Q8_0 where llama.cpp's converter quantizes). Refuses, before
    writing anything, a checkpoint whose vision settings llama.cpp cannot reproduce, and never renames into place
    a file llama.cpp's libmtmd does not load (checked in a child process). Nothing is left behind on failure."""
    started = time.monotonic()
    src, out = Path(src), Path(out)
    p = _prepare(src, outtype)
    check_output_path(out, force)

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(f"{src.resolve().name} projector")
    writer.add_file_type(FILE_TYPES[outtype])
    writer.add_string(keys.VERSION, __version__)
    writer.add_string(keys.Source.ARCHITECTURE, p.config["architectures"][0])
    for key, value, value_type in p.metadata:
        if value_type is None:
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, value_type)
    for _, gguf_name, shape, qtype, _ in p.plan:
        writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), _nbytes(shape, qtype), raw_dtype=qtype)

    transforms = [(re.compile(pattern), fn) for pattern, fn in p.spec.transforms.items()]
    total = sum(int(np.prod(shape)) for _, _, shape, _, _ in p.plan)
    with atomic_path(out) as tmp:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        progress.start(f"converting to {out.name}", total)
        for hf_name, gguf_name, shape, qtype, view in p.plan:
            data = p.checkpoint.read(hf_name)
            if view is not None:
                data = np.ascontiguousarray(view(data))
            for pattern, fn in transforms:
                if pattern.fullmatch(gguf_name):
                    data = fn(data, p.vision)
            writer.write_tensor_data(_cast(data, _held_dtype(data), qtype))
            progress.advance(int(np.prod(shape)))
            del data
        writer.close()
        progress.finish()
        compute_bytes = check_projector_loads(tmp, out.name)  # never rename into place a file llama.cpp refuses
    image_size = next((v for k, v, _ in p.metadata if k == gguf.Keys.ClipVision.IMAGE_SIZE), 0)
    return MmprojResult(output=out, architecture=p.config["architectures"][0],
                        projector_type=p.spec.projector_type, outtype=outtype, n_tensors=len(p.plan),
                        n_params=total, size_bytes=out.stat().st_size, seconds=round(time.monotonic() - started, 3),
                        image_size=int(image_size), image_tokens=p.spec.image_tokens(p.config, p.vision, p.preproc),
                        compute_bytes=compute_bytes)
