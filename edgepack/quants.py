"""The quantization types: one table of what edgepack knows about each, and llama.cpp's per-tensor mix.

Everything that names, checks or sizes a quant type reads it from here: the quantizer (``quantize.py``) and
the config check pick types by name or bit width, ``fit`` predicts the type llama.cpp's quantizer gives every
tensor (``quant_types``) and the prompt-speed family of a ggml type (``quant_family``), ``mix`` picks the
llama_ftype of a ggml type (``pure_ftype``). Pure data and arithmetic: no llama.cpp, no torch.

The facts mirror the llama.cpp the runtime is built from (llama-cpp-python 0.3.36's vendor/llama.cpp):
include/llama.h (enum values), tools/quantize/quantize.cpp (QUANT_OPTIONS), src/llama-quant.cpp (default type
per ftype, tensor_requires_imatrix, the per-tensor rules and fallbacks). tests/integration/test_quantize.py
and tests/integration/test_fit.py check them against that llama.cpp's headers and its quantizer's real output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import gguf
import numpy as np

from .errors import QuantizeError, UsageError

QT = gguf.GGMLQuantizationType
UNQUANTIZED = (QT.F32, QT.F16, QT.BF16)


@dataclass(frozen=True)
class QuantType:
    """One row of the quant-type table.

    ``ftype``: llama.cpp's ``llama_ftype`` value (include/llama.h). ``base``: the ggml type most weights get
    (llama.cpp's ``llama_ftype_get_default_type``); the mixes (``_M``, ``_L``) give some tensors more bits.
    ``bits``: the bit width a user means by ``--bits``; ``recommended``: the type ``--bits`` picks.
    ``status``: "offered", "imatrix" (llama.cpp makes it only with an importance matrix: refused without one)
    or "unavailable" (with the reason in ``note``).
    """

    name: str
    ftype: int
    base: str
    bits: int
    status: str = "offered"
    recommended: bool = False
    note: str = ""

    @property
    def needs_imatrix(self) -> bool:
        return self.status == "imatrix"

    @property
    def offered(self) -> bool:
        return self.status == "offered"

    @property
    def bpw(self) -> float:
        """Bits per weight of the base ggml type (block bytes * 8 / block elements)."""
        block, type_size = gguf.GGML_QUANT_SIZES[QT[self.base]]
        return type_size * 8 / block


# Sources: llama.cpp tools/quantize/quantize.cpp (QUANT_OPTIONS), src/llama-quant.cpp (default type per ftype,
# tensor_requires_imatrix), include/llama.h (enum values). Ordered from most to fewest bits.
QUANT_TYPES: tuple[QuantType, ...] = (
    QuantType("F32", 0, "F32", 32, recommended=True, note="full precision (no quantization)"),
    QuantType("F16", 1, "F16", 16, recommended=True, note="half precision"),
    QuantType("BF16", 32, "BF16", 16, note="bfloat16: the usual training type"),
    QuantType("Q8_0", 7, "Q8_0", 8, recommended=True, note="near-lossless"),
    QuantType("Q6_K", 18, "Q6_K", 6, recommended=True),
    QuantType("Q5_K_M", 17, "Q5_K", 5, recommended=True),
    QuantType("Q5_K_S", 16, "Q5_K", 5),
    QuantType("Q5_1", 9, "Q5_1", 5, note="legacy"),
    QuantType("Q5_0", 8, "Q5_0", 5, note="legacy"),
    QuantType("Q4_K_M", 15, "Q4_K", 4, recommended=True, note="the common default"),
    QuantType("Q4_K_S", 14, "Q4_K", 4),
    QuantType("Q4_1", 3, "Q4_1", 4, note="legacy"),
    QuantType("Q4_0", 2, "Q4_0", 4, note="legacy; fast on ARM (runtime repacking)"),
    QuantType("IQ4_NL", 25, "IQ4_NL", 4, note="non-linear 4-bit"),
    QuantType("IQ4_XS", 30, "IQ4_XS", 4, note="non-linear 4-bit"),
    QuantType("Q3_K_L", 13, "Q3_K", 3),
    QuantType("Q3_K_M", 12, "Q3_K", 3, recommended=True),
    QuantType("Q3_K_S", 11, "Q3_K", 3),
    QuantType("IQ3_M", 27, "IQ3_S", 3),
    QuantType("IQ3_S", 26, "IQ3_S", 3),
    QuantType("Q2_K", 10, "Q2_K", 2, recommended=True, note="large quality loss"),
    QuantType("TQ2_0", 37, "TQ2_0", 2, note="ternary: only for models trained ternary (BitNet-style)"),
    QuantType("TQ1_0", 36, "TQ1_0", 1, note="ternary: only for models trained ternary (BitNet-style)"),
    QuantType("Q1_0", 40, "Q1_0", 1, note="1-bit: only for models trained for it"),
    QuantType("IQ3_XS", 22, "IQ3_S", 3, status="imatrix"),
    QuantType("IQ3_XXS", 23, "IQ3_XXS", 3, status="imatrix"),
    QuantType("Q2_K_S", 21, "Q2_K", 2, status="imatrix"),
    QuantType("IQ2_M", 29, "IQ2_S", 2, status="imatrix"),
    QuantType("IQ2_S", 28, "IQ2_XS", 2, status="imatrix"),
    QuantType("IQ2_XS", 20, "IQ2_XS", 2, status="imatrix"),
    QuantType("IQ2_XXS", 19, "IQ2_XXS", 2, status="imatrix"),
    QuantType("IQ1_M", 31, "IQ1_M", 1, status="imatrix"),
    QuantType("IQ1_S", 24, "IQ1_S", 1, status="imatrix"),
    QuantType("MXFP4_MOE", 38, "MXFP4", 4, status="unavailable",
              note="quantizes only MoE expert tensors (the rest to Q8_0)"),
    QuantType("NVFP4", 39, "NVFP4", 4, status="unavailable", note="needs NVIDIA Blackwell kernels to be useful"),
)
ALIASES = {"Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q3_K": "Q3_K_M"}  # as llama-quantize accepts them
_BY_NAME = {t.name: t for t in QUANT_TYPES}
# ggml types allowed for --output-tensor-type / --token-embedding-type (llama.cpp requires no imatrix there).
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_NL",
                "IQ4_XS", "Q3_K", "IQ3_S", "Q2_K")
# ggml types llama.cpp quantizes only with an importance matrix (src/llama-quant.cpp, tensor_requires_imatrix);
# --tensor-type accepts them when one is given.
IMATRIX_TENSOR_TYPES = ("IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")


def offered_types() -> list[QuantType]:
    return [t for t in QUANT_TYPES if t.offered]


def quant_type(name: str) -> QuantType:
    """Look a type up by name (case-insensitive, aliases accepted); refuse the ones edgepack does not offer.
    Types that need an importance matrix are returned: ``quantize`` refuses them when none is given."""
    key = name.strip().upper()
    key = ALIASES.get(key, key)
    qt = _BY_NAME.get(key)
    if qt is None:
        raise UsageError(f"unknown quantization type {name!r}",
                         f"choose one of {', '.join(t.name for t in offered_types())}")
    if not qt.offered and not qt.needs_imatrix:
        raise QuantizeError(f"{qt.name} is not offered: {qt.note}", "use Q4_K_M, Q8_0 or another offered type")
    return qt


def refuse_without_imatrix(qtypes: Iterable[QuantType],
                           hint: str = "pass --calibration TEXT (or --calibration builtin) to compute one, "
                                       "or --imatrix FILE") -> None:
    """The types llama.cpp makes only with an importance matrix, refused (before any work) when there is none."""
    needs = [qt.name for qt in qtypes if qt.needs_imatrix]
    if needs:
        raise QuantizeError(f"{', '.join(needs)} need{'s' if len(needs) == 1 else ''} an importance matrix (imatrix)",
                            hint)


def type_for_bits(bits: int) -> QuantType:
    """The recommended type of a bit width (``--bits 4`` -> Q4_K_M)."""
    for qt in QUANT_TYPES:
        if qt.recommended and qt.bits == bits:
            return qt
    widths = sorted({t.bits for t in QUANT_TYPES if t.recommended})
    raise UsageError(f"no recommended type for {bits} bits", f"choose --bits from {', '.join(map(str, widths))}")


def resolve_types(types: Iterable[str] = (), bits: Iterable[int] = ()) -> list[QuantType]:
    """Names (comma lists allowed) and bit widths -> distinct types, in the order given; all checked first."""
    out: list[QuantType] = []
    for item in types:
        for name in filter(None, (s.strip() for s in item.split(","))):
            out.append(quant_type(name))
    out += [type_for_bits(int(b)) for b in bits]
    if not out:
        raise UsageError("no quantization type given", "pass -t TYPE (e.g. -t Q4_K_M) or --bits N")
    return list(dict.fromkeys(out))


def tensor_type(name: str | None, option: str, with_imatrix: bool = False) -> int | None:
    """A ggml tensor type name (``Q8_0``) -> its enum value, for the output/token-embedding overrides."""
    if name is None:
        return None
    key = name.strip().upper()
    allowed = TENSOR_TYPES + (IMATRIX_TENSOR_TYPES if with_imatrix else ())
    if key not in allowed:
        extra = f"; {', '.join(IMATRIX_TENSOR_TYPES)} need an imatrix" if not with_imatrix else ""
        raise UsageError(f"{option}: unknown tensor type {name!r}", f"choose one of {', '.join(allowed)}{extra}")
    return int(QT[key])


# ---------------------------------------------------------------------------------------------------------------
# Derived views of the table


def ftype_name(ftype: int | None) -> str:
    """A GGUF's ``general.file_type`` (a llama_ftype) as the type's name ("Q4_K_M"); the gguf package's enum
    name for one the table does not hold; "unknown" for none."""
    if ftype is None:
        return "unknown"
    for qt in QUANT_TYPES:
        if qt.ftype == ftype:
            return qt.name
    try:
        return gguf.LlamaFileType(ftype).name.replace("MOSTLY_", "")
    except ValueError:
        return "unknown"


def pure_ftype(ggml_type: str) -> str:
    """The llama_ftype whose base type a ggml type is (Q4_K -> Q4_K_S: the mix that gives the fewest tensors
    more bits), for quantizing with that type throughout."""
    rows = [t.name for t in QUANT_TYPES if t.base == ggml_type]
    for name in (ggml_type, f"{ggml_type}_S"):
        if name in rows:
            return name
    raise UsageError(f"no llama_ftype has {ggml_type} as its base type",
                     f"choose one of {', '.join(sorted({t.base for t in QUANT_TYPES}))}")


# The ftypes whose per-tensor mix ``quant_types`` models (so ``fit --config`` can size them): their default type
# per llama-quant.cpp's llama_ftype_get_default_type. The IQ3, ternary, 1-bit and imatrix-only types have rules
# not modelled here.
MODELLED = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S", "Q4_0",
            "Q4_1", "Q3_K_M", "Q3_K_S", "Q3_K_L", "Q2_K", "IQ4_NL", "IQ4_XS")
QUANT_BASE = {name: QT[_BY_NAME[name].base] for name in MODELLED}

# Prompt processing speed depends on the weight format's kernels: phone CPUs run Q4_0/Q8_0 (repacked,
# i8mm/dotprod paths) much faster than K-quants. Every ggml type maps to one of these families
# (profiles give a prompt rate per family).
QUANT_FAMILIES = ("q4_0", "q8_0", "k_quant", "f16")


def family_of_key(key: str) -> str:
    """The quant family of a family name or a lower-case ggml type key (q4_k -> k_quant)."""
    return key if key in QUANT_FAMILIES else quant_family(QT[key.upper()])


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp's per-tensor mix (src/llama-quant.cpp)


# Tensors llama.cpp keeps in F32 whatever the file type (its converter's list; its quantizer skips them too):
# the kernels of ggml_ssm_conv (which reads an F32 kernel), MoE routers (expert choice is a comparison of their
# outputs), normalisation weights of any shape, and tensors without a .weight suffix (ssm_a/ssm_d, biases).
ALWAYS_F32 = tuple(re.compile(gguf.TENSOR_NAMES[kind].replace("{bid}", r"\d+").replace(".", r"\.") + r"\.weight$")
                   for kind in (gguf.MODEL_TENSOR.SSM_CONV1D, gguf.MODEL_TENSOR.SHORTCONV_CONV,
                                gguf.MODEL_TENSOR.FFN_GATE_INP))


def keeps_f32(gguf_name: str, shape: tuple[int, ...]) -> bool:
    return (len(shape) < 2 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight")
            or any(p.fullmatch(gguf_name) for p in ALWAYS_F32))


# when a row length is not a multiple of a 256-block type (llama-quant.cpp, tensor type fallback)
FALLBACK = {QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0, QT.Q3_K: QT.Q4_0, QT.Q2_K: QT.Q4_0,
            QT.IQ4_XS: QT.IQ4_NL}


def quant_family(t: QT) -> str:
    """Which prompt-processing kernel family a ggml type uses (one of ``QUANT_FAMILIES``)."""
    if t in (QT.Q4_0, QT.Q4_1, QT.IQ4_NL):
        return "q4_0"
    if t in (QT.Q8_0, QT.Q5_0, QT.Q5_1):
        return "q8_0"
    if t in (QT.F16, QT.BF16, QT.F32):
        return "f16"
    return "k_quant"


def tensor_bytes(t: QT, shape: tuple[int, ...]) -> int:
    block, size = gguf.GGML_QUANT_SIZES[t]
    n = int(np.prod(shape))
    return n // block * size


def _more_bits(i: int, n: int) -> bool:  # llama-quant.cpp use_more_bits
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _category(name: str) -> str:
    """llama-quant.cpp's tensor category, from the GGUF name (first match wins, as there)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for category, needle in (("attn_v", "attn_qkv.weight"), ("attn_v", "attn_kv_b.weight"),
                             ("attn_v", "attn_v.weight"), ("attn_k", "attn_k.weight"), ("attn_q", "attn_q.weight"),
                             ("attn_output", "attn_output.weight"), ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"),
                             ("ffn_down", "ffn_down")):
        if needle in name:  # fused qkv and MLA's kv_b count as attn_v there ("category_is_attn_v")
            return category
    return "other"


# Weights llama.cpp's quantizer leaves in their source type (llama-quant.cpp, tensor_allows_quantization);
# norms, routers and conv kernels among them are F32 in the source already (keeps_f32).
KEEP_TYPE = ("_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj", "ssm_conv1d",
             "shortconv.conv.weight")
KEEP_NAMES = ("position_embd.weight", "token_types.weight")


def _quantizable(name: str, shape: tuple[int, ...]) -> bool:
    return (len(shape) >= 2 and name.endswith("weight") and name not in KEEP_NAMES
            and not any(part in name for part in KEEP_TYPE))


def _block(name: str) -> int:
    return int(name.split(".")[1]) if name.startswith("blk.") else -1


def quant_types(ftype: str, tensors: list[tuple[str, tuple[int, ...]]], n_layer: int, n_gqa: int,
                n_expert: int = 0) -> dict[str, QT]:
    """The type llama.cpp's quantizer gives each tensor of an F16 GGUF for ``ftype`` (llama-quant.cpp).

    ``tensors``: (GGUF name, GGUF shape). The quantizer visits them by block, then name, and counts attn_v-like
    and ffn_down tensors as it goes: the "more bits" layers are positions in that count. ``n_gqa`` is layer 0's
    query/KV head ratio; ``n_expert`` the experts per MoE layer (8 bumps attention, as for Mixtral).
    Not modelled: the 70B-only attn_v bump and Falcon's rules (edgepack converts neither).
    """
    base = QUANT_BASE[ftype]
    source = base if base in (QT.F32, QT.BF16) else QT.F16  # what convert writes for a matrix
    tied = not any(name == "output.weight" for name, _ in tensors)
    n_wv = sum(_category(name) == "attn_v" for name, _ in tensors)
    i_wv = i_down = 0
    out: dict[str, QT] = {}
    for name, shape in sorted(tensors, key=lambda t: (_block(t[0]), t[0])):
        if keeps_f32(name, shape):
            out[name] = QT.F32
            continue
        if base in (QT.F32, QT.F16, QT.BF16) or not _quantizable(name, shape):
            out[name] = source
            continue
        category, t = _category(name), base
        if category == "output" or (category == "token_embd" and tied):
            t = QT.Q8_0 if base == QT.Q8_0 or shape[0] % gguf.GGML_QUANT_SIZES[base][0] else QT.Q6_K
        elif category == "attn_v":
            t = _attn_v_type(ftype, base, i_wv, n_wv, n_gqa)
            t = QT.Q8_0 if n_expert == 8 else t
            i_wv += 1
        elif category == "attn_k" and n_expert == 8:
            t = QT.Q8_0
        elif category == "ffn_down":
            t = _ffn_down_type(ftype, base, _block(name) if n_expert > 1 else i_down, n_layer)
            i_down += 1
        elif category == "attn_output":
            if n_expert == 8:
                t = QT.Q5_K if ftype in ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS") else base
            else:
                t = {"Q2_K": QT.Q3_K, "Q3_K_M": QT.Q4_K, "Q3_K_L": QT.Q5_K}.get(ftype, base)
        out[name] = _fit_type(t, shape[0])
    return out


def _attn_v_type(ftype: str, base: QT, i: int, n: int, n_gqa: int) -> QT:
    if ftype == "Q2_K":
        return QT.Q4_K if n_gqa >= 4 else QT.Q3_K
    if ftype == "Q3_K_M":
        return QT.Q5_K if i < 2 else QT.Q4_K
    if ftype == "Q3_K_L":
        return QT.Q5_K
    if ftype in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
        return QT.Q5_K
    if ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
        return QT.Q6_K
    if ftype == "Q4_K_S" and i < 4:
        return QT.Q5_K
    return base


def _ffn_down_type(ftype: str, base: QT, i: int, n: int) -> QT:
    if ftype == "Q2_K":
        return QT.Q3_K
    if ftype == "Q3_K_M":
        return QT.Q5_K if i < n // 16 else QT.Q4_K
    if ftype == "Q3_K_L":
        return QT.Q5_K
    if ftype in ("Q4_K_M", "Q5_K_M") and _more_bits(i, n):
        return QT.Q6_K
    if ftype in ("IQ4_NL", "IQ4_XS", "Q4_K_S") and i < n // 8:
        return QT.Q5_K
    return base


def _fit_type(t: QT, row: int) -> QT:
    block = gguf.GGML_QUANT_SIZES[t][0]
    while row % block:
        t = FALLBACK.get(t, QT.F16)
        block = gguf.GGML_QUANT_SIZES[t][0]
    return t
