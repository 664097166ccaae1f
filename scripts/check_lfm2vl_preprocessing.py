"""Check the LFM2-VL projector test's own image preprocessing against transformers' Lfm2VlImageProcessor.

The fidelity test (tests/fidelity/test_mmproj_lfm2vl.py) cannot run transformers' class: it imports torchvision,
and the package registries the test set-up uses have no torchvision wheel built for the CPU torch 2.13.0 (the
PyPI wheel fails to register its operators against it). So the test mirrors the processor step by step
(``lfm2vl_pixels``), and this script is the check that the mirror is right, for a machine that has a matching
torchvision:

    python -m scripts.check_lfm2vl_preprocessing

It prints the largest difference per output and exits 1 above 1e-6 (last measured: 5.9e-8).
"""

from __future__ import annotations

import sys


def main() -> int:
    import torch
    import torchvision  # noqa: F401  (the point of the script: fail here, loudly, where it is missing)
    from PIL import Image
    from transformers.models.lfm2_vl.image_processing_lfm2_vl import Lfm2VlImageProcessor

    from tests.fidelity.test_mmproj_lfm2vl import IMAGES, lfm2vl_pixels
    from tests.support.vision_cases import lfm2vl_config, nonsquare_image

    settings = {k: v for k, v in lfm2vl_config("processor_config").items() if k not in ("auto_map", "processor_class")}
    processor = Lfm2VlImageProcessor(**{**settings, "use_thumbnail": True, "resample": 2, "image_mean": [0.5] * 3,
                                        "image_std": [0.5] * 3})
    worst = 0.0
    for height, width in IMAGES:
        rgb = nonsquare_image(height, width)
        theirs, ours = processor(images=[Image.fromarray(rgb)], return_tensors="pt"), lfm2vl_pixels(rgb)
        for key in ours:
            delta = (theirs[key].to(ours[key].dtype) - ours[key]).abs().max().item()
            print(f"{height}x{width} {key}: max|d| {delta:.2e}")
            worst = max(worst, delta)
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
