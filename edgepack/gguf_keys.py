"""edgepack's own GGUF metadata keys: one place that names them (llama.cpp ignores keys it does not know).

Like ``gguf.Keys`` for llama.cpp's keys: writers and readers use these constants, so a key cannot be spelled
two ways. What each group records:

* ``Source``: what a converted GGUF (model or projector) was made from: the Hugging Face class, its config.json
  (``fit`` sizes a GGUF by the family's own description), every source file with its sha256, the checkpoint
  parts left out, and the Hub provenance when the source came from there.
* ``Base`` / ``Adapter``: a LoRA adapter GGUF's base model and adapter files (the same sha256 values the
  converter records as ``Source.SHA256``, so a base GGUF and its adapter can be matched).
* ``Quantize``: a quantized GGUF's settings (what a re-run compares) and the imatrix's calibration text.
* ``Imatrix``: an importance-matrix GGUF's calibration text and the model it was collected on.
"""

from __future__ import annotations

VERSION = "edgepack.version"


class Source:
    ARCHITECTURE = "edgepack.source.architecture"  # the Hugging Face class (LlamaForCausalLM)
    CONFIG = "edgepack.source.config"  # config.json, compact JSON
    FILES = "edgepack.source.files"
    SHA256 = "edgepack.source.sha256"  # one per FILES entry, same order
    DROPPED = "edgepack.source.dropped"  # checkpoint parts llama.cpp's text model does not use
    # source.Provenance field -> key, in the order they are written
    PROVENANCE = {"repo_id": "edgepack.source.repo_id", "revision": "edgepack.source.revision",
                  "commit_sha": "edgepack.source.commit", "license": "edgepack.source.license"}


class Base:
    ARCHITECTURE = "edgepack.base.architecture"
    NAME = "edgepack.base.name"
    FILES = "edgepack.base.files"
    SHA256 = "edgepack.base.sha256"
    GGUF_SHA256 = "edgepack.base.gguf_sha256"
    PROVENANCE = {"repo_id": "edgepack.base.repo_id", "revision": "edgepack.base.revision",
                  "commit_sha": "edgepack.base.commit"}


class Adapter:
    DECLARED_BASE = "edgepack.adapter.declared_base"
    SCALING = "edgepack.adapter.scaling"
    FILES = "edgepack.adapter.files"
    SHA256 = "edgepack.adapter.sha256"


class Quantize:
    SETTINGS = "edgepack.quantize.settings"
    TYPE = "edgepack.quantize.type"
    VERSION = "edgepack.quantize.version"
    IMATRIX_CALIBRATION = "edgepack.quantize.imatrix.calibration_sha256"


class Imatrix:
    CALIBRATION = "edgepack.imatrix.calibration_sha256"
    MODEL = "edgepack.imatrix.model"
    MODEL_FINGERPRINT = "edgepack.imatrix.model_fingerprint"
    PROCESS_OUTPUT = "edgepack.imatrix.process_output"


def provenance_items(keys: dict[str, str], provenance) -> list[tuple[str, str]]:
    """(key, value) for each known field of a ``source.Provenance`` (None: none), in ``keys``' order."""
    if provenance is None:
        return []
    return [(key, getattr(provenance, name)) for name, key in keys.items() if getattr(provenance, name)]
