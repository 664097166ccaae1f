"""The hybrid, MoE and Granite families' structure: what the logits tests in test_families.py would not pin down alone.

LFM2's convolution state must carry across separate decode calls (llama.cpp keeps the last conv_L_cache - 1
inputs per sequence) and its kernel taps must keep their order; LFM2-MoE's experts must be stacked in the
router's order, from per-expert or fused checkpoint tensors alike, one expert at a time. Each structural
claim has a negative control: the same model with the detail broken moves the logits far past the tolerance.
"""

from __future__ import annotations

import json
from dataclasses import replace

import gguf
import numpy as np
import pytest

from edgepack.convert import convert
from edgepack.convert.families.lfm2 import LFM2
from edgepack.evaluate import open_llama
from tests.support.family_cases import CASES
from tests.fidelity.test_families import TOLERANCE
from tests.support.tinymodels import compare, llama_cpp_logits

pytestmark = pytest.mark.slow  # hybrid checkpoints built with transformers, minutes each (refusals: tests/unit)

LFM2_CASE = next(c for c in CASES if c.name == "lfm2-1.2b")
LFM2MOE_CASE = next(c for c in CASES if c.name == "lfm2-8b-a1b")
# A structural break must move the logits this far: 20x the F32 tolerance (the weakest break shown, Granite's
# attention multiplier on a tiny model with near-uniform attention, moves them 6e-3).
BROKEN = 20 * TOLERANCE["f32"]


def _f32(folder, name="f32.gguf"):
    path = folder / name
    if not path.exists():
        convert(folder / "model", path, outtype="f32")
    return path


def _arch_kv(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.")}


def _decode_one_at_a_time(path, ids) -> np.ndarray:
    """Logits with every token in its own decode call: later tokens see earlier ones only through the KV cache
    and the convolution state."""
    with open_llama(path, n_ctx=64, logits_all=True, n_threads=2, n_batch=1, n_ubatch=1, type_k=0,
                    type_v=0) as llm:
        for token in ids:
            llm.eval([token])
        return np.array(llm.scores[: len(ids)], dtype=np.float32)


@pytest.mark.parametrize("built", [LFM2_CASE], indirect=True, ids=["lfm2"])
def test_lfm2_layers_and_sizes_in_the_gguf(built):
    """One KV head count per layer (0 on conv layers), the MLP size from the size rule, the conv cache length."""
    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())
    kv = _arch_kv(_f32(folder))
    kinds = config["layer_types"]
    assert kinds == ["conv", "conv", "full_attention", "conv", "conv", "full_attention"]
    assert kv["lfm2.attention.head_count_kv"] == [config["num_key_value_heads"] if k != "conv" else 0 for k in kinds]
    assert kv["lfm2.feed_forward_length"] == 512  # block_ff_dim 700 -> int(2/3 x 700) = 466 -> up to 256s
    assert kv["lfm2.shortconv.l_cache"] == 3
    reader = gguf.GGUFReader(folder / "f32.gguf")
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    assert shapes["blk.0.shortconv.conv.weight"] == (3, config["hidden_size"])  # GGUF order: taps, channels
    assert "blk.0.attn_q.weight" not in shapes and "blk.2.shortconv.in_proj.weight" not in shapes


@pytest.mark.parametrize("built", [LFM2_CASE], indirect=True, ids=["lfm2"])
def test_lfm2_conv_state_carries_across_decode_calls(built):
    """Token by token, each in its own llama_decode, llama.cpp matches transformers' whole-sequence logits: the
    convolution state (and the KV cache) hold exactly what the layers need."""
    case, folder, ids, references = built
    max_abs, top1 = compare(references["f32"], _decode_one_at_a_time(_f32(folder), ids))
    print(f"lfm2 one token per decode: max|Δ|={max_abs:.2e} top1={top1:.0%}")
    assert top1 == 1.0 and max_abs <= TOLERANCE["f32"]


@pytest.mark.parametrize("built", [LFM2_CASE], indirect=True, ids=["lfm2"])
def test_lfm2_reversed_conv_taps_diverge(built, monkeypatch):
    """Negative control for the kernel layout: the taps written in reverse order (the newest token paired with the
    oldest tap) give logits far from transformers', so the logits test would catch a layout bug."""
    case, folder, ids, references = built
    pattern = next(p for p in LFM2.transforms if "conv" in p)
    keep = LFM2.transforms[pattern]
    monkeypatch.setitem(LFM2.transforms, pattern, lambda w, config: keep(w, config)[:, ::-1].copy())
    convert(folder / "model", folder / "reversed.gguf", outtype="f32", force=True)
    max_abs, _ = compare(references["f32"], llama_cpp_logits(folder / "reversed.gguf", ids))
    print(f"lfm2 with reversed conv taps: max|Δ|={max_abs:.2e}")
    assert max_abs > BROKEN


def _rewrite_checkpoint(folder, dst, edit) -> None:
    """Copy the model folder to ``dst`` with its tensors passed through ``edit`` (name -> array dict)."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir(exist_ok=True)
    for f in (folder / "model").iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    save_file(edit(load_file(folder / "model/model.safetensors")), dst / "model.safetensors")


def _moe_layers(config: dict) -> range:
    return range(config["num_dense_layers"], config["num_hidden_layers"])


@pytest.mark.parametrize("built", [LFM2MOE_CASE], indirect=True, ids=["lfm2moe"])
def test_lfm2moe_fused_experts_convert_to_the_same_gguf(built):
    """transformers-5-style fused experts (gate_up_proj [experts, 2 x ff, hidden], gate rows first; down_proj
    [experts, hidden, ff]) give the very same tensors as the per-expert checkpoint."""
    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())

    def fuse(tensors):
        for i in _moe_layers(config):
            p = f"model.layers.{i}.feed_forward.experts."
            n = config["num_experts"]
            w = {k: np.stack([tensors.pop(f"{p}{e}.{k}.weight") for e in range(n)]) for k in ("w1", "w2", "w3")}
            tensors[p + "gate_up_proj"] = np.concatenate([w["w1"], w["w3"]], axis=1)
            tensors[p + "down_proj"] = w["w2"]
        return tensors

    _rewrite_checkpoint(folder, folder / "fused", fuse)
    convert(folder / "fused", folder / "fused.gguf", outtype="f32", force=True)
    a, b = gguf.GGUFReader(_f32(folder)), gguf.GGUFReader(folder / "fused.gguf")
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        assert np.array_equal(x.data, y.data), x.name
    assert any(t.name == "blk.3.ffn_gate_exps.weight" for t in a.tensors)


@pytest.mark.parametrize("built", [LFM2MOE_CASE], indirect=True, ids=["lfm2moe"])
def test_lfm2moe_expert_order_matters(built):
    """Negative control for the stacking order: two experts' weights swapped in the checkpoint (the router
    unchanged) move llama.cpp's logits far from transformers', so experts stacked out of order would fail the
    logits test. (It also shows the tiny model's routing reaches both experts.)"""
    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())

    def swap(tensors):
        for i in _moe_layers(config):
            for w in ("w1", "w2", "w3"):
                a, b = (f"model.layers.{i}.feed_forward.experts.{e}.{w}.weight" for e in (0, 1))
                tensors[a], tensors[b] = tensors[b], tensors[a]
        return tensors

    _rewrite_checkpoint(folder, folder / "swapped", swap)
    convert(folder / "swapped", folder / "swapped.gguf", outtype="f32", force=True)
    max_abs, _ = compare(references["f32"], llama_cpp_logits(folder / "swapped.gguf", ids))
    print(f"lfm2moe with experts 0 and 1 swapped: max|Δ|={max_abs:.2e}")
    assert max_abs > BROKEN


@pytest.mark.parametrize("built", [LFM2MOE_CASE], indirect=True, ids=["lfm2moe"])
def test_lfm2moe_experts_are_read_one_at_a_time(built, monkeypatch):
    """Streaming: a stacked expert tensor is written from its parts, no read larger than one expert's matrix
    (the largest dense tensor, the embedding, is read whole as before)."""
    from edgepack.convert.checkpoint import Checkpoint

    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())
    reads: list[tuple[str, int]] = []
    original = Checkpoint.read

    def spy(self, name, start=0, shape=None):
        out = original(self, name, start, shape)
        reads.append((name, out.size))
        return out

    monkeypatch.setattr(Checkpoint, "read", spy)
    convert(folder / "model", folder / "spy.gguf", outtype="f16", force=True)
    expert = config["moe_intermediate_size"] * config["hidden_size"]
    expert_reads = [size for name, size in reads if ".experts." in name]
    assert expert_reads and max(expert_reads) == expert
    assert len(expert_reads) == 3 * config["num_experts"] * len(_moe_layers(config))


GRANITE_CASE = next(c for c in CASES if c.name == "granite-3.3-2b")


@pytest.mark.parametrize("built", [GRANITE_CASE], indirect=True, ids=["granite"])
@pytest.mark.parametrize("multiplier", ["embedding_multiplier", "residual_multiplier", "attention_multiplier",
                                        "logits_scaling"])
def test_granite_each_multiplier_is_carried(built, multiplier):
    """Negative control per multiplier: the GGUF written as if config.json left it at 1.0 moves llama.cpp's logits
    far from transformers' (the multipliers are not lost in the noise of a tiny model)."""
    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())
    assert float(config[multiplier]) != 1.0
    plain = folder / f"no-{multiplier}"
    _rewrite_checkpoint(folder, plain, lambda tensors: tensors)
    (plain / "config.json").write_text(json.dumps(dict(config, **{multiplier: 1.0})))
    convert(plain, plain / "f32.gguf", outtype="f32")
    max_abs, _ = compare(references["f32"], llama_cpp_logits(plain / "f32.gguf", ids))
    print(f"granite without {multiplier}: max|Δ|={max_abs:.2e}; logits span {np.ptp(references['f32']):.2e}")
    assert max_abs > BROKEN


HYBRID_CASE = next(c for c in CASES if c.name == "granite-4.0-h-tiny")


@pytest.mark.parametrize("built", [HYBRID_CASE], indirect=True, ids=["granite-hybrid"])
def test_granite_hybrid_state_carries_across_decode_calls(built):
    """One token per llama_decode: the Mamba2 conv and scan states (and the attention layer's KV) carry exactly
    what transformers computes over the whole sequence."""
    case, folder, ids, references = built
    kv = _arch_kv(_f32(folder))
    assert kv["granitehybrid.attention.head_count_kv"] == [0, 0, 0, 0, 0, 1]
    assert kv["granitehybrid.rope.scaling.finetuned"] is False  # position_embedding_type "nope": no rope
    max_abs, top1 = compare(references["f32"], _decode_one_at_a_time(folder / "f32.gguf", ids))
    print(f"granite hybrid one token per decode: max|Δ|={max_abs:.2e} top1={top1:.0%}")
    assert top1 == 1.0 and max_abs <= TOLERANCE["f32"]


def _broken_a(weights, config):
    from edgepack.convert.families.granite_hybrid import _a_from_log
    return -_a_from_log(weights, config)  # +exp(A_log): a growing state


def _swapped_halves(form):
    """The experts' gate and up halves exchanged."""
    return tuple(replace(p, rows=(p.rows[1] - p.rows[0], 2 * (p.rows[1] - p.rows[0])) if p.rows[0] == 0 else
                         (0, p.rows[0])) for p in form)


@pytest.mark.parametrize("built", [HYBRID_CASE], indirect=True, ids=["granite-hybrid"])
@pytest.mark.parametrize("broken", ["A sign", "conv taps reversed", "rope on", "expert gate/up swapped"])
def test_granite_hybrid_broken_details_diverge(built, broken, monkeypatch):
    """Negative controls: each detail written wrongly moves llama.cpp's logits far from transformers'."""
    from edgepack.convert.families import granite_hybrid as gh

    case, folder, ids, references = built
    if broken == "A sign":
        monkeypatch.setitem(gh.GRANITE_HYBRID.transforms, r"mamba\.A_log$", _broken_a)
    elif broken == "conv taps reversed":
        monkeypatch.setitem(gh.GRANITE_HYBRID.transforms, r"mamba\.conv1d\.weight$",
                            lambda w, c: gh._conv_taps(w, c)[:, ::-1].copy())
    elif broken == "rope on":
        monkeypatch.setattr(gh, "uses_rope", lambda config: True)
    else:
        ffn = gh.ffn_tensors

        def swapped(config, i, shared_mlp=True):
            out = ffn(config, i, shared_mlp)
            for name in [n for n in out if n.endswith(("experts.gate", "experts.up"))]:
                out[name] = replace(out[name], forms=(_swapped_halves(out[name].forms[0]),))
            return out
        monkeypatch.setattr(gh, "ffn_tensors", swapped)
    convert(folder / "model", folder / "broken.gguf", outtype="f32", force=True)
    max_abs, _ = compare(references["f32"], llama_cpp_logits(folder / "broken.gguf", ids))
    print(f"granite hybrid, {broken}: max|Δ|={max_abs:.2e}")
    assert max_abs > BROKEN


MICRO_CASE = next(c for c in CASES if c.name == "granite-4.0-micro")


@pytest.mark.parametrize("built", [MICRO_CASE], indirect=True, ids=["granite-micro"])
def test_granite_hybrid_without_mamba_is_written_as_granite(built):
    """Granite 4.0-Micro's form (GraniteMoeHybrid class, attention layers only, no experts) becomes llama.cpp's
    granite architecture, as llama.cpp's own converter does; fit describes it the same way."""
    from edgepack.fit import describe_config, describe_gguf

    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())
    result = convert(folder / "model", folder / "micro.gguf", outtype="f32", force=True)
    assert result.gguf_architecture == "granite"
    assert _arch_kv(folder / "micro.gguf")["granite.rope.scaling.finetuned"] is True
    planned, real = describe_config(config, "F32"), describe_gguf(folder / "micro.gguf")
    assert planned.architecture == real.architecture == "granite"
    assert {t.name: t.shape for t in planned.tensors} == {t.name: t.shape for t in real.tensors}


GRANITE_MOE_CASES = [c for c in CASES if c.name in ("granite-3.1-moe", "granite-moe-shared", "granite-4.0-moe-attention")]


@pytest.mark.parametrize("built", GRANITE_MOE_CASES, indirect=True, ids=[c.name for c in GRANITE_MOE_CASES])
def test_granite_moe_forms_are_written_as_granitemoe_with_experts_in_order(built):
    """GraniteMoe, GraniteMoeShared and the Granite 4 hybrid class without Mamba (with experts and rope) are
    llama.cpp's granitemoe: experts counted, a shared expert sized where there is one, expert e's gate/up the rows of
    its own fused input_linear; and two experts swapped against the router are far off (the logits tests see it)."""
    from safetensors.numpy import load_file, save_file

    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())
    result = convert(folder / "model", folder / "moe.gguf", outtype="f32", force=True)
    assert result.gguf_architecture == "granitemoe"
    kv = _arch_kv(folder / "moe.gguf")
    assert kv["granitemoe.expert_count"] == config["num_local_experts"]
    assert kv.get("granitemoe.expert_shared_feed_forward_length", 0) == config.get("shared_intermediate_size", 0)
    stacked = {t.name: t.data for t in gguf.GGUFReader(folder / "moe.gguf").tensors}
    tensors = load_file(folder / "model" / "model.safetensors")
    fused, ff = tensors["model.layers.1.block_sparse_moe.input_linear.weight"], config["intermediate_size"]
    for e in range(config["num_local_experts"]):
        assert np.array_equal(stacked["blk.1.ffn_gate_exps.weight"][e], fused[e, :ff])
        assert np.array_equal(stacked["blk.1.ffn_up_exps.weight"][e], fused[e, ff:])
    swapped = dict(tensors)
    for name in [n for n in tensors if "block_sparse_moe." in n and "router" not in n]:
        swapped[name] = tensors[name][[1, 0] + list(range(2, tensors[name].shape[0]))]
    (folder / "swapped").mkdir(exist_ok=True)
    for f in (folder / "model").iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            (folder / "swapped" / f.name).write_bytes(f.read_bytes())
    save_file(swapped, folder / "swapped" / "model.safetensors")
    convert(folder / "swapped", folder / "swapped.gguf", outtype="f32", force=True)
    max_abs, _ = compare(references["f32"], llama_cpp_logits(folder / "swapped.gguf", ids))
    print(f"{case.name}: experts 0 and 1 swapped against the router: max|Δ|={max_abs:.2e}")
    # Granite 3's logits / 8 are flat here (the swap moves 1.7e-3, agreement is 4e-7): ten times the F32 limit.
    assert max_abs > 10 * TOLERANCE["f32"]
