"""Gemma-specific structure: what the per-family logits tests in test_families.py cannot show on their own.

* Gemma 3 4B/12B/27B (Gemma3ForConditionalGeneration): the text model converts from every layout its
  checkpoints come in (transformers 4.x names with the Hub's sparse text_config, 5.x names), the vision tower
  and projector are left out and reported, and the logit soft-cap the multimodal class never applies stays out.
* Gemma 4: the KV-shared / per-layer-embedding / global-local structure reaches the GGUF key by key, both save
  forms (with and without k/v weights on shared layers) and the causal-LM form convert alike, llama.cpp's gemma4
  tokenizer gives HF's ids (refusals: tests/unit/test_family_refusals.py).
* Gemma 4 26B-A4B (enable_moe_block): routing of the tiny model is decided far from ties (asserted), the experts
  stack in order from the fused gate_up_proj with the router scales where llama.cpp reads them, and swapped experts
  or per-expert scales left at 1 move the logits far beyond the tolerance.
* Gemma 3n: the shared layers read layers 18/19 (changing those moves the logits, changing a shared layer's own
  unused weights does not), both save forms and the multimodal names convert alike, and the geometry llama.cpp
  hard-codes is checked.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from edgepack.cli import cli
from edgepack.convert import convert
from tests.support.family_cases import (CASES, _merged, as_llama_cpp_computes, float64_copy,
                                        half_precision_matmuls)
from tests.support.gemma_configs import GEMMA3_4B_IT
from tests.support.tinymodels import compare, llama_cpp_logits, reload_float32

pytestmark = pytest.mark.slow  # Gemma checkpoints built with transformers, converted many ways (refusals: tests/unit)

GEMMA3_MULTIMODAL = next(c for c in CASES if c.name == "gemma3-4b-multimodal")


def _relayout(src, dst, rename, config: dict | None = None) -> None:
    """Copy the checkpoint folder ``src`` to ``dst`` with every tensor renamed by ``rename`` (and config.json
    replaced by ``config`` when given)."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir(exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    save_file({rename(n): t for n, t in tensors.items()}, dst / "model.safetensors")
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))


def _tensors(path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def _hub_name(name: str) -> str:
    """transformers 5.x's saved names -> the Hub's gemma-3-4b-it layout (SigLIP under vision_model.)."""
    return name.replace("vision_tower.", "vision_tower.vision_model.", 1)


def _v5_name(name: str) -> str:
    """-> model.language_model.*, model.vision_tower.*, model.multi_modal_projector.* (no lm_head: tied)."""
    for old, new in (("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower."),
                     ("multi_modal_projector.", "model.multi_modal_projector.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


@pytest.mark.slow
@pytest.mark.parametrize("built", [GEMMA3_MULTIMODAL], indirect=True, ids=[GEMMA3_MULTIMODAL.name])
def test_gemma3_multimodal_checkpoint_layouts(built, tmp_path):
    """The same weights under the Hub's layout (transformers 4.50 names, a text_config holding only what differs
    from the defaults) and under model.language_model.* give the same GGUF tensors and the same logits."""
    import torch
    import transformers

    case, folder, ids, references = built
    saved = json.loads((folder / "model/config.json").read_text())
    names = list(_tensors_in(folder / "model"))
    assert any(n.startswith("language_model.model.layers.") for n in names)
    # The Hub's config: GEMMA3_4B_IT with the test's sizes, nothing transformers fills in.
    sparse = _merged(GEMMA3_4B_IT, case.overrides)
    sparse["text_config"]["vocab_size"] = saved["text_config"]["vocab_size"]
    assert "num_attention_heads" not in sparse["text_config"] and "head_dim" not in sparse["text_config"]
    _relayout(folder / "model", tmp_path / "hub", _hub_name, sparse)
    _relayout(folder / "model", tmp_path / "v5", _v5_name)

    reference = convert(folder / "model", tmp_path / "saved.gguf", outtype="f32")
    expected = _tensors(tmp_path / "saved.gguf")
    for layout in ("hub", "v5"):
        result = convert(tmp_path / layout, tmp_path / f"{layout}.gguf", outtype="f32")
        assert result.dropped == reference.dropped
        got = _tensors(tmp_path / f"{layout}.gguf")
        assert list(got) == list(expected)
        assert all(np.array_equal(got[n], expected[n]) for n in expected), layout
        # transformers reads this layout as the same model (so it is a real one, not one made up here).
        model = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / layout, dtype=torch.float32)
        with torch.no_grad():
            hf = model(torch.tensor([ids])).logits[0].numpy()
        assert np.array_equal(hf, references["plain"]), layout
    max_abs, top1 = compare(references["f32"], llama_cpp_logits(tmp_path / "hub.gguf", ids))
    assert top1 == 1.0 and max_abs <= 2e-3


def _tensors_in(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "np") as f:
        return list(f.keys())


@pytest.mark.parametrize("built", [GEMMA3_MULTIMODAL], indirect=True, ids=[GEMMA3_MULTIMODAL.name])
def test_gemma3_multimodal_drops_the_vision_parts_and_says_so(built, tmp_path):
    case, folder, ids, references = built
    names = _tensors_in(folder / "model")
    n_vision = sum(n.startswith("vision_tower.") for n in names)
    n_projector = sum(n.startswith("multi_modal_projector.") for n in names)
    assert n_vision and n_projector
    out = tmp_path / "text.gguf"
    result = CliRunner().invoke(cli, ["convert", str(folder / "model"), "-o", str(out), "--outtype", "f16"])
    assert result.exit_code == 0, result.output
    assert (f"note: converted the text model only; not converted: multimodal projector ({n_projector} tensors), "
            f"vision tower ({n_vision} tensors)") in result.output
    reader = gguf.GGUFReader(out)
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("tokenizer.")}
    assert fields["general.architecture"] == "gemma3"
    assert fields["edgepack.source.dropped"] == ["multimodal projector", "vision tower"]
    # transformers' Gemma3ForConditionalGeneration never soft-caps its logits, though text_config names a cap.
    assert json.loads((folder / "model/config.json").read_text())["text_config"]["final_logit_softcapping"] == 30.0
    assert "gemma3.final_logit_softcapping" not in fields
    assert not any("vision" in t.name or "mm_" in t.name for t in reader.tensors)
    as_json = CliRunner().invoke(cli, ["convert", str(folder / "model"), "-o", str(out), "--force", "--json"])
    assert json.loads(as_json.output)["dropped"] == {"multimodal projector": n_projector, "vision tower": n_vision}


# --- Gemma 4 -------------------------------------------------------------------------------------------------

GEMMA4_E2B = next(c for c in CASES if c.name == "gemma4-e2b")


def _fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: f.contents() for name, f in reader.fields.items() if not name.startswith("tokenizer.ggml.t")}


@pytest.mark.parametrize("built", [GEMMA4_E2B], indirect=True, ids=[GEMMA4_E2B.name])
def test_gemma4_structure_reaches_the_gguf(built, tmp_path):
    """The E2B structure, key by key: KV-shared layers (count, no k/v of their own), per-layer embeddings, the
    doubled FFN of the shared layers, global/local head sizes, proportional rope's frequency divisors."""
    case, folder, ids, references = built
    text = json.loads((folder / "model/config.json").read_text())["text_config"]
    result = convert(folder / "model", tmp_path / "e2b.gguf", outtype="f32")
    assert result.gguf_architecture == "gemma4" and set(result.dropped) == {"vision tower"}
    kv = _fields(tmp_path / "e2b.gguf")
    a = "gemma4"
    assert kv[f"{a}.attention.shared_kv_layers"] == text["num_kv_shared_layers"] == 5
    assert kv[f"{a}.attention.sliding_window_pattern"] == [t == "sliding_attention" for t in text["layer_types"]]
    assert kv[f"{a}.feed_forward_length"] == [256] * 5 + [512] * 5
    assert kv[f"{a}.embedding_length_per_layer_input"] == 16
    assert (kv[f"{a}.attention.key_length"], kv[f"{a}.attention.key_length_swa"]) == (64, 32)
    assert (kv[f"{a}.rope.dimension_count"], kv[f"{a}.rope.dimension_count_swa"]) == (64, 32)
    assert kv[f"{a}.attention.head_count_kv"] == 1 and kv[f"{a}.final_logit_softcapping"] == 30.0
    assert kv["tokenizer.ggml.model"] == "gemma4"
    tensors = _tensors(tmp_path / "e2b.gguf")
    assert not [n for n in tensors if n.startswith(tuple(f"blk.{i}.attn_k" for i in range(5, 10)))]
    assert all(f"blk.{i}.attn_k.weight" in tensors and f"blk.{i}.attn_v.weight" in tensors for i in range(5))
    # proportional rope: a quarter of the global head's 32 frequencies rotate, the other 24 stay still
    assert tensors["rope_freqs.weight"].tolist() == np.array([1.0] * 8 + [1e30] * 24, dtype=np.float32).tolist()
    assert tensors["per_layer_token_embd.weight"].shape == (len(references["plain"][0]), 16 * 10)


def _gemma4_hub_form(src, dst):
    """The checkpoint as the Hub keeps it: each KV-shared layer (5-9) with k/v weights of its own, here those of
    the layer it reads (3 for local layers, 4 for the global one)."""
    from safetensors.numpy import load_file, save_file

    _relayout(src, dst, lambda n: n)
    tensors = load_file(dst / "model.safetensors")
    prefix = "model.language_model.layers."
    for i in range(5, 10):
        source = 4 if i == 9 else 3
        for name in ("k_proj.weight", "v_proj.weight", "k_norm.weight"):
            tensors[f"{prefix}{i}.self_attn.{name}"] = tensors[f"{prefix}{source}.self_attn.{name}"]
    save_file(tensors, dst / "model.safetensors")
    return dst


def _logits_with(path, ids, changes: dict) -> np.ndarray:
    """llama.cpp's logits from a copy of the GGUF ``path`` in which each tensor named in ``changes`` holds the value
    given there (a conversion broken on purpose)."""
    changed = path.with_name(f"{path.stem}.{next(iter(changes))}.gguf")
    changed.write_bytes(path.read_bytes())
    reader = gguf.GGUFReader(changed, "r+")
    for t in reader.tensors:
        if t.name in changes:
            t.data[...] = changes[t.name]
    reader.data.flush()
    del reader
    return llama_cpp_logits(changed, ids)


@pytest.mark.parametrize("built", [GEMMA4_E2B], indirect=True, ids=[GEMMA4_E2B.name])
def test_gemma4_logits_catch_broken_kv_sharing_and_per_layer_embeddings(built, tmp_path, monkeypatch):
    """The logits comparison fails, far beyond the case's tolerance, on a converter that ignores KV sharing (the
    Hub form's k/v weights written and the shared-layer count 0: layers 5-9 compute K/V from their own input with
    the weights of the layer they should read) or writes the per-layer embeddings of layers 0 and 1 swapped."""
    import dataclasses

    from edgepack.convert.families import gemma4

    case, folder, ids, references = built
    path = tmp_path / "e2b.gguf"
    convert(folder / "model", path, outtype="f32")
    assert compare(references["f32"], llama_cpp_logits(path, ids))[0] <= case.tolerance["f32"]
    hub = _gemma4_hub_form(folder / "model", tmp_path / "hub")
    unshared = [dataclasses.replace(x, shared_kv=False) for x in gemma4.layers(gemma4.HFConfig(
        json.loads((hub / "config.json").read_text())))]
    with monkeypatch.context() as m:
        m.setattr(gemma4, "layers", lambda config: unshared)
        convert(hub, tmp_path / "unshared.gguf", outtype="f32")
    assert _fields(tmp_path / "unshared.gguf")["gemma4.attention.shared_kv_layers"] == 0
    table = _tensors(path)["per_layer_token_embd.weight"]  # (vocab, 10 layers x 16)
    swapped = table.reshape(len(table), 10, 16)[:, [1, 0, *range(2, 10)]].reshape(table.shape)
    moved = {"KV sharing ignored": compare(references["f32"], llama_cpp_logits(tmp_path / "unshared.gguf", ids)),
             "per-layer embeddings of layers 0/1 swapped": compare(
                 references["f32"], _logits_with(path, ids, {"per_layer_token_embd.weight": swapped}))}
    print("gemma4-e2b broken on purpose: " + "; ".join(f"{k} max|Δ| {v[0]:.2e} top1 {v[1]:.0%}"
                                                       for k, v in moved.items()))
    assert all(max_abs > 10 * case.tolerance["f32"] for max_abs, _ in moved.values()), moved


@pytest.mark.parametrize("built", [GEMMA4_E2B], indirect=True, ids=[GEMMA4_E2B.name])
def test_gemma4_both_save_forms_convert_alike(built, tmp_path):
    """transformers 5.x saves no k/v weights for KV-shared layers; a checkpoint that keeps them (as on the Hub)
    gives the same GGUF tensors, the extra ones reported as left out. The Gemma4ForCausalLM form of the same
    weights (model.* names, config = text_config) converts to the same tensors too."""
    from safetensors.numpy import load_file, save_file

    case, folder, ids, references = built
    convert(folder / "model", tmp_path / "ref.gguf", outtype="f32")
    reference = _tensors(tmp_path / "ref.gguf")
    hub = _gemma4_hub_form(folder / "model", tmp_path / "hub")
    result = convert(hub, tmp_path / "hub.gguf", outtype="f32")
    assert result.dropped["k/v weights of KV-shared layers (unused)"] == 15
    # causal-LM form
    causal = tmp_path / "causal"
    config = json.loads((folder / "model/config.json").read_text())
    text = dict(config["text_config"], architectures=["Gemma4ForCausalLM"])
    _relayout(folder / "model", causal, lambda n: n.replace("model.language_model.", "model."), text)
    plain = load_file(causal / "model.safetensors")
    save_file({n: t for n, t in plain.items() if n.startswith("model.layers.") or not n.startswith(
        ("model.vision_tower.", "model.embed_vision."))}, causal / "model.safetensors")
    convert(causal, tmp_path / "causal.gguf", outtype="f32")
    for layout in ("hub", "causal"):
        got = _tensors(tmp_path / f"{layout}.gguf")
        assert list(got) == list(reference), layout
        assert all(np.array_equal(got[n], reference[n]) for n in reference), layout


def _with_redundant_merges(folder) -> int:
    """Give the trained tokenizer.json what Gemma 4's has: merges that make an existing token from another pair
    of tokens (ranked after the first). Returns how many were added."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    vocab = model["vocab"]
    known = {tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]}
    extra = []
    for token in sorted(vocab, key=vocab.get):
        for cut in range(1, len(token)):
            pair = (token[:cut], token[cut:])
            if pair not in known and pair[0] in vocab and pair[1] in vocab:
                extra.append(list(pair))
                known.add(pair)
    model["merges"] = [m.split(" ") if isinstance(m, str) else list(m) for m in model["merges"]] + extra
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return len(extra)


def test_gemma4_token_ids_match_hf_tokenizers(tokenizer_folders, tmp_path):
    """llama.cpp's gemma4 tokenizer (BPE by merge ranks, newline runs apart, bytes as <0xXX>) gives HF tokenizers'
    ids on the conformance and tricky texts, also with merges that make one token from several pairs (as Gemma
    4's tokenizer.json has)."""
    import llama_cpp

    from tests.support.family_cases import case_config, conformance_texts, hf_encoder
    from tests.support.tokenizer_cases import TRICKY_TEXTS

    folder = tmp_path / "vocab"
    folder.mkdir()
    for f in tokenizer_folders("gemma-trained").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    assert _with_redundant_merges(folder) > 100
    (folder / "config.json").write_text(json.dumps(case_config(GEMMA4_E2B, folder)))
    convert(folder, tmp_path / "vocab.gguf", vocab_only=True)
    assert _fields(tmp_path / "vocab.gguf")["tokenizer.ggml.model"] == "gemma4"
    llm = llama_cpp.Llama(str(tmp_path / "vocab.gguf"), vocab_only=True, verbose=False)
    truth = hf_encoder(folder)
    texts = conformance_texts() + TRICKY_TEXTS
    mismatched = [t for t in texts if llm.tokenize(t.encode(), add_bos=False, special=False) != truth(t)]
    print(f"gemma4 tokenizer: {len(texts) - len(mismatched)}/{len(texts)} texts with identical ids")
    assert not mismatched, repr(mismatched[0])


# --- Gemma 3n ------------------------------------------------------------------------------------------------

GEMMA4_MOE = next(c for c in CASES if c.name == "gemma4-26b-a4b")
# ... and as Hub checkpoints of the 26B-A4B save it (Gemma4ForConditionalGeneration): its own random draw, checked too.
GEMMA4_MOES = [GEMMA4_MOE, next(c for c in CASES if c.name == "gemma4-26b-a4b-multimodal")]
# The smallest top-k logit gap over all tokens and layers, in units of how far the reference's router logits move
# between float32 and float64 arithmetic (the movement llama.cpp's own arithmetic shows too): routing at this margin
# is decided, not a coin flip. F16 rounds every matmul input to half, which moves the router's input ~4.5x more.
MIN_ROUTING_MARGIN = {"f32": 10.0, "f16": 4.0}


def _router_logits(model, ids):
    """Every layer's router logits (layers, tokens, experts), in float64."""
    import torch

    out = []
    hooks = [module.register_forward_hook(lambda _m, _a, o: out.append(o.detach().double()))
             for name, module in model.named_modules() if name.endswith("router.proj")]  # text model at any depth
    assert hooks, "no MoE router found"
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return torch.stack(out)


def _routing_margin(model, ids, k: int) -> tuple[float, float]:
    """(smallest gap between the k-th and (k+1)-th router logit, largest float32-vs-float64 movement of a router
    logit) over all tokens and layers."""
    narrow_logits, wide_logits = _router_logits(model, ids), _router_logits(float64_copy(model), ids)
    ranked = narrow_logits.sort(-1, descending=True).values
    return float((ranked[..., k - 1] - ranked[..., k]).min()), float((narrow_logits - wide_logits).abs().max())


@pytest.mark.parametrize("built", GEMMA4_MOES, indirect=True, ids=[c.name for c in GEMMA4_MOES])
def test_gemma4_moe_routing_is_decisive(built):
    """The MoE case's logits tests (test_families) mean something only if no token's expert choice is a near-tie
    that llama.cpp's arithmetic could flip: against both references (F32 with the table GELU, F16), the smallest
    top-k gap stays MIN_ROUTING_MARGIN times above the router logits' own float32-vs-float64 movement."""
    case, folder, ids, _ = built
    config = json.loads((folder / "model/config.json").read_text())
    k = int(config.get("text_config", config)["top_k_experts"])
    model = reload_float32(folder / "model")
    as_llama_cpp_computes(case, model)
    margins = {"f32": _routing_margin(model, ids, k)}
    half_precision_matmuls(model)
    margins["f16"] = _routing_margin(model, ids, k)
    print("gemma4 MoE routing: " + "; ".join(f"{o.upper()} min top-{k} gap {g:.2e}, float32-vs-float64 movement "
                                             f"{n:.2e} ({g / n:.1f}x)" for o, (g, n) in margins.items()))
    assert all(gap >= MIN_ROUTING_MARGIN[o] * moved for o, (gap, moved) in margins.items()), margins


@pytest.mark.parametrize("built", [GEMMA4_MOE], indirect=True, ids=[GEMMA4_MOE.name])
def test_gemma4_moe_block_reaches_the_gguf_in_expert_order(built, tmp_path):
    """Expert counts; expert e's gate / up from its rows of the fused gate_up_proj and its down_proj; the router
    scale and per-expert scales where llama.cpp reads them; fit plans the same tensors from config.json. Experts 0
    and 1 swapped in every layer, or the per-expert scales left at 1, move the logits far beyond the tolerance."""
    from safetensors.numpy import load_file

    from edgepack.fit import describe_config, describe_gguf

    case, folder, ids, references = built
    config = json.loads((folder / "model/config.json").read_text())
    path = tmp_path / "moe.gguf"
    convert(folder / "model", path, outtype="f32")
    kv = _fields(path)
    assert (kv["gemma4.expert_count"], kv["gemma4.expert_used_count"], kv["gemma4.expert_feed_forward_length"]) == (
        config["num_experts"], config["top_k_experts"], config["moe_intermediate_size"]) == (4, 2, 64)
    stored, hf = _tensors(path), load_file(folder / "model" / "model.safetensors")
    ff, n_layer = config["moe_intermediate_size"], config["num_hidden_layers"]
    for i in range(n_layer):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        fused, down = hf[p + "experts.gate_up_proj"], hf[p + "experts.down_proj"]
        assert np.array_equal(stored[b + "ffn_gate_exps.weight"], fused[:, :ff])
        assert np.array_equal(stored[b + "ffn_up_exps.weight"], fused[:, ff:])
        assert np.array_equal(stored[b + "ffn_down_exps.weight"], down)
        assert np.array_equal(stored[b + "ffn_gate_inp.weight"], hf[p + "router.proj.weight"])
        assert np.array_equal(stored[b + "ffn_gate_inp.scale"], hf[p + "router.scale"])
        assert np.array_equal(stored[b + "ffn_down_exps.scale"], hf[p + "router.per_expert_scale"])
        for gguf_norm, hf_norm in (("pre_ffw_norm_2", "pre_feedforward_layernorm_2"),
                                   ("post_ffw_norm_1", "post_feedforward_layernorm_1"),
                                   ("post_ffw_norm_2", "post_feedforward_layernorm_2")):
            assert np.array_equal(stored[f"{b}{gguf_norm}.weight"], hf[f"{p}{hf_norm}.weight"])
    planned, real = describe_config(config, "F32"), describe_gguf(path)
    assert {t.name: t.shape for t in planned.tensors} == {t.name: t.shape for t in real.tensors}
    assert (planned.n_expert, planned.n_expert_used) == (real.n_expert, real.n_expert_used) == (4, 2)

    good = compare(references["f32"], llama_cpp_logits(path, ids))
    swap = [1, 0, *range(2, config["num_experts"])]
    swapped = {f"blk.{i}.ffn_{part}_exps.weight": stored[f"blk.{i}.ffn_{part}_exps.weight"][swap]
               for i in range(n_layer) for part in ("gate", "up", "down")}
    unscaled = {f"blk.{i}.ffn_down_exps.scale": np.ones(config["num_experts"], np.float32) for i in range(n_layer)}
    moved = {"experts 0/1 swapped": compare(references["f32"], _logits_with(path, ids, swapped)),
             "per-expert scales at 1": compare(references["f32"], _logits_with(path, ids, unscaled))}
    print(f"gemma4 MoE: F32 max|Δ| {good[0]:.2e} top1 {good[1]:.0%}; broken on purpose: "
          + "; ".join(f"{k} max|Δ| {v[0]:.2e} top1 {v[1]:.0%}" for k, v in moved.items()))
    assert good[1] == 1.0 and good[0] <= case.tolerance["f32"]
    assert all(max_abs > 10 * case.tolerance["f32"] for max_abs, _ in moved.values()), moved


GEMMA3N_E2B = next(c for c in CASES if c.name == "gemma3n-e2b")


@pytest.mark.slow
@pytest.mark.parametrize("built", [GEMMA3N_E2B], indirect=True, ids=[GEMMA3N_E2B.name])
def test_gemma3n_kv_sharing_reads_layers_18_and_19(built, tmp_path):
    """The KV-shared layers (20-24) read layer 18's K/V (local) and 19's (global): changing layer 18's k weights
    moves the logits far beyond the tolerance, changing a shared layer's placeholder k weights changes nothing.
    Also: the AltUp projections are stacked in order, the per-layer embedding table is padded with token 0's row
    (padded with zeros instead, the tokens beyond it lose their per-layer input: far beyond the tolerance)."""
    from safetensors.numpy import load_file

    case, folder, ids, references = built
    path = tmp_path / "e2b.gguf"
    convert(folder / "model", path, outtype="f32")
    kv = _fields(path)
    assert kv["gemma3n.attention.shared_kv_layers"] == 5 and kv["gemma3n.embedding_length_per_layer_input"] == 256
    hf = load_file(folder / "model/model.safetensors")
    got = _tensors(path)
    for i in range(20, 25):
        source = 19 if (i + 1) % 5 == 0 else 18
        assert np.array_equal(got[f"blk.{i}.attn_k.weight"], hf[f"model.layers.{source}.self_attn.k_proj.weight"])
    assert np.array_equal(got["altup_proj.weight"], np.stack([hf[f"model.altup_projections.{j}.weight"]
                                                              for j in range(3)]))
    table, per_layer = got["per_layer_token_embd.weight"], hf["model.embed_tokens_per_layer.weight"]
    assert np.array_equal(table[:1024], per_layer) and (table[1024:] == per_layer[0]).all()
    assert max(ids) >= 1024  # the prompt has tokens beyond the per-layer table
    baseline = llama_cpp_logits(path, ids)
    assert compare(references["f32"], baseline)[0] <= case.tolerance["f32"]
    k17 = hf["model.layers.17.self_attn.k_proj.weight"]
    assert np.array_equal(_logits_with(path, ids, {"blk.22.attn_k.weight": k17}), baseline)
    zero_padded = np.where(np.arange(len(table))[:, None] < 1024, table, 0)
    moved = {"layer 18's k replaced by layer 17's": compare(
                 baseline, _logits_with(path, ids, {"blk.18.attn_k.weight": k17})),
             "per-layer table padded with zeros": compare(
                 references["f32"], _logits_with(path, ids, {"per_layer_token_embd.weight": zero_padded}))}
    print("gemma3n-e2b broken on purpose: " + "; ".join(f"{k} max|Δ| {v[0]:.2e} top1 {v[1]:.0%}"
                                                        for k, v in moved.items()))
    assert all(max_abs > 10 * case.tolerance["f32"] for max_abs, _ in moved.values()), moved


@pytest.mark.parametrize("built", [GEMMA3N_E2B], indirect=True, ids=[GEMMA3N_E2B.name])
def test_gemma3n_both_save_forms_convert_alike(built, tmp_path):
    """transformers 5 saves no k/v weights on KV-shared layers, Hub checkpoints have them (left out, reported);
    the multimodal class's names (model.language_model.*, towers left out) give the same tensors too."""
    from safetensors.numpy import load_file, save_file

    case, folder, ids, references = built
    convert(folder / "model", tmp_path / "ref.gguf", outtype="f32")
    reference = _tensors(tmp_path / "ref.gguf")
    tensors = load_file(folder / "model/model.safetensors")
    assert "model.layers.20.self_attn.k_proj.weight" not in tensors
    hub = dict(tensors)
    rng = np.random.default_rng(0)
    for i in range(20, 25):
        for name in ("k_proj.weight", "v_proj.weight", "k_norm.weight"):
            shape = tensors[f"model.layers.0.self_attn.{name}"].shape
            hub[f"model.layers.{i}.self_attn.{name}"] = rng.standard_normal(shape).astype(np.float32)
    multimodal = {n.replace("model.", "model.language_model.", 1): t for n, t in hub.items()}
    multimodal["model.vision_tower.timm_model.conv_stem.conv.weight"] = np.zeros((8, 3, 3, 3), np.float32)
    multimodal["model.embed_audio.embedding.weight"] = np.zeros((4, 8), np.float32)
    config = json.loads((folder / "model/config.json").read_text())
    wrapped = {"architectures": ["Gemma3nForConditionalGeneration"], "model_type": "gemma3n",
               "text_config": dict(config, model_type="gemma3n_text")}
    for layout, data, cfg in (("hub", hub, None), ("multimodal", multimodal, wrapped)):
        _relayout(folder / "model", tmp_path / layout, lambda n: n, cfg)
        save_file(data, tmp_path / layout / "model.safetensors")
        result = convert(tmp_path / layout, tmp_path / f"{layout}.gguf", outtype="f32")
        assert result.dropped["k/v weights of KV-shared layers (unused)"] == 15
        got = _tensors(tmp_path / f"{layout}.gguf")
        assert list(got) == list(reference), layout
        assert all(np.array_equal(got[n], reference[n]) for n in reference), layout
    assert set(result.dropped) == {"k/v weights of KV-shared layers (unused)", "vision tower", "audio tower"}
