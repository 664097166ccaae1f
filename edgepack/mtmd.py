"""llama.cpp's multimodal runtime (libmtmd, through llama-cpp-python's bindings): a projector GGUF loaded beside
its text model, an image encoded to the embeddings the text model reads. Used by ``verify`` (a bundle's projector
loads and encodes) and by the tests that hold converted projectors to transformers."""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import BadGGUF, UsageError


def check_image_files(mmproj: str | Path | None, image: str | Path | None) -> None:
    """An image option's files (``bench``/``eval`` ``--mmproj`` and ``--image``): given together, both files."""
    if (mmproj is None) != (image is None):
        raise UsageError("--image and --mmproj go together", "give the projector (mmproj-*.gguf) and an image file")
    for what, f in (("projector", mmproj), ("image", image)):
        if f is not None and not Path(f).is_file():
            raise UsageError(f"the {what} {f} is not a file", f"give the path of the {what} file")


@contextlib.contextmanager
def projector(model, mmproj: str | Path, n_threads: int = 2) -> Iterator:
    """An mtmd context: the projector ``mmproj`` loaded beside the loaded text model ``model`` (a llama_model
    pointer). Raises ``BadGGUF`` when llama.cpp cannot load it."""
    from llama_cpp import mtmd_cpp as mtmd

    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings, params.warmup = False, n_threads, False, False
    ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), model, params)
    if not ctx:
        raise BadGGUF(f"llama.cpp's mtmd cannot load the projector {Path(mmproj).name}",
                      "the projector is damaged or made for another text model")
    try:
        yield ctx
    finally:
        mtmd.mtmd_free(ctx)


@contextlib.contextmanager
def tokenized(ctx, prompt: bytes, rgb: np.ndarray | None = None, add_special: bool = False, *,
              image_file: str | Path | None = None) -> Iterator[list]:
    """The chunks of ``prompt`` (holding mtmd's media marker once) with an image in the marker's place, as mtmd
    tokenizes them: text chunks and the image's chunks. The image is the H x W x 3 uint8 array ``rgb``, or
    ``image_file`` decoded by libmtmd's own reader (stb_image: PNG, JPEG, BMP, GIF...) as llama.cpp's apps do."""
    from llama_cpp import mtmd_cpp as mtmd

    if image_file is not None:
        bitmap = mtmd.mtmd_helper_bitmap_init_from_file(ctx, str(image_file).encode(), False)
        if not bitmap:
            raise UsageError(f"llama.cpp cannot read the image {image_file}",
                             "give a PNG, JPEG, BMP or GIF file (what libmtmd's stb_image decodes)")
    else:
        height, width, _ = rgb.shape
        pixels = (ctypes.c_uint8 * rgb.size).from_buffer_copy(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
        bitmap = mtmd.mtmd_bitmap_init(width, height, pixels)
    chunks = mtmd.mtmd_input_chunks_init()
    text = mtmd.mtmd_input_text(text=prompt, text_len=len(prompt), add_special=add_special, parse_special=True)
    try:
        status = mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1)
        if status != 0:
            raise BadGGUF(f"llama.cpp's mtmd cannot tokenize an image prompt (status {status})",
                          "the projector is damaged")
        yield chunks
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)


def image_embeddings(text_gguf: str | Path, mmproj: str | Path, rgb: np.ndarray, n_threads: int = 2) -> np.ndarray:
    """(image tokens, n_embd_inp) float32 embeddings of one H x W x 3 uint8 image, as an app gets them: the projector
    loaded beside the text model, the image given as RGB bytes after the media marker, its chunks encoded in
    prompt order (one chunk, or for the tiling families one per tile plus the overview, in the order mtmd places
    them in the prompt) and stacked. Raises ``BadGGUF`` when llama.cpp cannot load either file or encode the
    image."""
    import llama_cpp
    from llama_cpp import mtmd_cpp as mtmd

    model = llama_cpp.llama_model_load_from_file(str(text_gguf).encode(), llama_cpp.llama_model_default_params())
    if not model:
        raise BadGGUF(f"llama.cpp cannot load {Path(text_gguf).name}", "the GGUF is damaged or not a text model")
    try:
        with projector(model, mmproj, n_threads) as ctx, tokenized(ctx, mtmd.mtmd_default_marker(), rgb) as chunks:
            every = [mtmd.mtmd_input_chunks_get(chunks, i) for i in range(mtmd.mtmd_input_chunks_size(chunks))]
            images = [c for c in every if mtmd.mtmd_input_chunk_get_type(c) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE]
            n_embd = llama_cpp.llama_model_n_embd_inp(model)  # DeepStack models (Qwen3-VL) take extra widths
            out = []
            for chunk in images:
                if mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
                    raise BadGGUF(f"llama.cpp's mtmd cannot encode an image with {Path(mmproj).name}",
                                  "the projector is damaged")
                n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                embd = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n_tokens * n_embd,))
                out.append(embd.reshape(n_tokens, n_embd).copy())
            if not out:
                raise BadGGUF(f"llama.cpp's mtmd made no image chunk with {Path(mmproj).name}",
                              "the projector is damaged")
            return np.concatenate(out)
    finally:
        llama_cpp.llama_model_free(model)


# clip.cpp's reserve_compute_meta logs each backend's compute buffer as "<buft> compute buffer size = X MiB"
# (LOG_INF, through the callback mtmd_log_set installs); the bindings do not expose the size otherwise.
_COMPUTE_BUFFER = re.compile(rb"compute buffer size = *([0-9.]+) MiB")
_LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


def load_projector(mmproj: str) -> int:
    """Run in a child (``edgepack.isolate``): libmtmd loads the projector on its own (no text model) and reserves
    its compute graph (warmup, as an app's first load does: llama.cpp sizes it for the largest image it accepts by
    default), which builds the family's graph from the file's keys and tensors. Returns the compute buffer
    llama.cpp reserved, in bytes (the largest it logged; 0 if it logged none). Raises ``BadGGUF`` when llama.cpp
    refuses the file."""
    from llama_cpp import mtmd_cpp as mtmd

    logged: list[bytes] = []
    callback = _LOG_CALLBACK(lambda level, text, user_data: logged.append(text or b""))
    mtmd._libmtmd.mtmd_log_set.argtypes = [_LOG_CALLBACK, ctypes.c_void_p]
    mtmd._libmtmd.mtmd_log_set.restype = None
    mtmd._libmtmd.mtmd_log_set(callback, None)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings, params.warmup = False, 1, False, True
    ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), None, params)
    if not ctx:
        raise BadGGUF(f"llama.cpp's mtmd cannot load the projector {Path(mmproj).name}",
                      "edgepack wrote a projector llama.cpp refuses: a converter bug for this family, please report it")
    mtmd.mtmd_free(ctx)
    sizes = [float(m.group(1)) for line in logged if (m := _COMPUTE_BUFFER.search(line))]
    return round(max(sizes, default=0.0) * 1024 * 1024)


def check_projector_loads(mmproj: str | Path, name: str | None = None) -> int:
    """``load_projector`` in a child process, so that an abort inside llama.cpp is one error line: a projector
    llama.cpp cannot load is never handed on (``convert_mmproj`` checks the file before renaming it into place).
    Returns the compute buffer llama.cpp reserved for it, in bytes (what ``fit`` adds for the projector's work)."""
    from . import isolate

    return int(isolate.call(
        load_projector, str(mmproj), what=f"llama.cpp loading the projector {name or mmproj}",
        hint="edgepack wrote a projector llama.cpp refuses: a converter bug for this family, please report it"))


# The text around the image in a timed prompt: mtmd adds the family's image markers, the chat template is left out.
TTFT_PROMPT = b"Describe this image.\n" + b"<__media__>" + b"\nAnswer:"


def image_prompt_timings(model, mmproj: str | Path, image_file: str | Path, *, n_threads: int, reps: int,
                         prompt: bytes = TTFT_PROMPT) -> dict:
    """Time to first token of a prompt with an image on this host, as an app runs it: the projector loaded beside
    the loaded text model ``model``, the image file decoded and tokenized by libmtmd, then (per repetition, after
    one warm-up, the KV cache cleared) mtmd_helper_eval_chunks (every image chunk encoded, its embeddings and the
    text decoded) up to the first token's logits. ``encode_s``: the image chunks' encoding alone. Seconds per
    repetition; image_tokens and prompt_tokens as the text model sees them."""
    import time

    import llama_cpp as lib
    from llama_cpp import mtmd_cpp as mtmd

    with projector(model, mmproj, n_threads) as ctx, tokenized(ctx, prompt, add_special=True,
                                                                   image_file=image_file) as chunks:
        every = [mtmd.mtmd_input_chunks_get(chunks, i) for i in range(mtmd.mtmd_input_chunks_size(chunks))]
        images = [c for c in every if mtmd.mtmd_input_chunk_get_type(c) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE]
        n_tokens = int(mtmd.mtmd_helper_get_n_tokens(chunks))
        image_tokens = sum(mtmd.mtmd_input_chunk_get_n_tokens(c) for c in images)
        # one batch holds the longest chunk: an image decoded non-causally (Gemma 3) must not be split
        n_batch = max(512, max(mtmd.mtmd_input_chunk_get_n_tokens(c) for c in every))
        cparams = lib.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = n_tokens + 16, n_batch, n_batch
        cparams.n_threads = cparams.n_threads_batch = n_threads
        lctx = lib.llama_init_from_model(model, cparams)
        if not lctx:
            raise BadGGUF(f"llama.cpp could not create a context of {n_tokens + 16} tokens", "a smaller image?")
        try:
            memory = lib.llama_get_memory(lctx)

            def first_token() -> float:
                lib.llama_memory_clear(memory, False)
                n_past = lib.llama_pos(0)
                started = time.perf_counter()
                status = mtmd.mtmd_helper_eval_chunks(ctx, lctx, chunks, 0, 0, n_batch, True, ctypes.byref(n_past))
                if status != 0:
                    raise BadGGUF(f"llama.cpp could not evaluate the image prompt (status {status})",
                                  "is the projector made for this model?")
                n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
                int(np.argmax(np.ctypeslib.as_array(lib.llama_get_logits_ith(lctx, -1), shape=(n_vocab,))))
                return time.perf_counter() - started

            def encode() -> float:
                started = time.perf_counter()
                for chunk in images:
                    if mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
                        raise BadGGUF("llama.cpp's mtmd could not encode the image", "is the projector damaged?")
                return time.perf_counter() - started

            first_token()  # warm-up: graph allocation, pages, threads
            ttft = [first_token() for _ in range(reps)]
            encode_s = [encode() for _ in range(reps)]
        finally:
            lib.llama_free(lctx)
    return {"image_tokens": int(image_tokens), "prompt_tokens": n_tokens, "image_chunks": len(images),
            "ttft_s": ttft, "encode_s": encode_s}
