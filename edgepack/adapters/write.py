"""``convert_adapter``: the adapter as llama.cpp's GGUF LoRA format (module docstring of ``edgepack.adapters``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import gguf
import numpy as np

from .. import __version__
from .. import gguf_keys as keys
from ..errors import AdapterError, UsageError
from ..fileio import atomic_path, check_output_path, sha256_file
from ..progress import QUIET, Progress
from .base import _Base
from .check import _plan, _refuse, _row_permutation
from .peft import ADAPTER_CONFIG, ADAPTER_OUTTYPES, _Adapter
from .results import AdapterResult


def convert_adapter(peft_dir: str | os.PathLike, base: str | os.PathLike, out: str | os.PathLike, *,
                    outtype: str = "f32", strict: bool = False, force: bool = False,
                    progress: Progress = QUIET) -> AdapterResult:
    """Write the PEFT LoRA adapter in ``peft_dir`` as a llama.cpp GGUF adapter for ``base``.

    ``outtype``: f32 (exact) or f16. The pair is checked first; nothing is written if it does not fit.
    """
    started = time.monotonic()
    out = Path(out)
    if outtype not in ADAPTER_OUTTYPES:
        raise UsageError(f"unknown adapter outtype {outtype!r}", f"choose one of {', '.join(ADAPTER_OUTTYPES)}")
    check_output_path(out, force)
    plan = _plan(peft_dir, base, strict=strict, progress=progress)
    _refuse(plan.report)
    adapter, base_ = plan.adapter, plan.base
    out_dtype = np.float32 if outtype == "f32" else np.float16

    base_hashes = base_.source_hashes(progress)
    adapter_hashes = {p.name: sha256_file(p) for p in (adapter.folder / ADAPTER_CONFIG, adapter.weights)}
    if base_.kind == "gguf":
        base_.gguf_sha256 = sha256_file(base_.path)

    perms: dict[tuple, np.ndarray | None] = {}
    tensors = []
    for pair, gguf_name in plan.targets:
        a, b = adapter.read(pair.a), adapter.read(pair.b)
        transform = base_.spec.transform_for(pair.base_tensor)
        if transform is not None:
            shape = base_.shapes[gguf_name]
            key = (id(transform), shape)
            if key not in perms:
                perms[key] = _row_permutation(transform, shape, base_.config)
            if perms[key] is None:
                raise AdapterError(f"the {base_.spec.arch_name} converter reshapes {pair.kind} in a way a LoRA "
                                   "pair cannot follow", "merge the adapter instead: edgepack adapter merge")
            b = b[perms[key]]
        # llama.cpp scales by alpha/rank (rank = the pair's own); fold any other PEFT scaling into lora_b.
        llama_scaling = adapter.lora_alpha / pair.rank if adapter.lora_alpha else 1.0
        if pair.scaling != llama_scaling:
            b = b * np.float32(pair.scaling / llama_scaling)
        tensors.append((gguf_name + ".lora_a", np.ascontiguousarray(a, dtype=out_dtype)))
        tensors.append((gguf_name + ".lora_b", np.ascontiguousarray(b, dtype=out_dtype)))

    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=base_.spec.arch_name)
        _add_adapter_metadata(writer, adapter, base_, adapter_hashes, base_hashes)
        for name, data in tensors:
            writer.add_tensor(name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return AdapterResult(output=out, architecture=base_.hf_class, gguf_architecture=base_.spec.arch_name,
                         outtype=outtype, n_pairs=len(plan.targets), ranks=plan.report.ranks,
                         lora_alpha=adapter.lora_alpha, size_bytes=out.stat().st_size,
                         seconds=round(time.monotonic() - started, 3), base_name=base_.name,
                         base_sha256=base_hashes, adapter_sha256=adapter_hashes, warnings=plan.report.warnings)


def _add_adapter_metadata(writer: gguf.GGUFWriter, adapter: _Adapter, base: _Base, adapter_hashes: dict[str, str],
                          base_hashes: dict[str, str]) -> None:
    K = gguf.Keys
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(K.Adapter.TYPE, "lora")
    writer.add_float32(K.Adapter.LORA_ALPHA, adapter.lora_alpha)
    writer.add_name(adapter.folder.resolve().name)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, base.name)
    if base.provenance and base.provenance.repo_id:
        writer.add_base_model_repo_url(0, f"https://huggingface.co/{base.provenance.repo_id}")
    writer.add_string(keys.VERSION, __version__)
    if base.hf_class:
        writer.add_string(keys.Base.ARCHITECTURE, base.hf_class)
    writer.add_string(keys.Base.NAME, base.name)
    if base_hashes:  # the same values the converter records as keys.Source.SHA256 in every GGUF of this base
        writer.add_array(keys.Base.FILES, sorted(base_hashes))
        writer.add_array(keys.Base.SHA256, [base_hashes[k] for k in sorted(base_hashes)])
    if base.gguf_sha256:
        writer.add_string(keys.Base.GGUF_SHA256, base.gguf_sha256)
    for key, value in keys.provenance_items(keys.Base.PROVENANCE, base.provenance):
        writer.add_string(key, value)
    if adapter.declared_base:
        writer.add_string(keys.Adapter.DECLARED_BASE, adapter.declared_base)
    writer.add_string(keys.Adapter.SCALING, adapter.scaling)
    writer.add_array(keys.Adapter.FILES, sorted(adapter_hashes))
    writer.add_array(keys.Adapter.SHA256, [adapter_hashes[k] for k in sorted(adapter_hashes)])
