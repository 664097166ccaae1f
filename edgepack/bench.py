"""Host benchmark: load time, prompt and generation speed, peak memory and quality of GGUF variants.

Each model runs in its own child process (``python -m edgepack.bench CHILD-ARGS``) so that peak RSS
(VmHWM) belongs to that model alone. It measures what llama.cpp delivers, with llama-bench's settings
(benchmarks/bench_vs_llama_bench.py compares the two): pp = one batch of ``n_prompt`` tokens (pp512 by
default), tg = ``n_gen`` single-token decodes (tg128), through llama_decode directly, with llama.cpp's
repacked CPU weights; ``reps`` repetitions report median, min and max.
This host's memory bandwidth is measured too (a large numpy copy); ``edgepack fit`` uses it to turn the
measured generation speed into a per-token overhead that carries over to devices. With a reference GGUF,
quality comes from ``edgepack.evaluate`` (llama-perplexity's method): mean KLD, PPL and its change, top-1
agreement -- the numbers ``edgepack fit --max-kld`` and the report read.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import limits
from .errors import BadGGUF, UsageError
from .fit import describe_gguf
from .hostfacts import HostInfo, build_has_amx, host_isa, measure_bandwidth_gb_s  # noqa: F401  (bench's API)
from .mtmd import check_image_files
from .progress import QUIET, Progress


@dataclass
class Stat:
    median: float
    min: float
    max: float
    runs: list[float]

    @classmethod
    def of(cls, xs: list[float]) -> "Stat":
        return cls(round(statistics.median(xs), 3), round(min(xs), 3), round(max(xs), 3), [round(x, 3) for x in xs])


@dataclass
class ModelBench:
    path: str
    name: str
    quant: str
    size_bytes: int
    bits_per_weight: float
    n_params: int
    load_s: Stat
    pp: Stat  # tokens/s
    tg: Stat  # tokens/s
    peak_rss_mb: float
    n_prompt: int
    n_gen: int
    repack: bool = True  # weights in llama.cpp's repacked CPU buffers (off only on a build with AMX kernels)
    threads: int = 0
    quality: dict | None = None  # evaluate.Quality's fields (mean_kld, ppl, ...) vs --ref, and the eval's setting
    # with --image: {mmproj, image, image_tokens, prompt_tokens, image_chunks, ttft_s: Stat, encode_s: Stat}, the
    # time to first token of a prompt holding the image (mtmd.image_prompt_timings)
    image: dict | None = None

    @property
    def tg_tokens_per_s(self) -> float:
        return self.tg.median

    @property
    def pp_tokens_per_s(self) -> float:
        return self.pp.median


@dataclass
class BenchResult:
    host: HostInfo
    models: list[ModelBench] = field(default_factory=list)
    reference: str | None = None
    quality_note: str = ""  # how quality was measured (reference, text, context)

    def to_dict(self) -> dict:
        out = asdict(self)
        for m, src in zip(out["models"], self.models):
            m["tg_tokens_per_s"], m["pp_tokens_per_s"] = src.tg_tokens_per_s, src.pp_tokens_per_s
        return out


def _child(path: str, n_ctx: int, n_prompt: int, n_gen: int, reps: int, threads: int, mmproj: str = "",
           image: str = "") -> dict:
    """Runs inside the child process, measuring the way llama-bench does (tools/llama-bench): llama.cpp's own
    model and context defaults (repacked CPU weights, flash attention auto), n_batch 2048 / n_ubatch 512,
    random tokens, one warm-up pp and tg run, the KV cache cleared before each repetition, and pp and tg
    timed separately around llama_decode alone. With ``mmproj`` and ``image``, then the time to first token of a
    prompt holding the image (its own context; peak RSS then includes the projector). Prints nothing itself."""
    import llama_cpp as lib
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # errors only: the parent reads the last stderr line when the child fails
    lib.llama_backend_init()
    repack = not build_has_amx()
    mparams = lib.llama_model_default_params()
    mparams.use_extra_bufts = repack
    t = time.perf_counter()
    model = lib.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {path}")
    cparams = lib.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_ctx, 2048, 512
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = lib.llama_init_from_model(model, cparams)
    load_s = time.perf_counter() - t
    if not ctx:
        raise SystemExit(f"llama.cpp could not create a context for {path}")
    vocab = lib.llama_model_get_vocab(model)
    n_vocab = lib.llama_vocab_n_tokens(vocab)
    bos = lib.llama_vocab_bos(vocab) if lib.llama_vocab_get_add_bos(vocab) else None
    rng = np.random.default_rng(0)

    def decode(tokens: list[int]) -> None:
        arr = (lib.llama_token * len(tokens))(*tokens)
        if lib.llama_decode(ctx, lib.llama_batch_get_one(arr, len(tokens))) != 0:
            raise SystemExit("llama_decode failed")

    def prompt(n: int) -> None:
        toks = [int(x) for x in rng.integers(0, n_vocab, size=n)]
        if bos is not None:
            toks[0] = bos
        for i in range(0, n, 2048):
            decode(toks[i:i + 2048])
        lib.llama_synchronize(ctx)

    def gen(n: int) -> None:
        tok = bos if bos is not None else int(rng.integers(0, n_vocab))
        for _ in range(n):
            decode([tok])
            lib.llama_synchronize(ctx)
            tok = int(rng.integers(0, n_vocab))

    memory = lib.llama_get_memory(ctx)
    prompt(n_prompt)  # warm-up, as llama-bench: page in the weights, start the threads
    lib.llama_memory_clear(memory, False)
    gen(1)
    pp, tg = [], []
    for _ in range(reps):
        lib.llama_memory_clear(memory, False)
        t = time.perf_counter()
        prompt(n_prompt)
        pp.append(n_prompt / (time.perf_counter() - t))
    for _ in range(reps):
        lib.llama_memory_clear(memory, False)
        t = time.perf_counter()
        gen(n_gen)
        tg.append(n_gen / (time.perf_counter() - t))
    lib.llama_free(ctx)
    timings = None
    if mmproj:
        from .mtmd import image_prompt_timings

        timings = image_prompt_timings(model, mmproj, image, n_threads=threads, reps=reps)
    lib.llama_model_free(model)
    hwm = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    if not hwm:  # not Linux
        import resource

        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)
    return {"load_s": [load_s], "pp": pp, "tg": tg, "peak_rss_mb": hwm, "repack": repack, "image": timings}


def bench_one(path: str | Path, *, n_ctx: int = 1024, n_prompt: int = 512, n_gen: int = 128, reps: int = 3,
              threads: int | None = None, mmproj: str | Path | None = None,
              image: str | Path | None = None) -> ModelBench:
    path = Path(path)
    desc = describe_gguf(path)
    threads = limits.threads(threads) or min(os.cpu_count() or 1, 8)
    if n_prompt + n_gen > n_ctx:
        n_ctx = n_prompt + n_gen
    args = [sys.executable, "-m", "edgepack.bench", str(path), str(n_ctx), str(n_prompt), str(n_gen), str(reps),
            str(threads), str(mmproj or ""), str(image or "")]
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1:] or ["no output"]
        raise BadGGUF(f"{path}: llama.cpp could not run it ({tail[0]})", "does `edgepack fit` read it? is it complete?")
    raw = json.loads(res.stdout.strip().splitlines()[-1])
    timings = raw.get("image")
    if timings:
        timings = {"mmproj": str(mmproj), "image": str(image), **timings,
                   "ttft_s": Stat.of(timings["ttft_s"]), "encode_s": Stat.of(timings["encode_s"])}
    return ModelBench(path=str(path), name=desc.name, quant=desc.quant, size_bytes=path.stat().st_size,
                      bits_per_weight=round(desc.bits_per_weight, 3), n_params=desc.n_params,
                      load_s=Stat.of(raw["load_s"]), pp=Stat.of(raw["pp"]), tg=Stat.of(raw["tg"]),
                      peak_rss_mb=round(raw["peak_rss_mb"], 1), n_prompt=n_prompt, n_gen=n_gen,
                      repack=raw["repack"], threads=threads, image=timings)


def bench(paths: list[str | Path], *, ref: str | Path | None = None, n_ctx: int = 1024, n_prompt: int = 512,
          n_gen: int = 128, reps: int = 3, threads: int | None = None, eval_ctx: int = 512,
          eval_text: str | Path | None = None, mmproj: str | Path | None = None, image: str | Path | None = None,
          progress: Progress = QUIET) -> BenchResult:
    """Benchmark each GGUF on this host (one child process per model) and measure the host's bandwidth.

    With ``mmproj`` (the models' multimodal projector) and ``image`` (a PNG/JPEG/... file), also the time to first
    token of a prompt holding the image: encoding plus prefill, as an app on this host waits for it.

    With ``ref``, quality against it comes from ``edgepack.evaluate`` (one reference pass for all models):
    mean KLD, PPL and its change, top-1 agreement on ``eval_text`` (default: the built-in text)."""
    if not paths:
        raise UsageError("no models to benchmark", "give one or more .gguf files")
    if reps < 1 or n_prompt < 1 or n_gen < 1:
        raise UsageError("--reps, --n-prompt and --n-gen must be positive", "e.g. --reps 3")
    check_image_files(mmproj, image)
    threads = limits.threads(threads) or min(os.cpu_count() or 1, 8)
    progress.start("measuring host bandwidth", 1)
    host = HostInfo.current(threads)
    progress.advance()
    progress.finish(f"{host.bandwidth_gb_s} GB/s")
    result = BenchResult(host=host, reference=str(ref) if ref else None)
    progress.start("benchmarking", len(paths))
    for p in paths:
        result.models.append(bench_one(p, n_ctx=n_ctx, n_prompt=n_prompt, n_gen=n_gen, reps=reps, threads=threads,
                                       mmproj=mmproj, image=image))
        progress.advance()
    progress.finish()
    if ref is not None:
        from .evaluate import evaluate_many

        evals = evaluate_many(list(paths), ref, text=eval_text, ctx=eval_ctx, threads=threads, progress=progress)
        for m, r in zip(result.models, evals):
            # the fields ``edgepack fit`` reads (evaluate.Quality), with the KLD's spread and the eval's setting
            m.quality = {**r.quality.to_json(), "mean_kld_err": r.mean_kld_err, "p99_kld": r.p99_kld,
                         "eval_ctx": r.ctx, "eval_tokens": r.n_scored, "eval_text": r.text}
        result.quality_note = (f"quality vs {Path(ref).name}: llama-perplexity's method on {evals[0].text}, "
                               f"ctx {eval_ctx}, {evals[0].n_scored} scored tokens")
    return result


if __name__ == "__main__":  # child process entry: path n_ctx n_prompt n_gen reps threads [mmproj image]
    from .errors import EdgepackError

    p, c, n_p, n_g, r, th = sys.argv[1:7]
    try:
        print(json.dumps(_child(p, int(c), int(n_p), int(n_g), int(r), int(th), *sys.argv[7:9])))
    except EdgepackError as exc:  # one line: the parent reports the last stderr line
        raise SystemExit(str(exc)) from None
