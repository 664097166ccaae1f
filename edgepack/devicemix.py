"""The best mix for each device: a profile's memory budget turned into a byte budget for the weights, and the mix
of least measured KL divergence within it (``[quantize] device_mixes = true`` in ``edgepack build``).

What a device leaves for the weights is what ``fit`` says the rest needs, subtracted from its usable memory:
the KV cache at the build's context, llama.cpp's compute buffer at the smallest batch fit accepts (fit takes
the largest batch that fits, down to that one, so the budget is the one fit judges by), the logits, the
recurrent state and the runtime's overhead, all from ``fit.memory_needed`` on the device's default backend. None of these depend on the weights'
types, so they are computed once from the unquantized GGUF. The one part that does, a tied embedding's second
copy (made when the device's backend repacks the embedding's type: ``fit.tied_output_copy_bytes``), is added
to the token embedding's options for that device, so the choice is exact. The file made is then checked with
``fit`` on the device; an excess (alignment padding) is taken off the budget and the mix chosen again
(``mix.realize``). The sensitivity trials (``mix.measure``) do not depend on the device: one measurement
serves every device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from . import fit as fit_mod
from .errors import UsageError
from .mix import MixPlan, Option, Sensitivity, choose, realize, refuse_unreachable
from .profiles import Profile
from .progress import QUIET, Progress

BATCH = min(fit_mod.DEFAULT_BATCHES)  # the smallest batch with which fit counts a variant as fitting


@dataclass(frozen=True)
class DeviceBudget:
    """A device's memory split: ``weights_bytes`` is what is left for the tensor data."""

    profile: str
    n_ctx: int
    usable_bytes: int
    other_bytes: dict[str, int]  # fit's memory parts besides the weights: kv_cache, compute, output, overhead, state
    weights_bytes: int

    def describe(self) -> str:
        parts = ", ".join(f"{k.replace('_', ' ')} {v / 1e6:.1f}" for k, v in self.other_bytes.items() if v)
        return (f"{self.weights_bytes / 1e6:.2f} MB left for weights on {self.profile} at ctx {self.n_ctx} "
                f"({self.usable_bytes / 1e6:.0f} MB usable, minus {parts} MB)")


@dataclass
class DeviceMix:
    budget: DeviceBudget
    plan: MixPlan
    quantized: object  # quantize.QuantizeResult
    memory_total_bytes: int  # what fit says the file needs on the device


def _memory(model: fit_mod.ModelDesc, profile: Profile, n_ctx: int, projector_bytes: int) -> fit_mod.MemoryParts:
    return fit_mod.memory_needed(model, n_ctx, BATCH, overhead_bytes=int(profile.runtime_overhead_mb.value * fit_mod.MB),
                                 backend=profile.default_backend, isa=profile.isa, projector_bytes=projector_bytes)


def device_budget(base: str | Path | fit_mod.ModelDesc, profile: Profile, n_ctx: int,
                  projector_bytes: int = 0) -> DeviceBudget:
    """The bytes of tensor data a model (its GGUF, or fit's description of it) may take on ``profile`` at
    ``n_ctx`` (see the module docstring); ``projector_bytes``: a vision projector shipped beside it
    (``fit.projector_bytes``, which fit counts too)."""
    model = base if isinstance(base, fit_mod.ModelDesc) else fit_mod.describe_gguf(base)
    parts = _memory(model, profile, n_ctx, projector_bytes)
    other = {"kv_cache": parts.kv_cache_bytes, "compute": parts.compute_bytes, "output": parts.output_bytes,
             "state": parts.state_bytes, "runtime": parts.overhead_bytes, "projector": parts.projector_bytes}
    return DeviceBudget(profile=profile.name, n_ctx=n_ctx, usable_bytes=profile.usable_bytes, other_bytes=other,
                        weights_bytes=profile.usable_bytes - sum(other.values()))


def device_sensitivity(sens: Sensitivity, base: fit_mod.ModelDesc, profile: Profile) -> Sensitivity:
    """``sens`` with the token embedding's options costing what they cost on ``profile``: their bytes plus the
    tied-output copy llama.cpp would make of that type there (fit's rule, asked per option)."""
    embd = next((t for t in base.tensors if t.name == "token_embd.weight"), None)
    if embd is None or "token_embd" not in sens.options:
        return sens
    options = dict(sens.options)
    costed = []
    for o in sens.options["token_embd"]:
        as_type = dataclasses.replace(embd, type=o.type, size_bytes=o.bytes)
        model = dataclasses.replace(base, tensors=[as_type if t is embd else t for t in base.tensors])
        copy = fit_mod.tied_output_copy_bytes(model, profile.default_backend, profile.isa)
        costed.append(Option(o.type, o.bytes + copy, o.kld))
    options["token_embd"] = costed
    return dataclasses.replace(sens, options=options)


def _hint(budget: DeviceBudget, with_imatrix: bool) -> str:
    return (f"{budget.describe()}: lower [constraints] ctx, leave {budget.profile} out of [profiles] names"
            + ("" if with_imatrix else ', or set [quantize] imatrix = "auto" to allow the IQ types'))


def refuse_unreachable_devices(base_gguf: Path, budgets: list[DeviceBudget], *, with_imatrix: bool,
                               candidates: tuple[str, ...] = ()) -> None:
    """Before measuring anything: a device whose weight budget is below the smallest mix's lower bound."""
    for b in budgets:
        refuse_unreachable(base_gguf, b.weights_bytes, b.profile, file_budget=False,
                           with_imatrix=with_imatrix, candidates=candidates,
                           hint=_hint(b, with_imatrix))


def device_mix(base_gguf: str | Path, sens: Sensitivity, profile: Profile, n_ctx: int, out_dir: str | Path,
               name: str, *, imatrix: str | Path | None = None, projector_bytes: int = 0, threads: int = 0,
               progress: Progress = QUIET) -> DeviceMix:
    """Choose, quantize (``<Model>-<name>.gguf`` in ``out_dir``) and check the mix of least predicted KLD that
    fits ``profile`` at ``n_ctx``. Refused in one line when none does."""
    base_gguf = Path(base_gguf)
    model = fit_mod.describe_gguf(base_gguf)
    budget = device_budget(model, profile, n_ctx, projector_bytes)
    hint = _hint(budget, imatrix is not None)
    sens = device_sensitivity(sens, model, profile)
    plan = choose(sens, budget.weights_bytes, profile.name, file_budget=False, hint=hint)
    needed: dict[str, int] = {}

    def excess(result) -> int:
        needed["total"] = _memory(fit_mod.describe_gguf(result.output), profile, n_ctx, projector_bytes).total_bytes
        return needed["total"] - budget.usable_bytes

    result, plan, fits = realize(base_gguf, sens, plan, Path(out_dir), name, excess, file_budget=False,
                                 imatrix=imatrix, threads=threads, progress=progress)
    if not fits:
        raise UsageError(f"no mix fits {profile.name}: the smallest tried needs {needed['total'] / 1e6:.2f} MB of "
                         f"{budget.usable_bytes / 1e6:.0f} MB usable", hint)
    return DeviceMix(budget=budget, plan=plan, quantized=result, memory_total_bytes=needed["total"])
