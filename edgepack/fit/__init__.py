"""Fit: will this variant run on that device, how fast, and which variant should ship there.

Four modules, each plain functions over dataclasses:

* ``describe``: ``describe_gguf`` / ``describe_config`` make a ``ModelDesc`` (architecture numbers + every
  weight tensor with its ggml type and bytes) from a GGUF's header, or from a Hugging Face ``config.json`` and
  a quant type using llama.cpp's per-tensor quant mix (``quants.quant_types``).
* ``memory``: ``memory_needed`` = weights (+ a tied embedding's copy) + KV cache + state + compute buffers +
  logits + runtime overhead, the way llama.cpp allocates them on a backend and ISA (checked against llama.cpp's
  own log lines in the tests).
* ``speed``: ``project`` = generation tok/s from the bandwidth roofline x the class's efficiency (on a CPU also
  the cores' weights rate) plus a per-token floor, prompt tok/s from the class's GFLOP/s; the device's numbers
  come from its profile (its class's calibration, or its own measurements).
* ``pick``: ``fit`` runs every (variant, profile, backend) and picks per profile, saying why the others lost.
* ``image``: ``describe_projector`` sizes one image through a multimodal projector (its tokens and FLOPs);
  ``fit(..., image=)`` projects the time it adds before the first token (``memory.projector_bytes`` is the
  projector's memory, ``fit(..., projector_bytes=)``).

The public API (used by the CLI, the build, calibrate and per-device mixes) is re-exported here: import from
``edgepack.fit``. docs/fit.md explains the model.
"""

from __future__ import annotations

from .describe import SWA_PATTERN, ModelDesc, TensorDesc, config_name, describe_config, describe_gguf, load_config
from .image import ProjectorDesc, describe_projector, image_ttft_s
from .memory import (CPU_REPACK, HEXAGON_TYPES, KV_PAD, MB, MemoryParts, compute_buffer_bytes, cpu_repacks,
                     kv_cache_bytes, kv_cells, memory_needed, projector_bytes, recurrent_state_bytes,
                     tied_output_copy_bytes)
from .pick import DEFAULT_BATCHES, FitResult, FitRow, Quality, Variant, fit, nice_mb, variants_from_bench
from .speed import TOKEN_FLOOR, HostCalibration, Projection, flops_per_token, project, token_floor_ms, token_floor_s

__all__ = ["ModelDesc", "TensorDesc", "describe_gguf", "describe_config", "load_config", "config_name", "SWA_PATTERN",
           "MemoryParts", "memory_needed", "projector_bytes", "kv_cache_bytes", "kv_cells", "compute_buffer_bytes",
           "recurrent_state_bytes", "tied_output_copy_bytes", "cpu_repacks", "CPU_REPACK", "HEXAGON_TYPES", "KV_PAD",
           "MB", "HostCalibration", "Projection", "project", "flops_per_token", "token_floor_s", "token_floor_ms",
           "TOKEN_FLOOR", "Quality", "Variant", "FitRow", "FitResult", "fit", "variants_from_bench", "nice_mb",
           "DEFAULT_BATCHES", "ProjectorDesc", "describe_projector", "image_ttft_s"]
