"""Per-tensor quant mixes that fit a size budget (``edgepack quantize --target-size MB`` / ``--target-bpw X``).

llama.cpp's own mixes (Q4_K_M, Q3_K_S, ...) are fixed recipes. This chooses a type per *tensor group* (all
layers' attn_q, all ffn_down, the output matrix, ...) for a given budget, from measurements on the model itself:

1. sensitivity: starting from every group at Q8_0 (near-lossless), each group alone is lowered to each
   candidate type (the k-quants, and with an importance matrix the IQ types too) and the model's mean KL
   divergence against the source is measured on the sensitivity text (the calibration text: not the text the
   result is judged on). Sizes come from the files llama.cpp wrote, so fallbacks and padding are counted;
2. choice: KLD is taken as additive over groups (each group's increase over the all-Q8_0 model), and the
   combination with the least predicted KLD that fits the budget is found exactly (a multiple-choice knapsack
   solved over the Pareto frontier of (bytes, KLD));
3. the mix is quantized through llama.cpp's tensor-type overrides (``pure`` base, one pattern per group), its
   size checked against the budget (re-solved with the excess taken off when padding made it larger) and its
   KLD measured on the evaluation text.

Cost: (groups x candidate types) quantizations and evaluations; about 8 x 6 for a Llama.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UsageError
from .ggufheader import read_header
from .progress import QUIET, Progress
from .quants import pure_ftype

BASE_TYPE = "Q8_0"
SENSITIVITY_CHARS = 16_000
# Candidates from most to fewest bits; the IQ ones only with an importance matrix (llama.cpp refuses or
# degrades them without one). Each ggml type's ftype is the llama_ftype whose base type it is (quants.pure_ftype).
CANDIDATES = ("Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")
IMATRIX_CANDIDATES = ("IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_XS")
_GROUP = re.compile(r"^(?:blk\.\d+\.)?(.+)\.weight$")


@dataclass(frozen=True)
class Option:
    type: str
    bytes: int  # the group's tensor data at this type
    kld: float  # mean KLD of the model with only this group at this type (the rest at Q8_0)


@dataclass
class GroupChoice:
    group: str  # e.g. "attn_q" (every layer's), "output", "token_embd"
    pattern: str  # the --tensor-type pattern that selects it
    n_tensors: int
    type: str
    bytes: int
    kld_alone: float


@dataclass
class MixPlan:
    target_bytes: int
    target: str  # "1.20 MB" or "3.50 bpw", as asked
    base_kld: float
    predicted_kld: float
    predicted_bytes: int
    groups: list[GroupChoice] = field(default_factory=list)
    options: dict[str, list[Option]] = field(default_factory=dict)

    def tensor_types(self) -> list[str]:
        return [f"{g.pattern}={g.type}" for g in self.groups]

    @property
    def ftype_name(self) -> str:
        """The llama_ftype recorded in the file: the type holding the most bytes."""
        heaviest = max(self.groups, key=lambda g: g.bytes)
        return pure_ftype(heaviest.type)


def groups_of(tensors) -> dict[str, list[str]]:
    """Quantizable 2D weights by kind: ``blk.N.attn_q.weight`` -> ``attn_q``; ``output.weight`` -> ``output``."""
    out: dict[str, list[str]] = {}
    for t in tensors:
        if len([d for d in t.shape if d > 1]) < 2:
            continue
        m = _GROUP.match(t.name)
        if m:
            out.setdefault(m.group(1), []).append(t.name)
    return out


def _pattern(group: str) -> str:
    return rf"^(blk\.\d+\.)?{re.escape(group)}\.weight$"


@dataclass
class Sensitivity:
    """What the trials measured (step 1), enough to choose a mix for any budget without measuring again: per
    group its tensor count and options, the all-Q8_0 model's KLD, and the bytes no choice changes (the file's
    metadata and the tensors outside the groups), for a file budget and for a tensor-data budget. JSON-able
    (``to_dict``/``from_dict``), so a build caches it once and solves for every device from it."""

    n_tensors: dict[str, int]
    options: dict[str, list[Option]]
    base_kld: float
    fixed_file_bytes: int
    fixed_data_bytes: int
    n_params: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sensitivity:
        return cls(**{**data, "options": {g: [Option(**o) for o in opts] for g, opts in data["options"].items()}})

    def smallest_bytes(self, file_budget: bool) -> int:
        return (self.fixed_file_bytes if file_budget else self.fixed_data_bytes) + sum(
            min(o.bytes for o in opts) for opts in self.options.values())


def measure(src: Path, *, work_dir: Path, imatrix: Path | None = None, sensitivity_text: Path | None = None,
            candidates: tuple[str, ...] = (), sensitivity_chars: int = SENSITIVITY_CHARS, ctx: int = 0,
            threads: int = 0, progress: Progress = QUIET) -> Sensitivity:
    """Step 1: each group alone lowered to each candidate, quantized and measured against ``src``.
    ``candidates``: the types to try (default: ``CANDIDATES``, plus ``IMATRIX_CANDIDATES`` with an imatrix).
    The sensitivity text is cut to its first ``sensitivity_chars`` (default about 4,000 tokens: each trial is
    one evaluation). Temporary files go to a folder in ``work_dir`` that is removed afterwards."""
    from .evaluate import evaluate_many
    from .quantize import quantize
    from .quants import QuantType, quant_type

    header = read_header(src)
    groups = groups_of(header.tensors)
    candidates = candidates or default_candidates(imatrix is not None)
    ctx = ctx or _eval_ctx(header)
    with tempfile.TemporaryDirectory(prefix=".edgepack-mix-", dir=work_dir) as tmp:
        if sensitivity_text is not None:
            head = Path(tmp) / "sensitivity.txt"
            head.write_text(sensitivity_text.read_text(encoding="utf-8")[:sensitivity_chars], encoding="utf-8")
            sensitivity_text = head
        trials: list[tuple[str, str, QuantType, Path]] = []
        base_qt = quant_type(BASE_TYPE)
        runs = [(None, BASE_TYPE)] + [(g, t) for g in groups for t in candidates if _allowed(g, t, groups, imatrix)]
        progress.start(f"sensitivity of {len(groups)} tensor groups x {len(candidates)} types", len(runs))
        for i, (group, type_name) in enumerate(runs):
            qt = QuantType(f"trial{i}", base_qt.ftype, BASE_TYPE, 8)
            overrides = [f"{_pattern(group)}={type_name}"] if group else []
            [res] = quantize(src, [qt], tmp, threads=threads, pure=True, imatrix=imatrix, tensor_types=overrides)
            trials.append((group or "", type_name, qt, res.output))
            progress.advance()
        progress.finish()
        measured = evaluate_many([p for *_, p in trials], src, text=sensitivity_text, ctx=ctx, threads=threads,
                                 progress=progress)
        sizes = [_group_bytes(read_header(p), groups) for *_, p in trials]
        base_file = trials[0][3].stat().st_size
        base_data = read_header(trials[0][3]).data_bytes
    base_kld = measured[0].mean_kld
    options = {g: [Option(BASE_TYPE, sizes[0][g], base_kld)] for g in groups}
    for (group, type_name, *_), m, size in zip(trials[1:], measured[1:], sizes[1:]):
        options[group].append(Option(type_name, size[group], m.mean_kld))
    grouped = sum(sizes[0].values())
    return Sensitivity(n_tensors={g: len(names) for g, names in groups.items()}, options=options,
                       base_kld=base_kld, fixed_file_bytes=base_file - grouped, fixed_data_bytes=base_data - grouped,
                       n_params=header.n_params)


def sensitivity_text_of(calibration: str | Path | None) -> Path:
    """The text the trials measure KLD on: the calibration set's first plain text file, or, without one (none
    given, or conversations only), the built-in set's; never the evaluation text, which judges the result."""
    from .calibration import BUILTIN
    from .calibration import calibration as load_calibration

    specs = ([calibration] if calibration is not None else []) + [BUILTIN]
    return next(p for spec in specs for p in load_calibration(spec).files if p.suffix != ".jsonl")


def default_candidates(with_imatrix: bool) -> tuple[str, ...]:
    return CANDIDATES + (IMATRIX_CANDIDATES if with_imatrix else ())


def choose(sens: Sensitivity, target_bytes: int, target: str, *, file_budget: bool, imatrix: bool = False,
           hint: str = "") -> MixPlan:
    """Step 2: the mix of least predicted KLD within ``target_bytes`` (the whole file with ``file_budget``,
    else the tensor data). Refused, with what the smallest mix would take, when none fits."""
    fixed = sens.fixed_file_bytes if file_budget else sens.fixed_data_bytes
    best = _knapsack(sens.options, target_bytes - fixed, sens.base_kld)
    if best is None:
        smallest = sens.smallest_bytes(file_budget)
        shown = f"{smallest / 1e6:.3f} MB" if file_budget else \
            f"{smallest / 1e6:.3f} MB of weights ({smallest * 8 / sens.n_params:.2f} bpw)"
        raise UsageError(f"no mix fits {target}: the smallest edgepack can make is {shown}",
                         hint or "raise the target" + ("" if imatrix else ", or give an imatrix (--calibration) "
                                                       "to allow the IQ types"))
    choice, kld = best
    return MixPlan(target_bytes=target_bytes, target=target, base_kld=sens.base_kld, predicted_kld=kld,
                   predicted_bytes=fixed + sum(o.bytes for o in choice.values()),
                   groups=[GroupChoice(g, _pattern(g), sens.n_tensors[g], o.type, o.bytes, o.kld)
                           for g, o in choice.items()],
                   options=sens.options)


def smallest_estimate(header, candidates: tuple[str, ...], file_budget: bool) -> int:
    """A lower bound of the smallest mix's bytes, before any measuring: every group at its smallest candidate,
    blocks assumed to fit (the file's metadata counted with ``file_budget``)."""
    import gguf

    groups = groups_of(header.tensors)
    by_name = {t.name: t for t in header.tensors}
    in_groups = {n for names in groups.values() for n in names}
    rest = (header.file_size - header.data_bytes if file_budget else 0) + sum(
        t.n_bytes for t in header.tensors if t.name not in in_groups)
    per_weight = min(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[c]][1]
                     / gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[c]][0] for c in candidates)
    return int(rest + sum(by_name[n].n_elements for n in in_groups) * per_weight)


def refuse_unreachable(src: Path, target_bytes: int, target: str, *, file_budget: bool, with_imatrix: bool = False,
                       candidates: tuple[str, ...] = (), hint: str = "") -> None:
    """A budget below ``smallest_estimate`` is refused at once, before the trials."""
    header = read_header(src)
    smallest = smallest_estimate(header, candidates or default_candidates(with_imatrix), file_budget)
    if smallest > target_bytes:
        shown = f"{smallest / 1e6:.3f} MB" if file_budget else \
            f"{smallest / 1e6:.3f} MB of weights ({smallest * 8 / header.n_params:.2f} bpw)"
        raise UsageError(f"no mix fits {target}: even the smallest types make about {shown}",
                         hint or "raise the target" + ("" if with_imatrix else ", or give an imatrix "
                                                       "(--calibration) to allow the IQ types"))


def _allowed(group: str, type_name: str, groups: dict[str, list[str]], imatrix: Path | None) -> bool:
    """IQ2_XS needs imatrix data for every tensor it is given (quantize._check_coverage)."""
    if type_name != "IQ2_XS":
        return True
    from . import imatrix as im

    entries = im.read(imatrix).entries
    return all(name in entries for name in groups[group])


def _eval_ctx(header) -> int:
    arch = header.get("general.architecture")
    train = header.get(f"{arch}.context_length") or 512
    return max(16, min(512, int(train)) // 2 * 2)


def _group_bytes(header, groups: dict[str, list[str]]) -> dict[str, int]:
    by_name = {t.name: t.n_bytes for t in header.tensors}
    return {g: sum(by_name[n] for n in names) for g, names in groups.items()}


def _knapsack(options: dict[str, list[Option]], budget: int, base_kld: float):
    """The choice (group -> Option) of least predicted KLD whose bytes fit ``budget``, or None.

    Predicted KLD = base + sum over groups of (kld_alone - base). Exact: the Pareto frontier of
    (bytes, KLD) is extended group by group, dropping every partial choice another beats on both."""
    frontier: list[tuple[int, float, dict]] = [(0, base_kld, {})]
    for group, opts in options.items():
        extended = [(b + o.bytes, k + max(o.kld - base_kld, 0.0), {**c, group: o})
                    for b, k, c in frontier for o in opts if b + o.bytes <= budget]
        extended.sort(key=lambda x: (x[0], x[1]))
        frontier = []
        for item in extended:
            if not frontier or item[1] < frontier[-1][1]:
                frontier.append(item)
        if not frontier:
            return None
    _, kld, choice = min(frontier, key=lambda x: x[1])
    return choice, kld


@dataclass
class MixResult:
    plan: MixPlan
    quantized: object  # quantize.QuantizeResult of the mix
    evaluation: object  # evaluate.EvalResult of the mix against the source, on the evaluation text
    size_bytes: int
    fits: bool


def quantize_mix(src: str | Path, out_dir: str | Path | None = None, *, target_size_mb: float | None = None,
                 target_bpw: float | None = None, imatrix: str | Path | None = None,
                 calibration: str | Path | None = None, eval_text: str | Path | None = None, ctx: int = 0,
                 candidates: tuple[str, ...] = (), sensitivity_chars: int = SENSITIVITY_CHARS, threads: int = 0,
                 force: bool = False, progress: Progress = QUIET) -> MixResult:
    """Choose (``plan``), quantize and measure the best mix for ``--target-size`` MB (10^6 bytes, the whole
    file) or ``--target-bpw`` (bits per weight over the tensor data, as llama.cpp reports it). With
    ``calibration`` the imatrix is computed first (as ``quantize``); the trials measure on its plain text
    (``sensitivity_text_of``); the result's KLD is measured on ``eval_text`` (default: edgepack eval's built-in
    text)."""
    from . import imatrix as im
    from .evaluate import evaluate
    from .quantize import inspect_source

    src = Path(src)
    if (target_size_mb is None) == (target_bpw is None):
        raise UsageError("give one of --target-size MB and --target-bpw X", "e.g. --target-size 450")
    if (target_size_mb is not None and target_size_mb <= 0) or (target_bpw is not None and target_bpw <= 0):
        raise UsageError("the target must be positive", "e.g. --target-size 450 or --target-bpw 3.5")
    if imatrix is not None and calibration is not None:
        raise UsageError("--imatrix and --calibration both given", "pass one: a ready imatrix, or the text to make it")
    source = inspect_source(src)
    header = read_header(src)
    if target_size_mb is not None:
        target_bytes, label, file_budget = int(target_size_mb * 1e6), f"{target_size_mb:g} MB", True
    else:
        target_bytes, label, file_budget = int(target_bpw * header.n_params / 8), f"{target_bpw:g} bpw", False
    out_dir = Path(out_dir) if out_dir is not None else src.resolve().parent
    refuse_unreachable(src, target_bytes, label, file_budget=file_budget,  # before any work
                       with_imatrix=imatrix is not None or calibration is not None, candidates=candidates)
    sensitivity_text = sensitivity_text_of(calibration)
    if calibration is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        im.ensure(src, calibration, out_dir / f"{source.name}.imatrix.gguf", threads=threads, progress=progress)
        imatrix = out_dir / f"{source.name}.imatrix.gguf"
    elif imatrix is not None:
        im.check_model(im.read(imatrix), src)
    out_dir.mkdir(parents=True, exist_ok=True)
    sens = measure(src, work_dir=out_dir, imatrix=imatrix, sensitivity_text=sensitivity_text, candidates=candidates,
                   sensitivity_chars=sensitivity_chars, ctx=ctx, threads=threads, progress=progress)
    mix_plan = choose(sens, target_bytes, label, file_budget=file_budget, imatrix=imatrix is not None)
    name = "MIX-" + (f"{target_size_mb:g}MB" if file_budget else f"{target_bpw:g}bpw")

    def excess(result) -> int:
        used = result.size_bytes if file_budget else read_header(result.output).data_bytes
        return used - target_bytes

    result, mix_plan, fits = realize(src, sens, mix_plan, out_dir, name, excess, file_budget=file_budget,
                                     imatrix=imatrix, threads=threads, force=force, progress=progress)
    measured = evaluate(result.output, src, text=eval_text, ctx=ctx or _eval_ctx(header), threads=threads,
                        progress=progress)
    return MixResult(plan=mix_plan, quantized=result, evaluation=measured, size_bytes=result.size_bytes, fits=fits)


def realize(src: Path, sens: Sensitivity, mix_plan: MixPlan, out_dir: Path, name: str, excess, *,
            file_budget: bool, imatrix: str | Path | None = None, threads: int = 0, force: bool = False,
            progress: Progress = QUIET):
    """Step 3: quantize ``mix_plan`` into ``out_dir`` as ``<Model>-<name>.gguf`` -> (QuantizeResult, the plan
    made, whether it met its budget). ``excess(result)``: by how many bytes the file misses its budget (<= 0:
    met). A miss the plan could not see (alignment padding; on a device, the copy llama.cpp makes of a tied
    embedding) is taken off the budget and the mix chosen again, at most twice."""
    from .quantize import quantize
    from .quants import QuantType, quant_type

    target, budget = mix_plan.target_bytes, mix_plan.target_bytes
    for _attempt in range(3):
        base = quant_type(mix_plan.ftype_name)
        qt = QuantType(name, base.ftype, base.base, base.bits)
        [result] = quantize(src, [qt], out_dir, threads=threads, pure=True, imatrix=imatrix,
                            tensor_types=mix_plan.tensor_types(), force=force, progress=progress)
        over = excess(result)
        if over <= 0:
            return result, mix_plan, True
        budget -= over
        try:
            mix_plan = choose(sens, budget, mix_plan.target, file_budget=file_budget)
        except UsageError:
            break
        mix_plan.target_bytes = target
    return result, mix_plan, False
