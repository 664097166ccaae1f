"""The best mix for a device (edgepack.devicemix): the budget comes from fit, the file made fits the device by
fit's own measure, and the choice is the best the sensitivity table allows (checked against every combination).

The sensitivity table here is built by the test: each group's bytes at each type from the tensor shapes and
ggml's block sizes (gguf-py's table, not edgepack's code), and a KLD per option that grows as the type gets
smaller, more for some groups than others. The trials that measure real KLDs are exercised by the --target-size
test in test_imatrix.py and by the build's device-mix test; here what is checked is the budget and the choice.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import gguf
import pytest

from edgepack import fit as fit_mod
from edgepack.convert import convert
from edgepack.devicemix import device_budget, device_mix, refuse_unreachable_devices
from edgepack.errors import UsageError
from edgepack.ggufheader import read_header
from edgepack.mix import Option, Sensitivity, groups_of
from edgepack.profiles import SHIPPED_DIR, load_profile_file
from tests.support.quantmodels import DEMO

N_CTX = 256  # the demo's training context
TYPES = ("Q8_0", "Q4_K", "Q2_K")
HURT = {"token_embd": 3.0, "attn_q": 1.0, "attn_k": 0.5, "attn_v": 2.0, "attn_output": 1.0, "ffn_gate": 0.7,
        "ffn_up": 0.7, "ffn_down": 1.5}  # how much lowering each group costs (made up; different per group)


@pytest.fixture(scope="module")
def f16(tmp_path_factory) -> Path:
    return convert(DEMO, tmp_path_factory.mktemp("devicemix") / "demo-F16.gguf", outtype="f16").output


def _bytes(ggml_type: str, n_elements: int) -> int:
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml_type]]
    return n_elements // block * size


@pytest.fixture(scope="module")
def sens(f16) -> Sensitivity:
    header = read_header(f16)
    groups = groups_of(header.tensors)
    n = {t.name: t.n_elements for t in header.tensors}
    bpw = {t: _bytes(t, 256) * 8 / 256 for t in TYPES}
    options = {g: [Option(t, sum(_bytes(t, n[name]) for name in names), 1e-4 + HURT[g] * 1e-4 * (8.5 - bpw[t]) ** 2)
                   for t in TYPES] for g, names in groups.items()}
    grouped = {name for names in groups.values() for name in names}
    fixed = sum(t.n_bytes for t in header.tensors if t.name not in grouped)  # norms, kept F32
    return Sensitivity(n_tensors={g: len(v) for g, v in groups.items()}, options=options, base_kld=1e-4,
                       fixed_file_bytes=fixed + header.file_size - header.data_bytes, fixed_data_bytes=fixed,
                       n_params=header.n_params)


def _profile(folder: Path, name: str, usable_bytes: int):
    """pixel-8 (ARM with i8mm: llama.cpp repacks Q8_0/Q4_K there, so a tied embedding of those types is loaded
    twice) renamed, with this usable memory and a 1 MB runtime overhead."""
    text = (SHIPPED_DIR / "pixel-8.toml").read_text().replace('name = "pixel-8"', f'name = "{name}"')
    text = re.sub(r"usable = \{ gb = [0-9.]+", f"usable = {{ gb = {usable_bytes / 1e9!r}", text)
    text = re.sub(r"overhead = \{ mb = [0-9.]+", "overhead = { mb = 1", text)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return load_profile_file(path)


def _best_by_brute_force(sens: Sensitivity, model, profile, weights_budget: int) -> float:
    """The least predicted KLD over every combination of types whose weights, plus the tied copy fit says
    the device makes of that embedding type, fit in ``weights_budget``."""
    embd_rows = next(t.shape[1] for t in model.tensors if t.name == "token_embd.weight")
    groups = list(sens.options)
    best = None
    for combo in itertools.product(*(sens.options[g] for g in groups)):
        embd = combo[groups.index("token_embd")]
        copy = embd.bytes if fit_mod.cpu_repacks(embd.type, embd_rows, profile.isa) else 0
        if sens.fixed_data_bytes + sum(o.bytes for o in combo) + copy > weights_budget:
            continue
        kld = sens.base_kld + sum(max(o.kld - sens.base_kld, 0) for o in combo)
        best = kld if best is None else min(best, kld)
    return best


def test_device_mix_is_the_best_that_fits_and_fit_picks_it(f16, sens, tmp_path):
    model = fit_mod.describe_gguf(f16)
    other = device_budget(model, _profile(tmp_path, "probe", 10**9), N_CTX)
    assert other.other_bytes["kv_cache"] > 0 and other.other_bytes["compute"] > 0
    others = 10**9 - other.weights_bytes  # what fit says the KV cache, compute, logits and runtime take
    all_q8 = sens.fixed_data_bytes + sum(opts[0].bytes for opts in sens.options.values())
    tight = _profile(tmp_path, "tight", others + int(all_q8 * 0.6))
    budget = device_budget(model, tight, N_CTX)
    assert budget.weights_bytes == int(all_q8 * 0.6) and "left for weights on tight" in budget.describe()

    made = device_mix(f16, sens, tight, N_CTX, tmp_path, "MIX-tight", threads=1)
    assert made.quantized.output.name.endswith("-MIX-tight.gguf")
    assert made.plan.predicted_kld == pytest.approx(_best_by_brute_force(sens, model, tight, budget.weights_bytes))
    types = {t.name: t.type.name for t in read_header(made.quantized.output).tensors}
    assert {types.get(f"blk.0.{g.group}.weight", types.get(f"{g.group}.weight")) for g in made.plan.groups} \
        <= set(TYPES)
    assert len({g.type for g in made.plan.groups}) > 1  # a real mix, not a uniform type

    # fit, on its own, finds the file within the device and picks it over uniform Q8_0, which does not fit
    q8 = tmp_path / "q8"
    from edgepack.quantize import quantize
    [uniform] = quantize(f16, ["Q8_0"], q8, threads=1)
    variants = [fit_mod.Variant(fit_mod.describe_gguf(p)) for p in (uniform.output, made.quantized.output)]
    res = fit_mod.fit(variants, [tight], n_ctx=N_CTX)
    row = next(r for r in res.rows if r.variant == variants[1].model.name)
    assert row.fits and made.memory_total_bytes <= tight.usable_bytes
    assert res.picks["tight"] == variants[1].model.name


def test_a_device_no_mix_fits_is_refused_in_one_line(f16, sens, tmp_path):
    model = fit_mod.describe_gguf(f16)
    others = 10**9 - device_budget(model, _profile(tmp_path, "probe", 10**9), N_CTX).weights_bytes
    smallest = sens.smallest_bytes(file_budget=False)
    tiny = _profile(tmp_path, "tiny", others + smallest // 2)
    budget = device_budget(model, tiny, N_CTX)
    with pytest.raises(UsageError) as caught:  # before any measuring: the lower bound of the smallest mix
        refuse_unreachable_devices(f16, [budget], with_imatrix=False, candidates=TYPES)
    assert "no mix fits tiny" in caught.value.message and "\n" not in caught.value.message
    assert "left for weights on tiny" in caught.value.hint and "ctx" in caught.value.hint
    # between the lower bound and the real smallest: refused by the choice, nothing written
    snug = _profile(tmp_path, "snug", others + smallest - 1)
    with pytest.raises(UsageError, match="no mix fits snug: the smallest edgepack can make"):
        device_mix(f16, sens, snug, N_CTX, tmp_path / "out", "MIX-snug", threads=1)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.gguf"))


def test_a_projector_shipped_beside_the_model_comes_off_the_weights(f16, sens, tmp_path):
    """A vision projector in every bundle (fit counts its memory beside each variant) leaves less for the mix."""
    model = fit_mod.describe_gguf(f16)
    roomy = device_budget(model, _profile(tmp_path, "probe", 10**9), N_CTX)
    with_projector = device_budget(model, _profile(tmp_path, "probe", 10**9), N_CTX, projector_bytes=123_456)
    assert roomy.weights_bytes - with_projector.weights_bytes == 123_456
    assert with_projector.other_bytes["projector"] == 123_456
    others = 10**9 - roomy.weights_bytes
    all_q8 = sens.fixed_data_bytes + sum(opts[0].bytes for opts in sens.options.values())
    tight = _profile(tmp_path, "tight", others + int(all_q8 * 0.6))
    alone = device_mix(f16, sens, tight, N_CTX, tmp_path / "alone", "MIX-tight", threads=1)
    beside = device_mix(f16, sens, tight, N_CTX, tmp_path / "beside", "MIX-tight", projector_bytes=300_000, threads=1)
    # the model's own memory shrinks (its file need not: a Q2_K embedding has no repacked copy to pay for)
    assert beside.memory_total_bytes - 300_000 < alone.memory_total_bytes <= tight.usable_bytes
    assert beside.plan.predicted_kld >= alone.plan.predicted_kld
    res = fit_mod.fit([fit_mod.Variant(fit_mod.describe_gguf(beside.quantized.output))], [tight], n_ctx=N_CTX,
                      projector_bytes=300_000)
    assert res.rows[0].fits
    res = fit_mod.fit([fit_mod.Variant(fit_mod.describe_gguf(alone.quantized.output))], [tight], n_ctx=N_CTX,
                      projector_bytes=300_000)
    assert not res.rows[0].fits  # the mix made without it would not fit beside the projector
