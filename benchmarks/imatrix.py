"""Importance-matrix collection vs a plain forward pass over the same tokens, with the same library, in one run.

Generates a Llama checkpoint (numpy + safetensors, no torch; hidden 1024, 8 layers, FFN 2816, Llama-2
vocabulary: ~0.15B parameters), converts it to F16 with edgepack.convert, tokenizes --tokens tokens of War and
Peace (tests/fixtures) into chunks of --ctx, then times, alternately and --repeats times each, over exactly the
same chunks and the same llama.cpp context settings (every position's logits, as llama-imatrix asks):
  * plain: llama_decode per chunk, no eval callback;
  * imatrix: the same with edgepack.imatrix's Collector as the scheduler's eval callback (the scheduler then
    stops after every matrix product so the callback can read its input; the sums are accumulated in numpy).
The judged number is the median over repeats of imatrix/plain within a pair (a pair shares the load of its
moment on a shared machine). Target: <= 1.5.

    python -m benchmarks.imatrix [--workdir DIR] [--tokens 4096] [--ctx 512] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.quantize import build_source
from tests.support.quantmodels import corpus

TARGET = 1.5


def timed_pass(src: Path, chunks: list[np.ndarray], ctx: int, threads: int, collect: bool
               ) -> tuple[float, float, int]:
    """Wall and process-CPU seconds to decode every chunk (model load excluded), and the number of weights the
    callback saw."""
    import llama_cpp

    from edgepack import imatrix as im
    from edgepack.imatrix import run

    collector = im.Collector() if collect else None
    with run._context(src, ctx, threads, collector) as (llm_ctx, _vocab, n_ctx):
        batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        try:
            run._decode(llm_ctx, batch, chunks[0])  # warm-up (first-use allocations), not timed
            if collector is not None:
                collector.sums.clear()
                collector.counts.clear()
            started, cpu_started = time.perf_counter(), time.process_time()
            for chunk in chunks:
                run._decode(llm_ctx, batch, chunk)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        finally:
            llama_cpp.llama_batch_free(batch)
    if collector is not None and collector.error is not None:
        raise collector.error
    return seconds, cpu, len(collector.sums) if collector is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgepack-bench-imatrix-"))
    workdir.mkdir(parents=True, exist_ok=True)
    src = build_source(workdir, layers=8)

    import llama_cpp

    from edgepack import imatrix as im
    from edgepack.calibration import text_blocks
    from edgepack.imatrix import run

    with run._context(src, args.ctx, args.threads, None) as (_ctx, vocab, n_ctx):
        bos = llama_cpp.llama_vocab_bos(vocab)
        blocks = ((b, False) for b in text_blocks(corpus(args.tokens * 6)))
        chunks = list(im.token_chunks(run._tokenizer(vocab), blocks, n_ctx, bos))[: args.tokens // n_ctx]
    n_tokens = len(chunks) * args.ctx
    print(f"model {src.name} ({src.stat().st_size / 2**20:.0f} MiB F16), {len(chunks)} chunks of {args.ctx} tokens "
          f"= {n_tokens} tokens, {args.threads} thread(s), {args.repeats} pairs", file=sys.stderr)
    plain, collect, ratios, cpu_ratios = [], [], [], []
    for i in range(args.repeats):
        order = (False, True) if i % 2 == 0 else (True, False)
        runs = {flag: timed_pass(src, chunks, args.ctx, args.threads, flag) for flag in order}
        plain.append(runs[False][0])
        collect.append(runs[True][0])
        ratios.append(runs[True][0] / runs[False][0])
        cpu_ratios.append(runs[True][1] / runs[False][1])
        print(f"pair {i + 1}: plain {runs[False][0]:.2f}s (CPU {runs[False][1]:.2f}s), imatrix {runs[True][0]:.2f}s "
              f"(CPU {runs[True][1]:.2f}s, {runs[True][2]} weights), wall ratio {ratios[-1]:.3f}, CPU ratio "
              f"{cpu_ratios[-1]:.3f}", file=sys.stderr)
    ratio, cpu_ratio = statistics.median(ratios), statistics.median(cpu_ratios)
    verdict = "met" if ratio <= TARGET else "MISSED"
    print("| tokens | plain forward, wall (median s) | imatrix collection, wall (median s) | tokens/s plain | "
          "tokens/s imatrix | wall ratio (median of pairs) | CPU-time ratio (median of pairs) | target |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {n_tokens} | {statistics.median(plain):.2f} | {statistics.median(collect):.2f} | "
          f"{n_tokens / statistics.median(plain):.0f} | {n_tokens / statistics.median(collect):.0f} | "
          f"{ratio:.3f} | {cpu_ratio:.3f} | ≤ {TARGET} {verdict} (wall) |")


if __name__ == "__main__":
    main()
