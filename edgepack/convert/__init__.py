"""HF safetensors -> GGUF. ``convert()`` is the stage; each module in ``families/`` registers an ``ArchSpec``.

Adding a family = one new module in ``families/`` that calls ``register(ArchSpec(...))``; the core
(``core.py``, ``spec.py``, ``vocab.py``) does not change.
"""

from ..source import Provenance
from . import families  # noqa: F401  (registers every family)
from .core import OUTTYPES, ConvertResult, convert
from .spec import supported_architectures

__all__ = ["OUTTYPES", "ConvertResult", "Provenance", "convert", "supported_architectures"]
