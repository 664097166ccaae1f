"""Time to first token with an image in the prompt, on this host, for an LFM2-VL-450M-sized model.

    .venv/bin/python -m benchmarks.image_ttft [--images 80x48,512x384] [--reps 3] [--threads N] [--workdir DIR]

Builds a random-weight Lfm2VlForConditionalGeneration at LFM2-VL-450M's real sizes (SigLIP2 base tower: 12 layers
of 768; projector 2560; LFM2-350M text: 16 layers of 1024; tests/fixtures/configs) except the vocabulary (the
tests' ~1.5k-token tokenizer, not 65536: a smaller embedding table and output layer), converts it with edgepack
(text F16, projector F16), and runs ``edgepack bench --mmproj --image`` on each image (a gradient test
pattern of that size). Random weights compute as fast as trained ones. Prints, per image: the image's tokens,
the prompt's, time to first token, the share of it spent encoding the image, and the ratio of the time to first
token to decoding a text prompt of the same length at the measured prompt speed (pp).
Needs torch/transformers (test extra).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="80x48,512x384", help="comma-separated WIDTHxHEIGHT sizes")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    from PIL import Image

    from edgepack.bench import bench
    from edgepack.convert import convert
    from edgepack.convert.mmproj import convert_mmproj
    from tests.support.vision_cases import build_lfm2vl, nonsquare_image

    root = args.workdir or Path(tempfile.mkdtemp(prefix="image-ttft-"))
    root.mkdir(parents=True, exist_ok=True)
    folder = root / "model"
    if not (folder / "config.json").is_file():
        build_lfm2vl(root)  # the real sizes: nothing shrunk
    text = root / "text-F16.gguf"
    if not text.is_file():
        convert(folder, text, outtype="f16")
    mmproj = root / "mmproj-F16.gguf"
    if not mmproj.is_file():
        convert_mmproj(folder, mmproj, outtype="f16")
    print(f"LFM2-VL-450M-sized, random weights: text {text.stat().st_size / 2**20:.0f} MiB, projector "
          f"{mmproj.stat().st_size / 2**20:.0f} MiB (F16); {root}")
    print("| image | image tokens | prompt tokens | TTFT s (min-max) | encoding s | encoding share | "
          "TTFT / text prefill of as many tokens |")
    print("|---|---|---|---|---|---|---|")
    for size in args.images.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        png = root / f"image-{width}x{height}.png"
        Image.fromarray(nonsquare_image(height, width)).save(png)
        result = bench([text], mmproj=mmproj, image=png, reps=args.reps, n_prompt=256, n_gen=16,
                       threads=args.threads)
        [m] = result.models
        i = m.image
        prefill_s = i["prompt_tokens"] / m.pp.median
        print(f"| {width}x{height} | {i['image_tokens']} | {i['prompt_tokens']} | {i['ttft_s'].median:.2f} "
              f"({i['ttft_s'].min:.2f}-{i['ttft_s'].max:.2f}) | {i['encode_s'].median:.2f} | "
              f"{i['encode_s'].median / i['ttft_s'].median:.0%} | {i['ttft_s'].median / prefill_s:.1f}x |")
    print(f"host: {result.host.cpu}, {result.host.threads_used} threads; text prompt speed pp256 "
          f"{m.pp.median:.0f} tok/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
