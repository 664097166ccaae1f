"""What the steps of a build make, as frozen dataclasses, and the build's result.

Steps pass these to each other; nothing here is a dict with conventions. JSON is made only at the edges: the
step cache's ``done.json`` (each step's own fields), ``edgepack build --json`` (``BuildResult.to_json``) and the
report's data. This module imports no stage: it is part of every step's code key (``codekey``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # types only: importing the stages here would put them in every step's code key
    from ..source import Provenance
    from ..fit import FitResult


@dataclass(frozen=True)
class ResolvedSource:
    """The model source, resolved to a local folder and hashed."""

    folder: Path
    sha256: str  # over every file's sha256: what the convert and merge keys hold
    facts: dict  # what a bundle's manifest records as its source (kind, name, sha256, folder or Hub provenance)
    provenance: Provenance | None


@dataclass(frozen=True)
class BaseGGUF:
    """A line's unquantized GGUF: the base model converted, or the base with an adapter merged, converted."""

    line: str
    path: Path
    sha256: str
    outtype: str


@dataclass(frozen=True)
class Imatrix:
    """The importance matrix a line's variants are quantized with."""

    file: str
    path: Path
    sha256: str
    calibration_sha256: str


@dataclass(frozen=True)
class Evaluation:
    """A variant against its line's unquantized GGUF: ``evaluate.EvalResult``'s figures (same names), rounded to
    6 digits as the step cache records them. The steps that use it read its headline figures with
    ``evaluate.Quality.from_json`` (not here: this module imports no stage, see the module doc)."""

    ctx: int
    n_chunks: int
    n_scored: int
    ppl: float
    ppl_err: float
    ref_ppl: float
    ref_ppl_err: float
    delta_ppl: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    mean_kld: float
    mean_kld_err: float
    median_kld: float
    p99_kld: float
    max_kld: float
    top1_agreement: float
    top1_agreement_err: float
    rms_delta_p: float

    @classmethod
    def of(cls, figures: Any) -> Evaluation:
        """From an ``EvalResult`` or a mapping with its names (the cached step's record)."""
        get = figures.get if isinstance(figures, dict) else (lambda k: getattr(figures, k))
        values = {f.name: get(f.name) for f in fields(cls)}
        return cls(**{k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()})


@dataclass(frozen=True)
class Variant:
    """A quantized GGUF of one line, with its quality and its speed here once measured."""

    name: str
    line: str
    quant: str
    unit: str
    path: Path
    sha256: str
    size_bytes: int
    imatrix: Imatrix | None = None
    quality: Evaluation | None = None
    bench: dict | None = None  # ``bench.ModelBench`` as JSON plus threads and host: timings, never in a manifest

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "line": self.line, "quant": self.quant, "unit": self.unit}
        if self.imatrix is not None:
            out.update(imatrix=self.imatrix.file, calibration_sha256=self.imatrix.calibration_sha256)
        out.update(file=str(self.path), sha256=self.sha256, size_bytes=self.size_bytes)
        if self.quality is not None:
            out["quality"] = asdict(self.quality)
        if self.bench is not None:
            out["bench"] = self.bench
        return out


@dataclass(frozen=True)
class AdapterGGUF:
    """A LoRA adapter converted to a GGUF adapter file, shipped beside the base model."""

    name: str
    path: Path
    sha256: str
    size_bytes: int
    n_pairs: int
    scales: tuple[float, ...]
    source_sha256: str  # the PEFT folder's content hash

    def to_json(self) -> dict:
        return {"file": self.path.name, "path": str(self.path), "sha256": self.sha256, "size_bytes": self.size_bytes,
                "n_pairs": self.n_pairs, "scales": list(self.scales), "source_sha256": self.source_sha256}


@dataclass(frozen=True)
class ProjectorGGUF:
    """The vision projector of a vision-language source (llama.cpp's mmproj GGUF), shipped in every bundle."""

    path: Path
    sha256: str
    projector_type: str
    outtype: str
    size_bytes: int
    compute_bytes: int  # the compute buffer libmtmd reserved when it loaded the file (fit counts it)

    def to_json(self) -> dict:
        return {"file": self.path.name, "path": str(self.path), "sha256": self.sha256,
                "projector_type": self.projector_type, "outtype": self.outtype, "size_bytes": self.size_bytes,
                "compute_bytes": self.compute_bytes}


@dataclass(frozen=True)
class Fits:
    """The fit of each line's variants onto the profiles (no host calibration: manifests must not depend on
    timing noise), and the profile facts a manifest records."""

    lines: dict[str, FitResult]
    profiles: dict[str, dict]


@dataclass(frozen=True)
class Bundle:
    """A bundle made in its step folder (the folder and its archive), ready to be published."""

    name: str  # the folder's name: the profile, or profile+line
    profile: str
    line: str
    variant: str
    folder: Path
    files: dict[str, str]  # path in the folder -> sha256 (manifest.json included)
    manifest_sha256: str
    archive: Path | None = None
    archive_sha256: str | None = None


@dataclass(frozen=True)
class StepRecord:
    step: str
    label: str
    key: str
    status: str  # "ran", "cached", "skipped"; "checked"/"computed" for the uncached source check and fit
    seconds: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class BundleSummary:
    profile: str
    line: str
    variant: str | None
    folder: Path | None
    archive: Path | None = None
    reason: str = ""
    manifest_sha256: str | None = None  # pins the bundle: `edgepack verify --expect`


@dataclass(frozen=True)
class BuildResult:
    output_dir: Path
    steps: list[StepRecord] = field(default_factory=list)
    variants: dict[str, Variant] = field(default_factory=dict)
    adapters: dict[str, AdapterGGUF] = field(default_factory=dict)
    projector: ProjectorGGUF | None = None  # the source's vision projector, shipped in every bundle
    fits: Fits | None = None
    bundles: list[BundleSummary] = field(default_factory=list)
    report: Path | None = None
    failures: list[str] = field(default_factory=list)  # constraint failures (build --check)
    only: str | None = None
    seconds: float = 0.0

    @property
    def picks(self) -> dict[str, dict[str, str | None]]:
        """line -> profile -> picked variant (None: nothing fits)."""
        return {line: dict(res.picks) for line, res in self.fits.lines.items()} if self.fits else {}

    @property
    def ran(self) -> list[StepRecord]:
        return [s for s in self.steps if s.status == "ran"]

    @property
    def skipped(self) -> list[StepRecord]:
        return [s for s in self.steps if s.status == "skipped"]

    @property
    def nothing_to_do(self) -> bool:
        return not self.ran

    def to_json(self) -> dict:
        """``edgepack build --json``."""
        return {"output_dir": str(self.output_dir), "steps": [asdict(s) for s in self.steps],
                "variants": {name: v.to_json() for name, v in self.variants.items()},
                "adapters": {name: a.to_json() for name, a in self.adapters.items()},
                "picks": self.picks, "bundles": [_paths_as_text(asdict(b)) for b in self.bundles],
                "report": str(self.report) if self.report else None, "failures": list(self.failures),
                "only": self.only, "seconds": self.seconds,
                **({"projector": self.projector.to_json()} if self.projector else {})}


def _paths_as_text(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}
