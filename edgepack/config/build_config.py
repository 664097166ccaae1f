"""The resolved build config: one frozen ``BuildConfig`` (and its ``AdapterSpec`` rows), made by ``resolve``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..source import Source


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path
    mode: str = "convert"
    scales: tuple[float, ...] = (1.0,)

    @property
    def converts(self) -> bool:
        return self.mode in ("convert", "both")

    @property
    def merges(self) -> bool:
        return self.mode in ("merge", "both")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """Everything one ``edgepack build`` needs, resolved. ``origins`` says where each value came from."""

    config_file: Path | None
    name: str
    source: Source
    outtype: str = "auto"
    mmproj: str = "auto"  # the vision projector: "auto", "none" or its type (config.options.MMPROJ)
    quants: tuple[str, ...] = ("Q8_0", "Q4_K_M")
    adapters: tuple[AdapterSpec, ...] = ()
    profiles: tuple[str, ...] = ()  # empty: every shipped profile
    profile_paths: tuple[Path, ...] = ()
    ctx: int = 2048
    min_tps: float | None = None
    max_kld: float | None = None
    # "auto" (computed on ``calibration``), "compare" (computed, and every type also built without it), an imatrix
    # file, or None (none)
    imatrix: str | Path | None = None
    calibration: str | Path = "builtin"  # text for a computed imatrix and the mixes' trials: a file, or built-in
    device_mixes: bool = False  # also a mix per named profile: the least KLD that fits it (<name>-MIX-<profile>)
    eval_text: Path | None = None  # text for perplexity / KLD (default: the built-in sample)
    eval_tokens: int = 2048
    threads: int = 2
    output_dir: Path = Path("dist")
    archive: str = "none"
    report: bool = True
    origins: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "origins":
                continue
            out[f.name] = _plain(getattr(self, f.name))
        out["origins"] = dict(sorted(self.origins.items()))
        return out


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Source):
        return value.to_json()
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
