"""edgepack bench on a tiny model: sane numbers, per-model RSS, JSON the fit can use."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgepack.bench import bench, measure_bandwidth_gb_s
from edgepack.evaluate import evaluate
from edgepack.fit import describe_gguf, variants_from_bench
from tests.support.tinymodels import TEXTS, TOKENIZERS, build_model, real_config, shrink


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    from edgepack.convert import convert

    root = tmp_path_factory.mktemp("bench")
    build_model(shrink(real_config("llama2_7b"), vocab_size=32000), root / "hf")
    shutil.copy(TOKENIZERS / "llama2-sentencepiece-llama2c" / "tokenizer.model", root / "hf" / "tokenizer.model")
    out = {}
    for t in ("f16", "q8_0"):
        out[t] = root / f"tiny-{t}.gguf"
        convert(root / "hf", out[t], outtype=t)
    return out


def test_host_bandwidth_is_measured():
    bw = measure_bandwidth_gb_s(size_mb=64, reps=3)
    assert 0.5 < bw < 2000


@pytest.mark.slow
def test_bench_tiny_models(ggufs, tmp_path):
    # A short eval text keeps the test fast: the quality figures are edgepack.evaluate's either way.
    text = tmp_path / "text.txt"
    text.write_text((TEXTS / "war-and-peace.txt").read_text(encoding="utf-8")[20000:24000])
    result = bench([ggufs["q8_0"], ggufs["f16"]], ref=ggufs["f16"], n_prompt=64, n_gen=16, reps=2, threads=2,
                   eval_ctx=128, eval_text=text)
    q8, f16 = result.models
    # quality is edgepack.evaluate's: the reference against itself is exact, Q8_0 differs a little
    assert f16.quality["mean_kld"] == pytest.approx(0, abs=1e-6) and f16.quality["top1_agreement"] == 1.0
    assert f16.quality["delta_ppl"] == pytest.approx(0, abs=1e-6)
    assert 0 < q8.quality["mean_kld"] < 0.05 and q8.quality["ppl"] > 1
    direct = evaluate(ggufs["q8_0"], ggufs["f16"], text=text, ctx=128, threads=2)
    assert q8.quality["mean_kld"] == pytest.approx(direct.mean_kld, rel=1e-6)
    assert q8.quality["top1_agreement"] == pytest.approx(direct.top1_agreement)
    assert "ctx 128" in result.quality_note
    for m in result.models:
        assert m.pp.min > 0 and m.tg.min > 0 and m.pp.min <= m.pp.median <= m.pp.max
        assert len(m.tg.runs) == 2
        assert 0 < m.load_s.median < 60
        # the child's peak RSS holds at least the weights it paged in, and is far below a leak
        assert m.size_bytes / 2**20 * 0.5 < m.peak_rss_mb < 2048
    assert q8.bits_per_weight == pytest.approx(8.5, abs=0.3) and f16.bits_per_weight == pytest.approx(16, abs=0.1)
    assert q8.size_bytes < f16.size_bytes
    assert f16.peak_rss_mb > q8.peak_rss_mb - 5  # per-model RSS: the bigger file is not hidden by the smaller
    data = result.to_dict()
    assert data["host"]["bandwidth_gb_s"] > 0
    (tmp_path / "b.json").write_text(json.dumps(data))
    cal = variants_from_bench(json.loads((tmp_path / "b.json").read_text()))
    quality, host = cal[str(ggufs["q8_0"].resolve())]
    assert quality.mean_kld == q8.quality["mean_kld"] and quality.top1_agreement == q8.quality["top1_agreement"]
    assert host.tg_tokens_per_s == q8.tg.median
    assert host.per_token_overhead_s(describe_gguf(ggufs["q8_0"])) >= 0


def test_bench_cli_errors_cleanly(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf")
    res = subprocess.run([sys.executable, "-m", "edgepack", "bench", str(bad)], capture_output=True, text=True)
    assert res.returncode == 8 and "Traceback" not in res.stderr
