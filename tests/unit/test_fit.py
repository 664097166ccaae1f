"""The fit's decisions on constructed cases, its projections and the `fit` command, from config.json alone (no
llama.cpp: the memory model and quant mix against what llama.cpp allocates are tests/integration/test_fit.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.fit import Quality, Variant, describe_config, fit, kv_cache_bytes, project, token_floor_s
from edgepack.profiles import SHIPPED_DIR, get_profile, load_profile_file
from tests.support.tinymodels import real_config


def test_sliding_window_layers_hold_only_the_window():
    gemma3 = real_config("gemma3_1b_it")
    m = describe_config(gemma3, "Q4_K_M", "gemma3")
    assert m.n_swa == gemma3["sliding_window"] and sum(m.swa_layers) > 0
    full = kv_cache_bytes(m, 32768)
    per_layer_full = 32768 * m.n_head_kv * (m.head_dim_k + m.head_dim_v) * 2
    n_global = m.n_layer - sum(m.swa_layers)
    assert full < per_layer_full * (n_global + 0.2 * sum(m.swa_layers))
    assert full > per_layer_full * n_global


def _profile(tmp_path: Path, name: str, usable_gb: float, eff: float = 0.5, base: str = "pixel-8") -> object:
    """A shipped profile renamed, with this usable RAM and CPU efficiency and no core-speed bound: the
    constructed cases below are about the fit's decisions on a purely bandwidth-bound device."""
    text = (SHIPPED_DIR / f"{base}.toml").read_text().replace(f'name = "{base}"', f'name = "{name}"')
    text = text.replace("usable = { gb = 4.0", f"usable = {{ gb = {usable_gb}")
    text += f'\n[generation]\ncpu = {{ efficiency = {eff}, source = "this test case", kind = "estimate", note = "x" }}\n'
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return dataclasses.replace(load_profile_file(path), cpu_gweights_per_core_ghz={})


def _variant(config: dict, quant: str, kld: float | None) -> Variant:
    return Variant(describe_config(config, quant, "llama8b"), Quality(mean_kld=kld))


def test_fit_picks_best_quality_that_fits_and_says_why_others_lost(tmp_path):
    cfg = real_config("llama3_1_8b")
    q8, q4km, q4_0, q3 = (_variant(cfg, "Q8_0", 0.002), _variant(cfg, "Q4_K_M", 0.02), _variant(cfg, "Q4_0", 0.04),
                          _variant(cfg, "Q3_K_M", 0.09))
    phone = _profile(tmp_path, "phone-6gb", 6.0)
    res = fit([q8, q4km, q4_0, q3], [phone], n_ctx=2048, max_kld=0.05, min_tps=3)
    verdict = {r.variant: r.verdict for r in res.rows}
    assert res.picks["phone-6gb"] == "llama8b-Q4_K_M"
    assert verdict["llama8b-Q8_0"].startswith("too big by ")
    assert "too lossy" in verdict["llama8b-Q3_K_M"]
    assert verdict["llama8b-Q4_0"] == "lower quality than llama8b-Q4_K_M"
    # a speed floor the 4-bit files cannot meet on this bandwidth leaves only the smaller, lossy one -> refused
    slow = fit([q8, q4km, q4_0, q3], [phone], n_ctx=2048, max_kld=0.05, min_tps=9)
    assert slow.picks["phone-6gb"] is None and "too slow" in slow.summary["phone-6gb"]
    tiny_phone = _profile(tmp_path, "phone-1gb", 1.0)
    none = fit([q8, q4km], [tiny_phone], n_ctx=2048)
    assert none.picks["phone-1gb"] is None and none.summary["phone-1gb"].startswith("nothing fits")


def test_ties_in_quality_go_to_the_faster_variant(tmp_path):
    cfg = real_config("llama3_2_1b")
    a, b = _variant(cfg, "Q4_0", 0.01), _variant(cfg, "Q8_0", 0.01)
    res = fit([a, b], [_profile(tmp_path, "phone-8gb", 8.0)], n_ctx=1024)
    assert res.picks["phone-8gb"] == "llama8b-Q4_0"
    assert {r.variant: r.verdict for r in res.rows}["llama8b-Q8_0"].startswith("same quality, slower")


def test_a_tiny_model_is_held_to_the_per_token_floor():
    """The demo's 2.9M-parameter model: without a floor the bandwidth roofline projects tens of thousands of
    tokens/s on a Mac GPU; with the per-token floor it stays below 1 / floor on every backend of every profile."""
    from edgepack.profiles import load_profiles

    demo = describe_config(real_config("llama2_7b") | {"hidden_size": 128, "intermediate_size": 384,
                                                       "num_hidden_layers": 4, "num_attention_heads": 4,
                                                       "num_key_value_heads": 4, "vocab_size": 4096}, "Q8_0", "demo")
    assert demo.weight_bytes < 5e6
    m1 = get_profile("macbook-pro-m1-max")
    assert project(demo, m1, "metal", floor=False).tg_tokens_per_s > 20_000  # what the report used to show
    for profile in load_profiles().values():
        for backend in profile.backends:
            p = project(demo, profile, backend)
            assert p.tg_tokens_per_s < 1 / token_floor_s(demo, backend) < 5_000, (profile.name, backend)


def test_cpu_projection_is_bounded_by_the_cores():
    """With [generation_compute.cpu], CPU generation takes the longer of streaming the bytes and processing the
    weights on the profile's threads; GPU backends are not bounded by it."""
    model = describe_config(real_config("llama3_1_8b"), "Q4_K_M", "llama8b")
    for name in ("raspberry-pi-5-8gb", "pixel-8", "jetson-agx-orin-64gb"):
        profile = get_profile(name)
        rate = profile.cpu_weights_rate(model.quant_family, model.quant_key).value
        kv_bytes = project(model, profile).bytes_per_token
        memory_s = kv_bytes / (profile.bandwidth_gb_s.value * 1e9 * profile.efficiency("cpu").value)
        cores_s = model.matmul_params / (rate * 1e9 * profile.core_ghz())
        floor = token_floor_s(model, "cpu")
        assert project(model, profile, "cpu").tg_tokens_per_s == pytest.approx(1 / (max(memory_s, cores_s) + floor),
                                                                                 rel=1e-9)
    agx = get_profile("jetson-agx-orin-64gb")  # 204.8 GB/s, but 12 A78AE cores: the cores set the pace
    cpu, cuda = project(model, agx, "cpu"), project(model, agx, "cuda")
    assert cpu.tg_tokens_per_s < 0.5 * agx.bandwidth_gb_s.value * 1e9 * agx.efficiency("cpu").value / cpu.bytes_per_token
    assert cuda.tg_tokens_per_s == pytest.approx(1 / (
        cuda.bytes_per_token / (agx.bandwidth_gb_s.value * 1e9
                                * agx.efficiency("cuda", model.quant_family, model.quant_key).value)
        + token_floor_s(model, "cuda")), rel=1e-9)


def test_fit_cli_config_mode_json(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(real_config("llama3_1_8b")))
    res = subprocess.run([sys.executable, "-m", "edgepack", "fit", "--config", str(cfg), "--quant", "Q4_K_M",
                          "--quant", "Q8_0", "-p", "pixel-8", "-p", "macbook-pro-m3-pro", "--json"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    rows = {(r["variant"], r["profile"]): r for r in out["rows"]}
    q4 = rows[(cfg.parent.name + "-Q4_K_M", "pixel-8")]
    assert set(q4["memory"]) >= {"weights_mb", "kv_cache_mb", "compute_mb", "output_mb", "overhead_mb"}
    # Llama-3.1-8B Q4_K_M is 4.58 GiB (4.92 GB) as published by llama.cpp's quantizer
    assert 4.8e3 < q4["memory"]["weights_mb"] < 5.0e3
    assert out["picks"]["pixel-8"] is None and out["picks"]["macbook-pro-m3-pro"].endswith("Q8_0")
    bad = subprocess.run([sys.executable, "-m", "edgepack", "fit", "--config", str(cfg), "-p", "pixel-8"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--quant" in bad.stderr


def test_fit_threads_scale_cpu_speed_and_are_recorded(tmp_path):
    """--threads N: the app's thread count; CPU speeds follow the clocks of that many cores (fastest first),
    the setting is in the JSON, and a bad value is a usage error."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(real_config("llama3_2_1b")))

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "edgepack", "fit", "--config", str(cfg), "--quant", "Q4_0",
                               "-p", "galaxy-s23", "--json", *extra], capture_output=True, text=True)

    rows = {}
    for n in (1, 2, 8):
        res = run("--threads", str(n))
        assert res.returncode == 0, res.stderr
        [rows[n]] = json.loads(res.stdout)["rows"]
        assert rows[n]["settings"]["threads"] == n
    profile = get_profile("galaxy-s23")
    ratio = profile.core_ghz(2) / profile.core_ghz(1)
    assert rows[2]["pp_tokens_per_s"] / rows[1]["pp_tokens_per_s"] == pytest.approx(ratio, rel=0.02)
    assert rows[1]["tg_tokens_per_s"] < rows[2]["tg_tokens_per_s"] <= rows[8]["tg_tokens_per_s"]
    assert rows[8]["pp_tokens_per_s"] > rows[2]["pp_tokens_per_s"]
    bad = run("--threads", "0")
    assert bad.returncode == 2 and "threads" in bad.stderr and "Traceback" not in bad.stderr


def test_fit_backends_opencl_hexagon_auto_and_the_recommendation(tmp_path):
    """--backend opencl|hexagon on a Snapdragon profile that has them, auto = the fastest that fits, and every row
    lists each backend's projection with the recommended one; a profile without the backend keeps its default."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(real_config("llama3_2_1b")))

    def rows(*extra):
        res = subprocess.run([sys.executable, "-m", "edgepack", "fit", "--config", str(cfg), "--quant", "Q4_0",
                              "--quant", "Q8_0", "-p", "galaxy-s23", "-p", "pixel-8", "--json", *extra],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return {(r["profile"], r["variant"].rsplit("-", 1)[-1]): r for r in json.loads(res.stdout)["rows"]}

    for backend in ("opencl", "hexagon"):
        got = rows("--backend", backend)
        s23 = got[("galaxy-s23", "Q4_0")]
        assert s23["backend"] == backend == s23["settings"]["backend"]
        assert set(s23["by_backend"]) == {"cpu", "opencl", "hexagon"}
        assert s23["tg_tokens_per_s"] == s23["by_backend"][backend]["tg_tokens_per_s"]
        assert got[("pixel-8", "Q4_0")]["backend"] == "cpu"  # no such backend there: its default
    auto = rows("--backend", "auto")
    for (profile, quant), r in auto.items():
        best = r["best_backend"]
        assert r["backend"] == best
        fitting = [b for b, v in r["by_backend"].items() if v["fits"]]
        assert r["by_backend"][best]["tg_tokens_per_s"] == max(r["by_backend"][b]["tg_tokens_per_s"] for b in fitting)
    # the S23's NPU reads a Q4_0 prompt several times faster than its CPU (PocketPal's S23: 301 vs 118 tok/s)
    s23 = auto[("galaxy-s23", "Q4_0")]["by_backend"]
    assert s23["hexagon"]["pp_tokens_per_s"] > 2 * s23["cpu"]["pp_tokens_per_s"]


def test_fit_config_from_a_hub_repo_fetches_only_config_json(tmp_path):
    """`fit --config org/name` against the loopback Hub (tests/support/hubserver.py): config.json only, no weights."""
    from tests.support.hubserver import HubServer

    cfg = real_config("llama3_1_8b")
    with HubServer() as server:
        server.add_commit("org/llama-8b", {"config.json": json.dumps(cfg), "model.safetensors": b"\0" * 2_000_000,
                                           "tokenizer.json": "{}", "README.md": "# x\n"})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
        env.update(HF_ENDPOINT=server.endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
        run = lambda *a: subprocess.run([sys.executable, "-m", "edgepack", "fit", *a],  # noqa: E731
                                        capture_output=True, text=True, env=env, timeout=120)
        res = run("--config", "org/llama-8b", "--quant", "Q4_K_M", "-p", "pixel-8", "--json")
        assert res.returncode == 0, res.stderr
        assert server.downloaded() == ["config.json"]
        row = json.loads(res.stdout)["rows"][0]
        assert row["variant"] == "llama-8b-Q4_K_M" and 4.8e3 < row["memory"]["weights_mb"] < 5.0e3
        missing = run("--config", "org/nope", "--quant", "Q4_K_M", "-p", "pixel-8")
        assert missing.returncode == 7 and "Traceback" not in missing.stderr and "org/nope" in missing.stderr
        # offline, the cached config.json answers without the server
        env["HF_HUB_OFFLINE"] = "1"
        before = len(server.requests())
        again = run("--config", "org/llama-8b", "--quant", "Q8_0", "-p", "pixel-8", "--json")
        assert again.returncode == 0, again.stderr
        assert len(server.requests()) == before


def test_tied_embedding_copy_follows_the_isa_and_backend():
    """Qwen2.5-1.5B (tied, Q6_K embedding for Q4_K_M): on an ARM phone with dotprod/i8mm the CPU repacks Q6_K, so
    the output gets its own copy (the embedding's 6-32% the fit used to miss); on AVX2 it does not; a GPU backend
    holding the output always gets one."""
    from edgepack.fit import tied_output_copy_bytes

    typed = json.loads((Path(__file__).parents[2] / "benchmarks" / "data" / "typed_configs.json").read_text())
    qwen = describe_config(typed["qwen2_5_1_5b"], "Q4_K_M", "qwen")
    embd = next(t for t in qwen.tensors if t.name == "token_embd.weight")
    assert qwen.tied_embeddings and embd.type == "Q6_K"
    assert tied_output_copy_bytes(qwen, "cpu", ("neon", "dotprod", "i8mm")) == embd.size_bytes
    assert tied_output_copy_bytes(qwen, "cpu", ("avx2",)) == 0
    assert tied_output_copy_bytes(qwen, "opencl", ("neon", "dotprod")) == embd.size_bytes
    assert 0.06 < embd.size_bytes / qwen.weight_bytes < 0.35
