"""``merge_adapter``: W + scaling·B·A into the base's safetensors, one tensor at a time; ``convert_merged``: merge
into a temp folder, then convert."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..convert.checkpoint import TensorInfo
from ..convert.core import ConvertResult, convert
from ..convert.floats import f32_to_bf16, to_f32
from ..errors import AdapterError, OutputError, UsageError
from ..fileio import atomic_dir, check_output_path, sha256_file
from ..progress import QUIET, Progress
from ..source import Provenance
from .check import _plan, _refuse
from .peft import ADAPTER_CONFIG, WEIGHT_SUFFIXES
from .results import MergeResult


def merge_adapter(peft_dir: str | os.PathLike, base_hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  scale: float = 1.0, strict: bool = False, force: bool = False,
                  progress: Progress = QUIET) -> MergeResult:
    """Write ``base_hf_dir`` with the adapter merged in (``W + scale·scaling·B·A``) to the folder ``out_dir``.

    ``scale`` is llama.cpp's lora scale (``--lora-scaled``): 1.0 merges the adapter as trained.
    Weights keep the base's files, tensor names and dtypes (the sum is computed in float32); config,
    tokenizer and other non-weight files are copied, so the result converts like any other model. The folder
    is built beside ``out_dir`` and renamed into place only when complete.
    """
    started = time.monotonic()
    if not math.isfinite(scale):
        raise UsageError(f"--scale must be a finite number, not {scale}", "1.0 merges the adapter as trained")
    out = Path(out_dir)
    text = os.fspath(base_hf_dir)
    if Path(text).is_file():
        raise AdapterError(f"merge needs the base as a Hugging Face folder, not the file {Path(text).name}",
                           "give the folder the GGUF was converted from (or convert the adapter instead)")
    if out.exists() and not (force and out.is_dir()):
        raise OutputError(f"output {out} already exists" + ("" if out.is_dir() else " and is not a folder"),
                          "pass --force to replace it" if out.is_dir() else "choose another -o path")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} does not exist", f"create it first: mkdir -p {parent}")
    plan = _plan(peft_dir, base_hf_dir, strict=strict, progress=progress)
    _refuse(plan.report)
    adapter, base = plan.adapter, plan.base
    deltas = {pair.base_tensor: pair for pair, _ in plan.targets}
    checkpoint = base.checkpoint
    merged = 0
    with atomic_dir(out) as tmp:
        total = sum(info.nbytes for info in checkpoint.tensors.values())
        progress.start(f"merging into {out.name}", total)
        for file in checkpoint.files:
            infos = [i for i in checkpoint.tensors.values() if i.file == file]
            infos.sort(key=lambda i: i.offset)
            with open(tmp / file.name, "wb") as f:
                _write_safetensors_header(f, infos)
                for info in infos:
                    data = checkpoint.read(info.name)
                    pair = deltas.get(info.name)
                    if pair is not None:
                        data = _merged(data, info.dtype, adapter.read(pair.a), adapter.read(pair.b),
                                       scale * pair.scaling)
                        merged += 1
                    f.write(np.ascontiguousarray(data).tobytes())
                    progress.advance(info.nbytes)
        progress.finish()
        copied = []
        for item in sorted(base.path.iterdir()):
            if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and not item.name.startswith("."):
                shutil.copy2(item, tmp / item.name)
                copied.append(item.name)
        record = {"edgepack_version": __version__, "base": base.name, "base_sha256": base.source_hashes(progress),
                  "adapter": str(adapter.folder), "adapter_sha256": {p.name: sha256_file(p) for p in (
                      adapter.folder / ADAPTER_CONFIG, adapter.weights)}, "scaling": adapter.scaling,
                  "lora_alpha": adapter.lora_alpha, "scale": scale, "merged_tensors": sorted(deltas)}
        (tmp / "edgepack-merge.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    files = sorted(p.name for p in out.iterdir())
    return MergeResult(output=out, architecture=base.hf_class, n_merged=merged, n_tensors=len(checkpoint.tensors),
                       files=files, seconds=round(time.monotonic() - started, 3), warnings=plan.report.warnings)


def _merged(weight: np.ndarray, dtype: str, a: np.ndarray, b: np.ndarray, scaling: float) -> np.ndarray:
    """weight + scaling·(B @ A) in float32, returned in the weight's own dtype (BF16 as uint16 bits)."""
    w32 = to_f32(weight, dtype) + (b @ a) * np.float32(scaling)
    if dtype == "BF16":  # round to nearest even, as torch does
        return f32_to_bf16(w32)
    return w32.astype(weight.dtype)


def _write_safetensors_header(f, infos: list[TensorInfo]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for info in infos:
        header[info.name] = {"dtype": info.dtype, "shape": list(info.shape),
                             "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)


def convert_merged(peft_dir: str | os.PathLike, base_hf_dir: str | os.PathLike, out: str | os.PathLike, *,
                   strict: bool = False, force: bool = False, provenance: Provenance | None = None,
                   progress: Progress = QUIET, **convert_options) -> ConvertResult:
    """``edgepack convert BASE --merge-lora PEFT_DIR``: merge into a temp folder beside ``out``, convert it,
    remove it. ``convert_options`` go to ``convert`` (outtype, pre_tokenizer, ...)."""
    out = Path(out)
    check_output_path(out, force)
    parent = out.parent if str(out.parent) else Path(".")
    name = f"{Path(os.fspath(base_hf_dir)).resolve().name}-{Path(os.fspath(peft_dir)).resolve().name}"
    with tempfile.TemporaryDirectory(prefix=".edgepack-merge-", dir=parent) as tmp:
        merged = Path(tmp) / name  # the GGUF's general.name comes from this folder's name
        merge_adapter(peft_dir, base_hf_dir, merged, strict=strict, progress=progress)
        return convert(merged, out, force=force, provenance=provenance, progress=progress, **convert_options)
