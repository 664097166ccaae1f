"""Per-family agreement table: every architecture family's tiny checkpoint converted and run in llama.cpp
against transformers (logits) and Hugging Face tokenizers (token ids).

    .venv/bin/python -m benchmarks.families [--spread] [CASE ...]      (all cases, or only those named)

Columns: F32 max|Δ| and top-1 against transformers computing as llama.cpp does by design (ggml's FP16-table
GELU for the GELU families; for F16 also weights and matmul inputs rounded to half), the same against plain
transformers, and the share of the 83 multilingual conformance texts whose ids are identical. Cases and
tokenizers are those of tests/fidelity/test_families.py (tests/support/family_cases.py). --spread adds how far
each reference moves between float32 and float64 arithmetic (the same roundings by design): below that, llama.cpp's
difference says nothing about the conversion. Needs torch/transformers (test extra).

    .venv/bin/python -m benchmarks.families --hybrid-convert [--llama-cpp DIR] [--repeats 3] [--workdir DIR]

Convert time and peak RSS for a ~0.5B LFM2-shaped hybrid (short convolutions + GQA, random BF16 weights written
by numpy, GPT-2's tokenizer), edgepack's CLI beside llama.cpp's own converter
(convert_hf_to_gguf.py of the llama.cpp that llama-cpp-python 0.3.36 vendors: DIR is its vendor/llama.cpp,
downloaded with `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36` and unpacked into the
workdir when not given; it is only run, never imported here). Both run as fresh processes on the same warm
files, in alternating order, to BF16 and to F16; wall time is the process's, peak RSS its VmHWM at exit.
Prints the ratios; exits 1 unless edgepack is at or below 0.5x llama.cpp's time and RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from edgepack.convert import convert
from tests.support.family_cases import (CASES, as_llama_cpp_computes, build_tokenizer, case_config, conformance_texts,
                                        half_precision_matmuls, hf_encoder, prompt_ids, reference_spread)
from tests.support.tinymodels import (build_model, compare, hf_logits, llama_cpp_logits, real_config,
                                      synthetic_checkpoint)


def token_agreement(folder: Path, work: Path) -> tuple[int, int]:
    import llama_cpp

    convert(folder, work / "vocab.gguf", vocab_only=True, force=True)
    llm = llama_cpp.Llama(str(work / "vocab.gguf"), vocab_only=True, verbose=False)
    truth = hf_encoder(folder)
    texts = conformance_texts()
    same = sum(llm.tokenize(t.encode(), add_bos=False, special=False) == truth(t) for t in texts)
    return same, len(texts)


def agreement_table(names: list[str], spread: bool = False) -> None:
    rows, spreads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizers: dict[str, Path] = {}
        for case in [c for c in CASES if not names or c.name in names]:
            if case.tokenizer not in tokenizers:
                tokenizers[case.tokenizer] = build_tokenizer(case.tokenizer, root / f"tok-{case.tokenizer}")
            tok = tokenizers[case.tokenizer]
            folder = root / case.name
            config = case_config(case, tok)
            model = build_model(config, folder / "model", unscaled_attention=case.unscaled_attention,
                                stds=case.init_std, seed=case.seed)
            for f in tok.iterdir():
                shutil.copy(f, folder / "model" / f.name)
            ids = prompt_ids(case, folder / "model")
            plain = hf_logits(model, ids)
            ref32 = hf_logits(model, ids) if as_llama_cpp_computes(case, model) else plain
            spread32 = reference_spread(model, ids, ref32) if spread else None
            half_precision_matmuls(model)
            ref16 = hf_logits(model, ids)
            if spread:
                spreads.append((case.name, spread32, reference_spread(model, ids, ref16)))
            convert(folder / "model", folder / "f32.gguf", outtype="f32")
            convert(folder / "model", folder / "f16.gguf", outtype="f16")
            got32, got16 = llama_cpp_logits(folder / "f32.gguf", ids), llama_cpp_logits(folder / "f16.gguf", ids)
            same, total = token_agreement(folder / "model", folder)
            rows.append((case.name, config["architectures"][0], case.tokenizer, compare(ref32, got32),
                         compare(plain, got32), compare(ref16, got16), compare(plain, got16), same, total,
                         case.gelu_table))
    print("| case | HF class | tokenizer | F32 max\\|Δ\\| | F32 top-1 | F32 vs plain | F16 max\\|Δ\\| | F16 top-1 "
          "| F16 vs plain (top-1) | token ids identical |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, cls, tok, (a32, t32), (p32, _), (a16, t16), (p16, pt16), same, total, gelu in rows:
        mark = " ¹" if gelu else ""
        print(f"| {name}{mark} | {cls} | {tok} | {a32:.1e} | {t32:.0%} | {p32:.1e} | {a16:.1e} | {t16:.0%} "
              f"| {p16:.1e} ({pt16:.0%}) | {same}/{total} |")
    print("\n¹ GELU family: the reference runs ggml's FP16-table GELU (llama.cpp's kernel by design).")
    if spread:
        print("\n| case | reference F32: float32 vs float64 max\\|Δ\\| | reference F16: float32 vs float64 |")
        print("|---|---|---|")
        for name, s32, s16 in spreads:
            print(f"| {name} | {s32:.1e} | {s16:.1e} |")
    print(json.dumps({"sequence_tokens": len(ids)}))


# LFM2-shaped, ~0.48B parameters: LFM2-1.2B's config (block_ff_dim rule, conv_L_cache 3) at the LFM2-350M width
# and 24 layers, 9 of them attention; GPT-2's tokenizer.json (50257), a byte-level BPE both converters know
# (llama.cpp's converter reads LFM2 vocabularies as BPE and recognises this one's pre-tokenizer).
HYBRID = dict(real_config("lfm2_1.2b"), hidden_size=1024, block_dim=1024, conv_dim=1024, conv_dim_out=1024,
              num_attention_heads=16, num_heads=16, head_dim=64, num_key_value_heads=8, num_hidden_layers=24,
              block_ff_dim=6912, full_attn_idxs=[2, 5, 8, 10, 12, 14, 17, 20, 22], vocab_size=50257,
              tie_embedding=True)
SDIST = "llama-cpp-python==0.3.36"
TARGET_RATIO = 0.5
# Run a script or module as __main__ and report the process's peak RSS (VmHWM) on stderr at exit.
WRAPPER = r"""
import atexit, runpy, sys
def peak():
    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))
    sys.stderr.write('\nPEAK_RSS_BYTES %d\n' % (int(hwm.split()[1]) * 1024))
atexit.register(peak)
target, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(target[2:], run_name='__main__', alter_sys=True) if target.startswith('-m') else \
    runpy.run_path(target, run_name='__main__')
"""


def llama_cpp_source(given: Path | None, workdir: Path) -> Path:
    """vendor/llama.cpp of llama-cpp-python 0.3.36's source distribution (downloaded when not given)."""
    if given:
        if not (given / "convert_hf_to_gguf.py").is_file():
            sys.exit(f"{given} has no convert_hf_to_gguf.py: give the sdist's vendor/llama.cpp folder")
        return given
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                    "-d", str(workdir)], check=True, capture_output=True)
    archive = next(workdir.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    return next(workdir.glob("llama_cpp_python-*/vendor/llama.cpp"))


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS of ``python -c WRAPPER TARGET ARGS...``."""
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{cmd[3]} failed:\n{done.stderr[-3000:]}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_BYTES ")]
    return seconds, int(peak[-1].split()[1])


def warm(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as handle:
            while handle.read(1 << 24):
                pass


def hybrid_convert(llama_cpp: Path | None, repeats: int, workdir: Path | None) -> bool:
    work = Path(tempfile.mkdtemp(prefix="edgepack-hybrid-", dir=workdir))
    try:
        src = synthetic_checkpoint(work / "model", HYBRID, dtype="BF16")
        build_tokenizer("gpt2", src)
        llama_dir = llama_cpp_source(llama_cpp, work)
        repo = Path(__file__).resolve().parents[1]
        ours_env = dict(os.environ, PYTHONPATH=str(repo))
        theirs_env = dict(os.environ, PYTHONPATH=str(llama_dir / "gguf-py"))
        size_gb = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e9
        print(f"checkpoint: LFM2-shaped, {size_gb:.2f} GB BF16 safetensors; llama.cpp converter: {llama_dir}; "
              f"{repeats} repeats, medians")
        rows, ok = [], True
        for outtype in ("bf16", "f16"):
            out = work / "out.gguf"
            ours_cmd = [sys.executable, "-c", WRAPPER, "-medgepack", "convert", str(src), "-o", str(out),
                        "--outtype", outtype, "--force"]
            theirs_cmd = [sys.executable, "-c", WRAPPER, str(llama_dir / "convert_hf_to_gguf.py"), str(src),
                          "--outfile", str(out), "--outtype", outtype]
            ours, theirs = [], []
            for i in range(repeats):
                for who in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")):
                    warm(src)
                    if who == "ours":
                        ours.append(timed(ours_cmd, ours_env, repo))
                    else:
                        theirs.append(timed(theirs_cmd, theirs_env, llama_dir))
                    out.unlink()
            o_s, t_s = statistics.median(s for s, _ in ours), statistics.median(s for s, _ in theirs)
            o_rss, t_rss = max(r for _, r in ours), max(r for _, r in theirs)
            rows.append((outtype, o_s, t_s, o_rss, t_rss))
            ok &= o_s / t_s <= TARGET_RATIO and o_rss / t_rss <= TARGET_RATIO
        print("| outtype | edgepack s | llama.cpp s | time ratio | edgepack peak RSS MB | llama.cpp peak RSS MB "
              "| RSS ratio |")
        print("|---|---|---|---|---|---|---|")
        for outtype, o_s, t_s, o_rss, t_rss in rows:
            print(f"| {outtype} | {o_s:.1f} | {t_s:.1f} | {o_s / t_s:.2f} | {o_rss / 1e6:.0f} | {t_rss / 1e6:.0f} "
                  f"| {o_rss / t_rss:.2f} |")
        print(f"target (edgepack <= {TARGET_RATIO}x llama.cpp's time and peak RSS):", "met" if ok else "NOT met")
        return ok
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help="family cases for the agreement table (default: all)")
    parser.add_argument("--hybrid-convert", action="store_true", help="the hybrid convert benchmark instead")
    parser.add_argument("--llama-cpp", type=Path, help="vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--spread", action="store_true",
                        help="also the references' own float32-vs-float64 spread (their floor) per case")
    args = parser.parse_args()
    if args.hybrid_convert:
        sys.exit(0 if hybrid_convert(args.llama_cpp, args.repeats, args.workdir) else 1)
    agreement_table(args.cases, args.spread)


if __name__ == "__main__":
    main()
