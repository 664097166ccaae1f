"""``edgepack build``: one config -> pull -> convert -> (merge) -> quantize -> adapters -> eval/bench -> fit ->
bundle -> report, every step cached by the content hash of its inputs, settings, code and tools.

The package, by role:

* ``plan``: the model lines and the independent units of work (``plan``, ``matrix``: one CI job per unit);
* ``artifacts``: what steps make, as frozen dataclasses, and the typed ``BuildResult`` (JSON only at the edge);
* ``cache`` and ``codekey``: the step cache, and what a key holds besides inputs (the code a step can run and
  the versions of the tools it calls, both found from its module's imports);
* ``context``: what every step is handed (``BuildContext.step`` runs or reuses one step);
* ``steps/``: one module per step, each a short function that calls its stage directly;
* ``publish``: bundles and the report, made in their step folders, copied into ``bundles/`` and ``report/``;
* ``run``: the order of a build.

``edgepack build`` -> ``run.build`` -> ``steps.quantize.quantize_variant`` -> ``quantize.quantize``: every
stage is called by name, and one that fails to import fails the build (it is never a skipped step).
``build(only=KEY)`` runs one unit, so CI can fan a build out over runners; a final plain build finds every unit
in the (shared) cache and writes fit, bundles and report.

This ``__init__`` only re-exports (``codekey`` relies on that: it is no step's code).
"""

from .artifacts import BuildResult, BundleSummary, StepRecord, Variant
from .cache import CACHE_DIR, DONE, StepCache, content_key
from .plan import BASE_LINE, Line, Unit, lines, matrix, plan
from .run import build

__all__ = ["build", "plan", "matrix", "lines", "BuildResult", "BundleSummary", "StepRecord", "StepCache", "Unit",
           "Line", "Variant", "content_key", "CACHE_DIR", "DONE", "BASE_LINE"]
