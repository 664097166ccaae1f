"""What the adapter functions return (all JSON-able through ``cli._output``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class CompatibilityReport:
    """Whether an adapter fits a base: ``errors`` refuse the pair, ``warnings`` are worth reading."""

    adapter: str
    base: str
    base_kind: str  # "hf" or "gguf"
    base_name: str
    architecture: str | None  # Hugging Face class of the base (None for a GGUF without edgepack provenance)
    gguf_architecture: str | None
    n_layers: int | None
    target_modules: list[str] = field(default_factory=list)  # e.g. ["k_proj", "q_proj"]
    n_pairs: int = 0
    ranks: list[int] = field(default_factory=list)
    lora_alpha: float | None = None
    scaling: str = ""  # "alpha/r", "alpha/sqrt(r)" or "per-module"
    base_identity: str = "unknown"  # "verified", "mismatch" or "unknown"
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class AdapterResult:
    """What ``convert_adapter`` wrote."""

    output: Path
    architecture: str | None
    gguf_architecture: str
    outtype: str
    n_pairs: int
    ranks: list[int]
    lora_alpha: float
    size_bytes: int
    seconds: float
    base_name: str
    base_sha256: dict[str, str] = field(default_factory=dict)
    adapter_sha256: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class MergeResult:
    """What ``merge_adapter`` wrote."""

    output: Path
    architecture: str
    n_merged: int  # weight tensors that received B·A
    n_tensors: int
    files: list[str]
    seconds: float
    warnings: list[str] = field(default_factory=list)
