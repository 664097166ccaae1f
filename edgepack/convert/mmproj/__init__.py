"""Multimodal projectors: a vision-language checkpoint's vision tower + projector -> llama.cpp's mmproj GGUF.

llama.cpp runs a vision-language model as two files: the text model (``convert``) and the projector that
``libmtmd`` loads beside it (``general.architecture`` "clip", ``clip.*`` keys, ``v.*`` / ``mm.*`` tensors).
Each family is a ``ProjectorSpec`` in its own module here (which checkpoint tensors are its vision tower and
projector, their GGUF names, the config defaults config.json leaves out, and the checks that refuse a
checkpoint whose vision settings llama.cpp's graph or preprocessing would not reproduce); ``common`` holds the
spec, the registry and the SigLIP tower they share, ``writer`` the one writer.
"""

from . import gemma3, gemma4, lfm2vl, qwen3vl, smolvlm  # noqa: F401  (each registers its family)
from .common import ProjectorSpec, register
from .writer import (MMPROJ_OUTTYPES, MmprojResult, check_mmproj, convert_mmproj, default_mmproj_path,
                     projector_spec, supported_projectors)

__all__ = ["MMPROJ_OUTTYPES", "MmprojResult", "ProjectorSpec", "check_mmproj", "convert_mmproj",
           "default_mmproj_path", "projector_spec", "register", "supported_projectors"]
