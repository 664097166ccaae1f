"""edgepack eval: PPL, KL divergence, top-1 agreement of quantized models against their F16 source.

The ordering test needs a model whose next-token distributions mean something. A random model (std-0.05
weights, like tinymodels') is almost uniform over 32000 tokens: its perplexity on English is ~41,000 (worse
than uniform), its argmax flips under any noise (Q4_K_M agrees with F16 on 50% of positions), and while its KLD
still grows with fewer bits, "top-1 agreement" and "ΔPPL" measure nothing. So the tests use
``quantmodels.bigram_llama``: embeddings and output matrix are a closed-form rank-256 factorisation of War
and Peace's log bigram table (no training needed), transformer blocks random and small. Its F16 perplexity on
a passage it was not built from is ~800 (uniform: 32000), and its distributions are peaked (top token ~15%).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepack.cli import main
from edgepack.convert import convert
from edgepack.evaluate import builtin_text, evaluate_many, open_llama, read_text
from edgepack.quantize import quantize
from tests.support.quantmodels import WAR_AND_PEACE, bigram_llama

CTX = 128
TYPES = ["Q8_0", "Q6_K", "Q4_K_M", "Q2_K"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    f16 = convert(bigram_llama(root / "wp"), root / "wp-F16.gguf", outtype="f16").output
    out = {r.type: r.output for r in quantize(f16, TYPES, root, threads=2)}
    out["F16"] = f16
    return out


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """~1,100 tokens of the built-in passage (Book Ten; the model was built from the book's first 400k chars)."""
    path = tmp_path_factory.mktemp("text") / "passage.txt"
    path.write_text(builtin_text()[:4500], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def results(models, text):
    return {r.model.name: r for r in evaluate_many([models[t] for t in [*TYPES, "F16"]], models["F16"], text=text,
                                                   ctx=CTX, threads=1)}


@pytest.mark.slow
def test_quality_measures_are_ordered(results, models):
    r = {t: results[models[t].name] for t in [*TYPES, "F16"]}
    for t in TYPES:
        print(f"{t:7s} PPL {r[t].ppl:9.3f} (ref {r[t].ref_ppl:.3f})  KLD {r[t].mean_kld:.6f} ± {r[t].mean_kld_err:.6f}"
              f"  top-1 {100 * r[t].top1_agreement:.2f}%  n={r[t].n_scored}")
    assert r["F16"].ref_ppl < 32000 / 16  # the model predicts the text: far better than uniform over the vocab
    assert r["F16"].n_scored == r["F16"].n_chunks * (CTX - 1 - CTX // 2) >= 400
    # the source against itself: exactly no divergence
    assert r["F16"].mean_kld == 0.0 and r["F16"].top1_agreement == 1.0 and r["F16"].delta_ppl == 0.0
    for better, worse in zip(TYPES, TYPES[1:]):
        a, b = r[better], r[worse]
        assert a.mean_kld + 3 * a.mean_kld_err < b.mean_kld - 3 * b.mean_kld_err, (better, worse)
        assert a.top1_agreement > b.top1_agreement, (better, worse)
        assert a.p99_kld < b.p99_kld
    assert r["Q8_0"].mean_kld < 0.01 and r["Q8_0"].top1_agreement > 0.9
    assert abs(r["Q8_0"].delta_ppl) < r["Q2_K"].delta_ppl
    assert r["Q2_K"].ln_ppl_ratio > 3 * r["Q2_K"].ln_ppl_ratio_err  # Q2_K is measurably worse than its source


@pytest.mark.slow
def test_matches_an_independent_computation(results, models, text):
    """Recompute one model's measures with torch from llama.cpp's raw logits, chunked as llama-perplexity does."""
    import torch

    got = results[models["Q4_K_M"].name]

    def raw_logits(path: Path) -> tuple[list[np.ndarray], list[list[int]]]:
        with open_llama(path, n_ctx=CTX, n_batch=CTX, n_ubatch=CTX, logits_all=True, n_threads=1,
                        n_threads_batch=1) as llm:
            tokens = llm.tokenize(text.read_text(encoding="utf-8").encode(), add_bos=True)
            chunks = [[llm.token_bos()] + tokens[i * CTX + 1:(i + 1) * CTX] for i in range(len(tokens) // CTX)]
            out = []
            for chunk in chunks:
                llm.reset()
                llm.eval(chunk)
                out.append(np.array(llm.scores[:CTX], dtype=np.float64))
        return out, chunks

    ref, chunks = raw_logits(models["F16"])
    q, _ = raw_logits(models["Q4_K_M"])
    first = CTX // 2
    nll, ref_nll, kld, same = [], [], [], []
    for p_logits, q_logits, chunk in zip(ref, q, chunks):
        lp = torch.log_softmax(torch.tensor(p_logits[first:CTX - 1]), -1)
        lq = torch.log_softmax(torch.tensor(q_logits[first:CTX - 1]), -1)
        target = torch.tensor(chunk[first + 1:])
        nll.append(torch.nn.functional.nll_loss(lq, target, reduction="none"))
        ref_nll.append(torch.nn.functional.nll_loss(lp, target, reduction="none"))
        kld.append(torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1))
        same.append(lp.argmax(-1) == lq.argmax(-1))
    nll, ref_nll, kld, same = (torch.cat(x) for x in (nll, ref_nll, kld, same))
    assert got.n_scored == len(kld) and got.n_chunks == len(chunks)
    assert got.mean_kld == pytest.approx(float(kld.mean()), rel=1e-4)
    assert got.ppl == pytest.approx(float(torch.exp(nll.mean())), rel=1e-5)
    assert got.ref_ppl == pytest.approx(float(torch.exp(ref_nll.mean())), rel=1e-5)
    assert got.top1_agreement == pytest.approx(float(same.float().mean()), abs=1 / len(same))


def test_cli_prints_ppl_kld_top1(capsys, models, text):
    main(["eval", str(models["Q4_K_M"]), "--ref", str(models["F16"]), "--text", str(text), "--ctx", "64",
          "--threads", "1"])
    out = capsys.readouterr().out
    assert "PPL" in out and "mean KLD" in out and "top-1 agree" in out and models["Q4_K_M"].name in out
    main(["eval", str(models["Q8_0"]), "--ref", str(models["F16"]), "--text", str(text), "--ctx", "64",
          "--threads", "1", "--json"])
    [payload] = json.loads(capsys.readouterr().out)
    assert {"ppl", "ref_ppl", "delta_ppl", "mean_kld", "top1_agreement", "n_scored"} <= set(payload)
    assert payload["ctx"] == 64 and payload["n_scored"] == payload["n_chunks"] * 31


def test_builtin_text_is_packaged_and_public_domain_source():
    text = builtin_text()
    assert len(text) > 20000 and text.startswith("CHAPTER XXII")
    assert text.strip() in WAR_AND_PEACE.read_text(encoding="utf-8")


def test_default_text_is_the_builtin_one():
    text, label = read_text(None)
    assert text == builtin_text() and label.startswith("built-in")


def refused(capsys, *argv: str, code: int, words: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == code and len(err) == 1 and err[0].startswith("error: "), err
    assert words.lower() in err[0].lower(), err[0]


def test_bad_inputs(capsys, models, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    q, ref = str(models["Q8_0"]), str(models["F16"])
    refused(capsys, "eval", q, "--ref", ref, "--text", str(short), code=2, words="only")
    refused(capsys, "eval", q, "--ref", ref, "--text", str(tmp_path / "none.txt"), code=2, words="does not exist")
    refused(capsys, "eval", q, "--ref", ref, "--ctx", "7", code=2, words="--ctx")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    refused(capsys, "eval", q, "--ref", ref, "--text", str(tmp_path / "latin1.txt"), code=2, words="not UTF-8")
    (tmp_path / "x.gguf").write_text("not a model")
    refused(capsys, "eval", q, "--ref", str(tmp_path / "x.gguf"), code=8, words="not a GGUF")
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(models["Q8_0"].read_bytes()[:-1000])
    refused(capsys, "eval", str(truncated), "--ref", ref, code=8, words="truncated")
