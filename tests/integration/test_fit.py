"""The fit against llama.cpp: the memory model vs what llama.cpp allocates, the quant mix vs llama.cpp's quantizer,
projections of a real GGUF. (Picks on constructed cases and the `fit` command: tests/unit/test_fit.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.fit import (HostCalibration, compute_buffer_bytes, describe_config, describe_gguf, kv_cache_bytes,
                          memory_needed, project)
from edgepack.profiles import get_profile
from edgepack.quantize import quantize
from tests.support.tinymodels import TOKENIZERS, build_model, llama_cpp_buffers, real_config, shrink
from tests.unit.test_fit import _profile

pytestmark = pytest.mark.slow  # an 8-layer model built with transformers, quantized 4 ways (fit's logic: tests/unit)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """An 8-layer GQA Llama (vocab 32000, real SentencePiece tokenizer) as F16, Q8_0, Q4_K_M, Q4_0."""
    from edgepack.convert import convert

    root = tmp_path_factory.mktemp("fit")
    cfg = shrink(real_config("llama2_7b"), vocab_size=32000, layers=8, num_key_value_heads=2)
    build_model(cfg, root / "hf")
    shutil.copy(TOKENIZERS / "llama2-sentencepiece-llama2c" / "tokenizer.model", root / "hf" / "tokenizer.model")
    out = {"config": cfg}
    for t in ("f16", "q8_0"):
        out[t.upper()] = root / f"tiny-{t.upper()}.gguf"
        convert(root / "hf", out[t.upper()], outtype=t)
    for r in quantize(out["F16"], ["Q4_K_M", "Q4_0", "Q3_K_M", "Q5_K_M"], root / "q", threads=2):
        out[r.type] = r.output
    return out


@pytest.mark.parametrize("quant", ["F16", "Q8_0", "Q4_K_M", "Q4_0", "Q3_K_M", "Q5_K_M"])
def test_config_sizes_match_llama_cpp_quantizer_tensor_by_tensor(tiny, quant):
    real = describe_gguf(tiny[quant])
    planned = describe_config(tiny["config"], quant)
    got = {t.name: (t.type, t.size_bytes) for t in planned.tensors}
    for t in real.tensors:
        assert got[t.name] == (t.type, t.size_bytes), t.name
    assert planned.weight_bytes == real.weight_bytes


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx, n_batch, flash_attn", [
    (512, 512, False), (4096, 512, False), (4096, 128, False), (8192, 512, False), (8192, 1024, False),
    (4096, 512, True), (8192, 512, True)])
def test_memory_model_matches_llama_cpp_within_10_percent(tiny, n_ctx, n_batch, flash_attn):
    got = llama_cpp_buffers(tiny["Q4_K_M"], n_ctx, n_batch, flash_attn)
    model = describe_gguf(tiny["Q4_K_M"])
    kv = kv_cache_bytes(model, n_ctx, n_batch)
    compute = compute_buffer_bytes(model, n_ctx, n_batch, flash_attn)
    assert abs(kv - got["kv"]) <= 0.10 * got["kv"], (kv, got)
    assert abs(compute - got["compute"]) <= 0.10 * got["compute"], (compute, got)


def test_projection_scales_with_bandwidth_and_host_overhead(tiny, tmp_path):
    model = describe_gguf(tiny["Q4_K_M"])
    pixel = _profile(tmp_path, "pixel-bw", 4.0, get_profile("pixel-8").efficiency("cpu").value)
    pi = _profile(tmp_path, "pi-bw", 7.0, get_profile("raspberry-pi-5-8gb").efficiency("cpu").value,
                  base="raspberry-pi-5-8gb")
    assert not pixel.cpu_gweights_per_core_ghz and not pi.cpu_gweights_per_core_ghz
    a, b = project(model, pixel, floor=False), project(model, pi, floor=False)
    ratio = (pixel.bandwidth_gb_s.value * pixel.efficiency("cpu").value) / (
        pi.bandwidth_gb_s.value * pi.efficiency("cpu").value)
    assert a.tg_tokens_per_s / b.tg_tokens_per_s == pytest.approx(ratio, rel=1e-6)
    host = HostCalibration(tg_tokens_per_s=500.0, pp_tokens_per_s=2000.0, bandwidth_gb_s=10.0)
    c = project(model, pixel, host=host)
    assert c.tg_tokens_per_s < a.tg_tokens_per_s and c.overhead_ms_per_token > 0


BUFFER = re.compile(r"(\S+) model buffer size =\s+([\d.]+) MiB")


def _llama_cpp_model_buffers(path: Path) -> dict[str, float]:
    """llama.cpp's own model buffer sizes (bytes) when it loads ``path`` with llama.cpp's defaults (repacked CPU
    weights) and without mmap, as phone apps load: CPU, CPU_REPACK, ..."""
    code = f"import llama_cpp; llama_cpp.Llama({str(path)!r}, n_ctx=256, use_mmap=False, verbose=True).close()"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return {name: float(mib) * 2**20 for name, mib in BUFFER.findall(res.stderr)}


@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False])
def test_loaded_weights_match_llama_cpp_with_repacking_and_tied_embeddings(tmp_path, tied):
    """The weights llama.cpp really holds: a tied embedding is loaded twice when the CPU repacks the output's
    copy of it (here AVX2 repacks Q4_0 and Q4_K, not Q6_K or Q8_0), once otherwise. Within 1% of llama.cpp's
    CPU + CPU_REPACK buffers for every case, and the copy is what makes the difference."""
    import ctypes

    import llama_cpp
    import numpy as np

    from edgepack.bench import host_isa
    from edgepack.convert import convert
    from tests.support.quantmodels import llama_config, random_tensors, write_checkpoint

    isa = host_isa()
    cfg = llama_config(hidden=256, layers=2, intermediate=512, heads=4, tied=tied)
    write_checkpoint(tmp_path / "hf", cfg, random_tensors(cfg, np.random.default_rng(0)))
    convert(tmp_path / "hf", tmp_path / "F16.gguf", outtype="f16")
    copies = {}
    for name, ftype, pure in (("Q4_0-pure", 2, True), ("Q4_K_M", 15, False), ("Q8_0", 7, False)):
        out = tmp_path / f"{name}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.pure, params.nthread = ftype, pure, 2  # pure: the embedding is Q4_0 too
        assert llama_cpp.llama_model_quantize(str(tmp_path / "F16.gguf").encode(), str(out).encode(),
                                              ctypes.byref(params)) == 0
        got = sum(_llama_cpp_model_buffers(out).values())
        mem = memory_needed(describe_gguf(out), 256, backend="cpu", isa=isa)
        assert mem.loaded_weights_bytes == pytest.approx(got, rel=0.01), (name, mem, got)
        copies[name] = mem.tied_output_copy_bytes
    if not tied:
        assert set(copies.values()) == {0}
    elif "avx2" in isa:
        assert copies["Q4_0-pure"] > 0 and copies["Q4_K_M"] == 0 and copies["Q8_0"] == 0
