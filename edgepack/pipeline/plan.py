"""The plan of a build: its model lines and its independent units of work.

A line is the base model, or the base with one adapter merged at one scale. A unit is what one CI job can do on
its own (``edgepack build --only KEY``): one variant (quantize + eval + bench of one quant type on one line), one
device's mix (``[quantize] device_mixes``: the mix of least measured KLD that fits the device, then eval + bench)
or one adapter conversion. With ``[quantize] imatrix = "compare"`` each type is two units: without the importance
matrix (``<name>-<TYPE>``) and with it (``<name>-<TYPE>-imatrix``); a type that needs one is only the second. ``matrix`` is the plan as a GitHub Actions job matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: config's resolution is not code a step runs (settings reach keys as values)
    from ..config import AdapterSpec, BuildConfig

BASE_LINE = "base"


@dataclass(frozen=True)
class Line:
    """A model line: the base, or the base with one adapter merged at one scale."""

    name: str
    adapter: AdapterSpec | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class Unit:
    """One independent unit of work (a matrix entry)."""

    key: str
    kind: str  # "variant" | "mix" | "adapter"
    line: str
    quant: str | None = None
    adapter: str | None = None
    imatrix: bool | None = None  # "compare" builds: with (True) or without (False) the line's imatrix
    profile: str | None = None  # a "mix" unit: the device it is made for


def fmt_scale(scale: float) -> str:
    return f"{scale:g}"


def lines(config: BuildConfig) -> list[Line]:
    out = [Line(BASE_LINE)]
    for a in config.adapters:
        if a.merges:
            out += [Line(f"{a.name}-x{fmt_scale(s)}", a, s) for s in a.scales]
    return out


def plan(config: BuildConfig) -> list[Unit]:
    """The independent units of a build, in build order."""
    from ..quants import quant_type

    units = []
    for line in lines(config):
        prefix = "" if line.name == BASE_LINE else f"{line.name}-"
        for q in config.quants:
            key = prefix + q.lower()
            if config.imatrix != "compare":
                units.append(Unit(key=key, kind="variant", line=line.name, quant=q))
                continue
            if not quant_type(q).needs_imatrix:
                units.append(Unit(key=key, kind="variant", line=line.name, quant=q, imatrix=False))
            units.append(Unit(key=f"{key}-imatrix", kind="variant", line=line.name, quant=q, imatrix=True))
        if config.device_mixes:
            units += [Unit(key=f"{prefix}mix-{p}", kind="mix", line=line.name, quant=f"MIX-{p}", profile=p)
                      for p in config.profiles]
    for a in config.adapters:
        if a.converts:
            units.append(Unit(key=f"adapter-{a.name}", kind="adapter", line=BASE_LINE, adapter=a.name))
    return units


def matrix(config: BuildConfig) -> dict:
    """A GitHub Actions job matrix: ``{"include": [{"key": ..., ...}]}``."""
    return {"include": [{k: v for k, v in asdict(u).items() if v is not None} for u in plan(config)]}


def variant_name(config: BuildConfig, unit: Unit) -> str:
    """The variant's name: the file stem of its GGUF and of the model in its bundles."""
    line = "" if unit.line == BASE_LINE else f"-{unit.line}"
    return f"{config.name}{line}-{unit.quant}" + ("-imatrix" if unit.imatrix else "")


def line_model_name(config: BuildConfig, line: str) -> str:
    """The model name a line's bundles carry."""
    return config.name if line == BASE_LINE else f"{config.name}-{line}"


def bundle_folder_name(profile: str, line: str) -> str:
    return profile if line == BASE_LINE else f"{profile}+{line}"
