"""Whether an adapter fits its base: every reason it does not, as one ``CompatibilityReport``; the plan
``convert`` and ``merge`` then follow."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ..convert.checkpoint import Checkpoint
from ..convert.spec import HFConfig, Transform, supported_architectures
from ..errors import AdapterError, EdgepackError
from ..fileio import sha256_file
from ..progress import QUIET, Progress
from .base import _Base, _load_base, _resolve
from .peft import LORA_TENSOR_KINDS, _Adapter, _LAYER_INDEX, _Pair, _load_adapter
from .results import CompatibilityReport


@dataclass
class _Plan:
    adapter: _Adapter
    base: _Base
    report: CompatibilityReport
    targets: list[tuple[_Pair, str]]  # (pair, GGUF tensor name), in the base's order


def _row_permutation(transform: Transform, shape: tuple[int, ...], config: HFConfig) -> np.ndarray | None:
    """The row order ``transform`` produces on a weight of ``shape``, or None if it is not a pure row permutation.

    The probe holds each element's own index, so the transformed probe says exactly where every element went.
    """
    rows, cols = shape
    probe = np.arange(rows * cols, dtype=np.float64).reshape(rows, cols)
    try:
        got = np.asarray(transform(probe, config))
    except EdgepackError:
        raise
    except Exception:
        return None
    if got.shape != probe.shape:
        return None
    order = got[:, 0] / cols
    perm = order.astype(np.int64)
    if not np.array_equal(order, perm) or not np.array_equal(np.sort(perm), np.arange(rows)):
        return None
    return perm if np.array_equal(got, probe[perm]) else None


def _plan(peft_dir: str | os.PathLike, base: str | os.PathLike, *, strict: bool = False,
          progress: Progress = QUIET) -> _Plan:
    peft_path, _ = _resolve(peft_dir, "adapter", progress)
    adapter = _load_adapter(peft_path)
    base_ = _load_base(base, progress)
    report = CompatibilityReport(
        adapter=str(peft_dir), base=str(base), base_kind=base_.kind, base_name=base_.name,
        architecture=base_.hf_class, gguf_architecture=base_.spec.arch_name, n_layers=base_.n_blocks,
        lora_alpha=adapter.lora_alpha, scaling=adapter.scaling, errors=list(adapter.errors))
    declared = adapter.declared_class
    if declared and base_.hf_class and declared != base_.hf_class:
        report.errors.insert(0, f"architecture mismatch: the adapter was trained on {declared}, the base is "
                                f"{base_.hf_class}")
    elif declared and not base_.hf_class:
        spec = supported_architectures().get(declared)
        if spec is not None and spec != base_.spec.arch_name:
            report.errors.insert(0, f"architecture mismatch: the adapter was trained on {declared} ({spec}), the "
                                    f"base is {base_.spec.arch_name}")

    kinds = {gguf.TENSOR_NAMES[k] for k in LORA_TENSOR_KINDS}
    targets = []
    for pair in adapter.pairs.values():
        if pair.a is None or pair.b is None:
            continue
        layer = _LAYER_INDEX.search("." + pair.module + ".")
        if layer and int(layer.group(1)) >= base_.n_blocks:
            report.errors.append(f"layer count mismatch: the adapter targets layer {layer.group(1)} "
                                 f"({pair.module}), the base has {base_.n_blocks} layers")
            continue
        gguf_name = base_.gguf_name(pair.base_tensor)
        if pair.kind == "lm_head" and (gguf_name is None or gguf_name not in base_.shapes):
            report.errors.append("the adapter targets lm_head, but the base has no separate lm_head (its "
                                 "embeddings are tied); hint: retrain without lm_head in target_modules")
            continue
        if gguf_name is None:
            report.errors.append(f"unsupported target module {pair.kind} ({pair.module}): not a weight of a "
                                 f"{base_.hf_class or base_.spec.arch_name} model")
            continue
        kind = re.sub(r"^blk\.\d+\.", "blk.{bid}.", gguf_name.removesuffix(".weight"))
        if kind not in kinds:
            report.errors.append(f"unsupported target module {pair.kind} ({pair.module} -> {gguf_name}): llama.cpp "
                                 "applies LoRA to attention/feed-forward projections and the output head only")
            continue
        shape = base_.shapes.get(gguf_name)
        if shape is None:
            report.errors.append(f"the base has no {gguf_name} for {pair.module}")
            continue
        (out_rows, in_cols), rank = shape, pair.rank
        if pair.a.shape[1] != in_cols or pair.b.shape[0] != out_rows:
            report.errors.append(f"size mismatch on {pair.module}: the adapter's B·A is "
                                 f"{pair.b.shape[0]}x{pair.a.shape[1]}, the base weight is {out_rows}x{in_cols}")
            continue
        targets.append((pair, gguf_name, rank))
    for hf_name, info in adapter.frozen.items():
        gguf_name = base_.gguf_name(hf_name)
        shape = base_.shapes.get(gguf_name) if gguf_name else None
        if shape is not None and tuple(info.shape) != shape:
            report.errors.append(f"size mismatch: the adapter's copy of {hf_name} is {list(info.shape)}, the base's "
                                 f"is {list(shape)} (a resized vocabulary?)")
    order = {name: i for i, name in enumerate(base_.shapes)}
    targets.sort(key=lambda t: (order.get(t[1], 0), t[1]))
    report.target_modules = sorted({p.kind for p, _, _ in targets})
    report.n_pairs = len(targets)
    report.ranks = sorted({r for _, _, r in targets})
    report.errors = _dedupe(report.errors)
    _check_identity(adapter, base_, report, strict)
    return _Plan(adapter, base_, report, [(p, n) for p, n, _ in targets])


def _dedupe(messages: list[str]) -> list[str]:
    """Collapse messages that differ only in a layer number, keeping the first of each with a count."""
    seen: dict[str, list[str]] = {}
    for m in messages:
        seen.setdefault(re.sub(r"\d+", "#", m), []).append(m)
    return [v[0] + (f" (and {len(v) - 1} more like it)" if len(v) > 1 else "") for v in seen.values()]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.rstrip("/").rsplit("/", 1)[-1].lower())


def _check_identity(adapter: _Adapter, base: _Base, report: CompatibilityReport, strict: bool) -> None:
    """Does adapter_config.json's base_model_name_or_path (and revision) name this base? Mismatch: a warning,
    or an error when ``strict``; unverifiable: a warning."""
    declared, revision = adapter.declared_base, adapter.config.get("revision")
    problems = []
    if not declared:
        report.warnings.append("adapter_config.json does not name its base model (base_model_name_or_path); "
                               "cannot check that it was trained on this base")
        return
    local = Path(declared).expanduser()
    repo_id = base.provenance.repo_id if base.provenance else None
    if local.is_dir():
        if base.kind == "hf" and local.resolve() == base.path.resolve():
            report.base_identity = "verified"
        else:
            try:
                declared_hashes = {p.name: sha256_file(p) for p in Checkpoint(local).files}
            except EdgepackError:
                declared_hashes = {}
            base_hashes = base.source_hashes()
            if declared_hashes and base_hashes:
                if sorted(declared_hashes.values()) == sorted(base_hashes.values()):
                    report.base_identity = "verified"
                else:
                    problems.append(f"base mismatch: the adapter was trained on {declared}, whose weights' sha256 "
                                    f"differ from {base.name}'s")
    elif repo_id:
        if declared.lower() == repo_id.lower():
            report.base_identity = "verified"
        else:
            problems.append(f"base mismatch: the adapter was trained on {declared}, the base is {repo_id}")
    if report.base_identity != "verified" and not problems:
        candidates = {_norm(n) for n in base.names | {base.name}}
        if _norm(declared) in candidates:
            report.warnings.append(f"the adapter names its base {declared!r}; the base matches by name only "
                                   "(no repo id or hashes to compare)")
        else:
            problems.append(f"base mismatch: the adapter was trained on {declared!r}, the base is {base.name!r}")
    pinned = base.provenance and (base.provenance.commit_sha or base.provenance.revision)
    if revision and pinned:
        known = {base.provenance.commit_sha, base.provenance.revision} - {None}
        if not any(k == revision or (len(revision) >= 7 and k.startswith(revision)) for k in known):
            problems.append(f"revision mismatch: the adapter was trained on revision {revision}, the base is "
                            f"{base.provenance.commit_sha or base.provenance.revision}")
    elif revision:
        report.warnings.append(f"the adapter names base revision {revision}; the base records no revision to "
                               "compare it with")
    if problems:
        report.base_identity = "mismatch"
        if strict:
            report.errors.extend(problems)
        else:
            report.warnings.extend(p + " (--strict makes this an error)" for p in problems)


def check_compatibility(peft_dir: str | os.PathLike, base: str | os.PathLike, *, strict: bool = False,
                        progress: Progress = QUIET) -> CompatibilityReport:
    """Everything that makes the adapter in ``peft_dir`` unfit for ``base`` (HF folder, repo id or GGUF).

    Never raises for an unfit pair (the report's ``errors`` say why); raises for unreadable inputs.
    """
    return _plan(peft_dir, base, strict=strict, progress=progress).report


def _refuse(report: CompatibilityReport) -> None:
    if report.errors:
        first, _, hint = report.errors[0].partition("; hint: ")
        more = f" (+{len(report.errors) - 1} more problem(s): edgepack adapter check)" if len(report.errors) > 1 else ""
        raise AdapterError(first + more, hint or "is this adapter trained on this base? "
                                                 "(edgepack adapter check PEFT_DIR --base BASE lists every problem)")
