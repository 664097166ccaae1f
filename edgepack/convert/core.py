"""The shared converter: HF folder -> GGUF, one tensor at a time, for any registered ``ArchSpec``.

Flow: read config.json and pick the family spec -> check the output path -> index the safetensors headers
and validate every expected tensor's presence and shape -> build the vocabulary -> declare all metadata and
tensor infos -> stream the tensors (read, transform, cast, write, forget) into a temp file beside the output
-> fsync and rename. Peak memory is a small multiple of the largest tensor, never the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import gguf
import numpy as np

from .. import __version__
from .. import gguf_keys as keys
from ..chattemplate import audit_all
from ..errors import BadCheckpoint, UnsupportedArchitecture, UsageError
from ..fileio import atomic_path, check_output_path, patch_placeholders, sha256_file
from ..ggufheader import read_header
from ..progress import QUIET, Progress
from ..quants import keeps_f32
from ..source import Provenance
from . import floats
from .checkpoint import SAFETENSORS_DTYPES, Checkpoint, TensorInfo, load_json
from .spec import ArchSpec, Expected, HFConfig, Part, family_of, gguf_name_of
from .vocab import load_vocab

QT = gguf.GGMLQuantizationType
OUTTYPES = ("auto", "f32", "f16", "bf16", "q8_0")
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}


@dataclass
class ConvertResult:
    """What ``convert`` wrote."""

    output: Path
    architecture: str  # Hugging Face class
    gguf_architecture: str
    outtype: str
    n_tensors: int
    n_params: int
    size_bytes: int
    seconds: float
    tokenizer: str
    vocab_size: int
    source_sha256: dict[str, str] = field(default_factory=dict)
    # Checkpoint parts llama.cpp's text model does not use (a multimodal model's vision tower...): part ->
    # number of tensors left out. Also recorded in the GGUF as edgepack.source.dropped.
    dropped: dict[str, int] = field(default_factory=dict)
    chat_template: dict | None = None  # chattemplate.TemplateAudit.to_json(): the audit of what was copied


@dataclass(frozen=True)
class PlannedTensor:
    gguf_name: str
    source: TensorInfo | None  # None for tensors computed from the config (extra_tensors) or built from parts
    shape: tuple[int, ...]  # HF order (row-major); GGUF stores the reverse
    out_type: QT
    data: np.ndarray | None = None  # only for computed tensors
    hf_name: str = ""  # the name the family knows the tensor by (after ArchSpec.renames)
    parts: tuple[tuple[TensorInfo, Part], ...] = ()  # a tensor stacked from checkpoint blocks, in order


def convert(src: str | Path, out: str | Path, *, outtype: str = "auto", vocab_only: bool = False,
            force: bool = False, pre_tokenizer: str | None = None, provenance: Provenance | None = None,
            allow_unsafe_chat_template: bool = False, progress: Progress = QUIET) -> ConvertResult:
    """Convert the Hugging Face model folder ``src`` to the GGUF file ``out``.

    ``outtype``: auto (the source's 16-bit type), f32, f16, bf16 or q8_0. ``vocab_only`` writes the
    hyperparameters and tokenizer without weights. ``pre_tokenizer`` overrides the detected llama.cpp
    pre-tokenizer name. The chat template is audited (``edgepack.chattemplate``): one that uses constructs able
    to reach outside the template is refused unless ``allow_unsafe_chat_template``. Raises ``EdgepackError``
    subclasses; on any failure no output is left behind.
    """
    started = time.monotonic()
    src, out = Path(src), Path(out)
    if outtype not in OUTTYPES:
        raise UsageError(f"unknown outtype {outtype!r}", f"choose one of {', '.join(OUTTYPES)}")
    if not src.is_dir():
        raise BadCheckpoint(f"{src} is not a folder", "give the path of a Hugging Face model folder")
    spec, config = family_of(load_json(src / "config.json", "config.json"))
    spec.check(config)
    check_output_path(out, force)

    # Everything that can be wrong with the input is found here, before any output or progress appears.
    checkpoint = None if vocab_only else Checkpoint(src)
    n_vocab = config.get("vocab_size", default=None)
    vocab = load_vocab(src, int(n_vocab) if n_vocab else None, pre_tokenizer, spec.tokenizer_model)
    template_audit = audit_all(vocab.special.chat_template if vocab.special else None,
                               allow_unsafe=allow_unsafe_chat_template)
    plan, dropped = ([], {}) if checkpoint is None else _plan_tensors(spec, config, checkpoint, outtype)
    resolved = _resolve_outtype(outtype, checkpoint)
    arch_metadata = list(spec.metadata(config))

    source_files = ([] if checkpoint is None else checkpoint.files) + [src / "config.json"] + vocab.source_files
    # Source hashes go into the header, which is written first; computing them takes a full read of the
    # checkpoint. So a second thread hashes while this one converts, the header carries same-length
    # placeholders, and the real hashes are patched in before the rename.
    hashing, stop_hashing = ThreadPoolExecutor(max_workers=1), threading.Event()
    pending_hashes = hashing.submit(lambda: {p.name: sha256_file(p, stop_hashing) for p in source_files})
    placeholders = {p.name: _hash_placeholder(i) for i, p in enumerate(source_files)}

    n_params = sum(int(np.prod(t.shape)) for t in plan)
    writer = gguf.GGUFWriter(path=None, arch=spec.arch_name)
    _add_general(writer, src, config, resolved, n_params, provenance, placeholders, vocab_only)
    if dropped:
        writer.add_array(keys.Source.DROPPED, sorted(dropped))
    _add_hparams(writer, spec, config, arch_metadata)
    vocab.add_to_gguf(writer)
    for t in plan:
        # With raw_dtype given, gguf-py only looks at the numpy dtype to tell byte shapes (uint8) apart.
        writer.add_tensor_info(t.gguf_name, t.shape, np.dtype(np.float32), _nbytes(t), raw_dtype=t.out_type)

    try:
        with atomic_path(out) as tmp:
            _write(writer, tmp, plan, checkpoint, spec, config, progress, out.name)
            hashes = pending_hashes.result()
            header_bytes = read_header(tmp).data_offset
            patch_placeholders(tmp, {placeholders[name]: digest for name, digest in hashes.items()}, header_bytes)
    finally:
        stop_hashing.set()  # on failure or Ctrl-C, do not keep reading the checkpoint
        hashing.shutdown()
    return ConvertResult(output=out, architecture=config.architecture, gguf_architecture=spec.arch_name,
                         outtype=resolved, n_tensors=len(plan), n_params=n_params, size_bytes=out.stat().st_size,
                         seconds=round(time.monotonic() - started, 3), tokenizer=vocab.source,
                         vocab_size=len(vocab.tokens), source_sha256=hashes, dropped=dropped,
                         chat_template=template_audit.to_json() if template_audit else None)


def _write(writer: gguf.GGUFWriter, tmp: Path, plan: list[PlannedTensor], checkpoint: Checkpoint | None,
           spec: ArchSpec, config: HFConfig, progress: Progress, label: str) -> None:
    """Header, metadata, tensor infos, then every tensor: read, transform, cast, write, forget."""
    writer.write_header_to_file(tmp)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = sum(_nbytes(t) for t in plan)
    progress.start(f"converting to {label}", total)
    for t in plan:
        if t.parts:
            writer.write_tensor_data(_StackedParts(t, checkpoint, spec, config, progress))
            continue
        data = t.data if t.source is None else _load(checkpoint, t, spec, config)
        writer.write_tensor_data(_cast(data, _held_dtype(data), t.out_type))
        progress.advance(_nbytes(t))
        del data
    writer.close()
    progress.finish()


class _StackedParts:
    """A tensor built from checkpoint blocks, as gguf-py's writer takes it (``nbytes`` and ``tofile``): each part
    is read, transformed, cast and written in turn, so a layer's experts are never all in memory at once."""

    def __init__(self, t: PlannedTensor, checkpoint: Checkpoint, spec: ArchSpec, config: HFConfig,
                 progress: Progress):
        self.t, self.checkpoint, self.spec, self.config, self.progress = t, checkpoint, spec, config, progress
        self.nbytes = _nbytes(t)

    def tofile(self, fout) -> None:
        block, type_size = gguf.GGML_QUANT_SIZES[self.t.out_type]
        for info, part in self.t.parts:
            data = self.checkpoint.read(info.name, part.start, part.shape)
            transform = self.spec.transform_for(part.name)
            data = transform(data, self.config) if transform else data
            _cast(data, _held_dtype(data), self.t.out_type).tofile(fout)
            self.progress.advance(int(np.prod(part.shape)) // block * type_size)
            del data


def _resolve_outtype(outtype: str, checkpoint: Checkpoint | None) -> str:
    if outtype != "auto":
        return outtype
    # As llama.cpp's converter: the highest-fidelity 16-bit type, i.e. BF16 for a BF16 source, else F16.
    if checkpoint and any(t.dtype == "BF16" for t in checkpoint.tensors.values()):
        return "bf16"
    return "f16"


def _plan_tensors(spec: ArchSpec, config: HFConfig, checkpoint: Checkpoint,
                  outtype: str) -> tuple[list[PlannedTensor], dict[str, int]]:
    """The tensors to write, in order, and the checkpoint parts left out (part -> tensor count)."""
    expected = spec.tensors(config)
    tensors, dropped = _family_names(spec, config, checkpoint)
    prefix = spec.optional_prefix
    if prefix and not any(n.startswith(prefix) for n in tensors):
        expected = {n.removeprefix(prefix): _drop_prefix(e, prefix) for n, e in expected.items()}
    chosen = {name: _choose_form(e, tensors) for name, e in expected.items() if e.forms}
    known = {n for n, e in expected.items() if not e.forms}
    known.update(p.name for form in chosen.values() for p in form)
    unexpected = [n for n in tensors if n not in known and not spec.ignores(n)]
    if unexpected:
        raise UnsupportedArchitecture(
            f"tensor {unexpected[0]} is not part of a {config.architecture} model"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""),
            "the checkpoint may be of another architecture than config.json says, or use an unsupported variant")
    n_blocks = int(config.get("num_hidden_layers", "n_layer"))
    name_map = gguf.get_tensor_name_map(spec.arch, n_blocks)
    resolved = _resolve_outtype(outtype, checkpoint)
    plan = []
    for hf_name, shape in expected.items():
        if hf_name in chosen:
            if chosen[hf_name]:  # () for an optional stacked tensor the checkpoint does not hold
                plan.append(_plan_stacked(hf_name, shape, chosen[hf_name], tensors, name_map, resolved))
            continue
        info = tensors.get(hf_name)
        if info is None:
            if shape.optional:  # e.g. lm_head when embeddings are tied
                continue
            raise BadCheckpoint(f"tensor {hf_name} is missing", "the checkpoint is incomplete: re-download it")
        if info.dtype not in SAFETENSORS_DTYPES:
            raise BadCheckpoint(f"tensor {hf_name} has dtype {info.dtype}, which edgepack cannot convert",
                                "supported source dtypes: " + ", ".join(SAFETENSORS_DTYPES))
        if tuple(info.shape) != tuple(shape.shape):
            raise BadCheckpoint(f"tensor {hf_name} has shape {list(info.shape)}, expected {list(shape.shape)} "
                                "from config.json", "config.json and the weights do not belong together")
        gguf_name = gguf_name_of(hf_name, shape, name_map)
        out_shape = tuple(shape.out_shape or info.shape)
        plan.append(PlannedTensor(gguf_name, info, out_shape, _out_type(resolved, out_shape, gguf_name),
                                  hf_name=hf_name))
    for gguf_name, data in spec.extra_tensors(config):
        plan.append(PlannedTensor(gguf_name, None, tuple(data.shape), QT.F32, data))
    return plan, dropped


def _family_names(spec: ArchSpec, config: HFConfig,
                  checkpoint: Checkpoint) -> tuple[dict[str, TensorInfo], dict[str, int]]:
    """The checkpoint's tensors under the names the family knows (``spec.renames`` applied), without the parts
    the family drops (counted per part)."""
    tensors: dict[str, TensorInfo] = {}
    dropped: dict[str, int] = {}
    parts = spec.dropped_parts(config)
    for name, info in checkpoint.tensors.items():
        renamed = spec.renamed(name)
        part = next((part for pattern, part in parts.items() if re.search(pattern, renamed)), None)
        if part is not None:
            dropped[part] = dropped.get(part, 0) + 1
            continue
        if renamed in tensors:
            raise BadCheckpoint(f"tensor {renamed} is stored twice (as {tensors[renamed].name} and {name})",
                                "the checkpoint mixes two layouts: re-save or re-download it")
        tensors[renamed] = info
    return tensors, dropped


def _drop_prefix(e: Expected, prefix: str) -> Expected:
    forms = tuple(tuple(replace(p, name=p.name.removeprefix(prefix)) for p in form) for form in e.forms)
    return replace(e, forms=forms)


def _choose_form(e: Expected, tensors: dict[str, TensorInfo]) -> tuple[Part, ...]:
    """The first form whose tensors the checkpoint holds all of; else name what the first form misses."""
    for form in e.forms:
        if all(p.name in tensors for p in form):
            return form
    if e.optional:
        return ()
    missing = next(p.name for p in e.forms[0] if p.name not in tensors)
    raise BadCheckpoint(f"tensor {missing} is missing", "the checkpoint is incomplete: re-download it")


def _plan_stacked(name: str, e: Expected, form: tuple[Part, ...], tensors: dict[str, TensorInfo],
                  name_map: gguf.TensorNameMap, outtype: str) -> PlannedTensor:
    parts = []
    for part in form:
        info = tensors[part.name]
        if info.dtype not in SAFETENSORS_DTYPES:
            raise BadCheckpoint(f"tensor {part.name} has dtype {info.dtype}, which edgepack cannot convert",
                                "supported source dtypes: " + ", ".join(SAFETENSORS_DTYPES))
        if tuple(info.shape) != tuple(part.source_shape):
            raise BadCheckpoint(f"tensor {part.name} has shape {list(info.shape)}, expected "
                                f"{list(part.source_shape)} from config.json",
                                "config.json and the weights do not belong together")
        parts.append((info, part))
    if sum(int(np.prod(p.shape)) for p in form) != int(np.prod(e.shape)):
        raise ValueError(f"the parts of {name} do not add up to {e.shape}")  # a family bug, not user data
    gguf_name = gguf_name_of(name, e, name_map)
    return PlannedTensor(gguf_name, None, tuple(e.shape), _out_type(outtype, tuple(e.shape), gguf_name),
                         parts=tuple(parts))


def _out_type(outtype: str, shape: tuple[int, ...], gguf_name: str) -> QT:
    if keeps_f32(gguf_name, shape):  # norms, biases, conv kernels, routers: F32 as llama.cpp
        return QT.F32
    if outtype == "q8_0":
        return QT.Q8_0 if shape[-1] % gguf.GGML_QUANT_SIZES[QT.Q8_0][0] == 0 else QT.F16
    return {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16}[outtype]


def _nbytes(t: PlannedTensor) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[t.out_type]
    return int(np.prod(t.shape)) // block * type_size


def _load(checkpoint: Checkpoint, t: PlannedTensor, spec: ArchSpec, config: HFConfig) -> np.ndarray:
    data = checkpoint.read(t.source.name)
    transform = spec.transform_for(t.hf_name)
    return transform(data, config) if transform else data


def _hash_placeholder(index: int) -> str:
    return f"edgepack-sha256-placeholder-{index:08d}".ljust(64, "~")


def _held_dtype(data: np.ndarray) -> str:
    """The safetensors dtype ``data`` holds now (a family transform may widen BF16, held as uint16, to F32)."""
    return {np.dtype(np.uint16): "BF16", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64"}.get(
        data.dtype, "F32")


def _cast(data: np.ndarray, src_dtype: str, out_type: QT) -> np.ndarray:
    """One tensor in its output type (BF16 and Q8_0 as raw bytes)."""
    flat = np.ascontiguousarray(data).reshape(-1)
    if out_type == QT.BF16 and src_dtype == "BF16":
        return flat.view(np.uint8)
    if out_type == QT.Q8_0:
        return gguf.quants.quantize(floats.to_f32(flat, src_dtype).reshape(data.shape), QT.Q8_0)
    if out_type == QT.F32:
        return flat if src_dtype == "F32" else floats.convert_chunked(flat, src_dtype, np.float32, lambda c: c)
    if out_type == QT.F16:
        # The tensor was read (or transformed) for this write alone: BF16 becomes F16 in place.
        return flat if src_dtype == "F16" else floats.convert_chunked(flat, src_dtype, np.float16, floats.f32_to_f16,
                                                                     inplace=True)
    return floats.convert_chunked(flat, src_dtype, np.uint16, floats.f32_to_bf16).view(np.uint8)


def _add_hparams(writer: gguf.GGUFWriter, spec: ArchSpec, config: HFConfig, arch_metadata: list) -> None:
    arch = spec.arch_name
    for hp in spec.hparams:
        value = config.get(*hp.names, default=hp.default)
        if value is None:
            continue
        key = hp.key.format(arch=arch)
        if hp.kind is float:
            writer.add_float32(key, float(value))
        elif hp.kind is bool:
            writer.add_bool(key, bool(value))
        else:
            writer.add_uint32(key, int(value))
    vocab_size = config.get("vocab_size", default=None)
    if vocab_size:
        writer.add_vocab_size(int(vocab_size))
    for key, value, value_type in arch_metadata:
        writer.add_key_value(key.format(arch=arch), value, value_type)


def _model_card(src: Path, name: str, n_params: int) -> gguf.Metadata:
    """gguf-py's reading of the model card (README.md front matter) and generation_config.json, checked: a card
    is a stranger's YAML, and its values become GGUF strings, numbers and lists as they are. Each field must have
    the type gguf-py declares for it, strings and lists bounded."""
    import yaml

    try:
        metadata = gguf.Metadata.load(None, src, name, n_params)
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError, AttributeError, KeyError,
            RecursionError) as exc:
        raise BadCheckpoint(f"the model card (README.md front matter) or generation_config.json cannot be read "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})",
                            "fix the YAML front matter of README.md, or remove README.md") from None
    for f in dataclasses.fields(metadata):
        value = getattr(metadata, f.name)
        if value is None:
            continue
        kind = str(f.type)
        limit = 65536 if f.name == "description" else 1024
        if "list" in kind:
            ok = isinstance(value, list) and len(value) <= 1000 and all(
                (isinstance(v, str) and len(v) <= limit) if "list[str]" in kind else
                (isinstance(v, dict) and all(isinstance(x, (str, int, float, type(None))) and
                                             (not isinstance(x, str) or len(x) <= limit) for x in v.values()))
                for v in value)
        elif "str" in kind:
            ok = isinstance(value, str) and len(value) <= limit
        elif "int" in kind:
            ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**31
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise BadCheckpoint(f"the model card or generation_config.json gives {f.name} as {repr(value)[:60]} "
                                f"(expected {kind.removeprefix('Optional[').removesuffix(']')}, bounded)",
                                "fix the YAML front matter of README.md (or generation_config.json)")
    return metadata


def _add_general(writer: gguf.GGUFWriter, src: Path, config: HFConfig, outtype: str, n_params: int,
                 provenance: Provenance | None, hashes: dict[str, str], vocab_only: bool) -> None:
    name = provenance.repo_id.split("/")[-1] if provenance and provenance.repo_id else src.resolve().name
    metadata = _model_card(src, name, n_params)
    if provenance and provenance.license:
        metadata.license = provenance.license
    if provenance and provenance.url:
        metadata.source_url = provenance.url
    if provenance and provenance.repo_id:
        metadata.source_repo_url = f"https://huggingface.co/{provenance.repo_id}"
    if metadata.size_label is None and n_params:
        metadata.size_label = gguf.size_label(n_params, 0, 0, 0)
    metadata.set_gguf_meta_model(writer)
    writer.add_type(gguf.GGUFType.MODEL)
    if not vocab_only:
        writer.add_file_type(FILE_TYPES[outtype])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(keys.VERSION, __version__)
    writer.add_string(keys.Source.ARCHITECTURE, config.architecture)
    writer.add_string(keys.Source.CONFIG, json.dumps(config.data, sort_keys=True, separators=(",", ":")))
    writer.add_array(keys.Source.FILES, sorted(hashes))
    writer.add_array(keys.Source.SHA256, [hashes[k] for k in sorted(hashes)])
    for key, value in keys.provenance_items(keys.Source.PROVENANCE, provenance):
        writer.add_string(key, value)

