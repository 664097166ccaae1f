"""``edgepack eval --mmproj P --image I``: what quantization costs with an image in the context.

The prompt is the image (through the projector, as llama.cpp's libmtmd tokenizes and encodes it: the family's
image markers, tiles, thumbnail) followed by the first ``n_tokens`` tokens of the evaluation text. Every model and
the reference read the same prompt; at each text position after the image their next-token distributions are
compared (mean KL divergence KL(ref || model), top-1 agreement) and the text's perplexity measured, the way
``evaluate`` does for plain text. The projector is the same file for all (a quantized text model is paired with
its projector unchanged), so what differs is how the text model reads the image embeddings.
"""

from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadGGUF, UsageError
from .evaluate import _check_model, _check_same_vocab, _log_softmax, _mean_err, open_llama, read_text
from .mtmd import check_image_files

DEFAULT_IMAGE_TEXT_TOKENS = 256
# Positions for the image and the text: every one keeps its logits (n_ctx x vocabulary floats, 0.5 GB at 65k).
IMAGE_EVAL_CTX = 2048


@dataclass
class ImageEvalResult:
    model: Path
    reference: Path
    image: Path
    image_tokens: int  # the image's positions in the prompt (tiles, thumbnail and markers' tokens excluded)
    n_scored: int  # text positions compared
    mean_kld: float
    mean_kld_err: float
    top1_agreement: float
    ppl: float  # of the text after the image
    ref_ppl: float
    seconds: float


def _image_prompt_logits(path: Path, mmproj: Path, image: Path, text: str, n_tokens: int, threads: int):
    """(image tokens, text token ids, logits at every text position) of ``path`` reading the image then the
    text."""
    from llama_cpp import mtmd_cpp as mtmd

    from .mtmd import projector, tokenized

    n_ctx = IMAGE_EVAL_CTX
    with open_llama(path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=threads,
                    n_threads_batch=threads) as llm:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:n_tokens]
        if len(ids) < 2:
            raise UsageError("the evaluation text is shorter than 2 tokens", "give a longer --text")
        body = llm.detokenize(ids).decode("utf-8", errors="replace")
        with projector(llm.model, mmproj, threads) as ctx, tokenized(ctx, mtmd.mtmd_default_marker() + b"\n",
                                                                     add_special=True, image_file=image) as chunks:
            every = [mtmd.mtmd_input_chunks_get(chunks, i) for i in range(mtmd.mtmd_input_chunks_size(chunks))]
            n_past = 0
            image_tokens = 0
            for chunk in every:
                if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    image_tokens += mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                new_n_past = ctypes.c_int32(n_past)  # the helper adds a text chunk's tokens to it
                if mtmd.mtmd_helper_eval_chunk_single(ctx, llm.ctx, chunk, n_past, 0, n_ctx, False,
                                                      ctypes.byref(new_n_past)) != 0:
                    raise BadGGUF(f"llama.cpp could not evaluate the image prompt with {path.name}",
                                  "is the projector made for this model?")
                n_past = new_n_past.value
        text_ids = llm.tokenize(body.encode("utf-8"), add_bos=False, special=False)
        if n_past + len(text_ids) > n_ctx:
            raise UsageError(f"the image ({n_past} positions) and {len(text_ids)} text tokens exceed {n_ctx}",
                             "use a smaller image or fewer --image-tokens")
        llm.n_tokens = n_past  # continue after the image's positions (Llama.eval decodes from n_tokens)
        llm.eval(text_ids)
        # float64: KL divergences of nearly equal models are differences of nearly equal numbers
        logits = np.asarray(llm.scores[n_past:n_past + len(text_ids)], dtype=np.float64)
    return image_tokens, np.array(text_ids), logits


def evaluate_image(models: list[str | Path], ref: str | Path, *, mmproj: str | Path, image: str | Path,
                   text: str | Path | None = None, n_tokens: int = DEFAULT_IMAGE_TEXT_TOKENS,
                   threads: int = 0) -> list[ImageEvalResult]:
    """Each of ``models`` against ``ref`` with ``image`` (through ``mmproj``) before the first ``n_tokens`` tokens
    of ``text`` (default: the built-in text)."""
    check_image_files(mmproj, image)
    ref, mmproj, image = Path(ref), Path(mmproj), Path(image)
    if n_tokens < 2:
        raise UsageError(f"--image-tokens must be at least 2, not {n_tokens}", "e.g. --image-tokens 256")
    ref_header = _check_model(ref)
    models = [Path(m) for m in models]
    for m in models:
        _check_same_vocab(ref, ref_header, m, _check_model(m))
    body, _ = read_text(text)
    image_tokens, ids, ref_logits = _image_prompt_logits(ref, mmproj, image, body, n_tokens, threads)
    ref_lp = _log_softmax(ref_logits)
    rows = np.arange(len(ids) - 1)
    ref_nll = -ref_lp[rows, ids[1:]]
    out = []
    for m in models:
        started = time.monotonic()
        _, m_ids, logits = _image_prompt_logits(m, mmproj, image, body, n_tokens, threads)
        if not np.array_equal(m_ids, ids):
            raise UsageError(f"{m.name} tokenizes the text differently from {ref.name}",
                             "compare a model with the GGUF it was quantized from")
        lp = _log_softmax(logits)
        kld = (np.exp(ref_lp) * (ref_lp - lp)).sum(-1)
        kld_mean, kld_err = _mean_err(kld)
        nll = -lp[rows, ids[1:]]
        out.append(ImageEvalResult(model=m, reference=ref, image=image, image_tokens=image_tokens,
                                   n_scored=len(kld), mean_kld=kld_mean, mean_kld_err=kld_err,
                                   top1_agreement=float((logits.argmax(-1) == ref_logits.argmax(-1)).mean()),
                                   ppl=math.exp(float(nll.mean())), ref_ppl=math.exp(float(ref_nll.mean())),
                                   seconds=round(time.monotonic() - started, 3)))
    return out
