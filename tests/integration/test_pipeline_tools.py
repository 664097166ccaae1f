"""What a step's cache key holds besides code (issue 15): the versions of the tools the step's code imports, found
from its imports (llama.cpp as llama-cpp-python's version plus a digest of its libraries), and the eval step's
record carries every figure evaluate measures. tests/unit/test_pipeline_keys.py has the code side."""

from __future__ import annotations

from edgepack.pipeline.artifacts import Evaluation
from edgepack.pipeline.codekey import tools_key


def test_the_tools_a_step_calls_are_in_its_key():
    quantize, convert, report = (tools_key(f"edgepack.pipeline.steps.{s}") for s in ("quantize", "convert", "report"))
    import llama_cpp

    assert quantize["llama_cpp_python"] == llama_cpp.__version__ and len(quantize["libs"]) == 16
    assert convert["gguf"] and convert["numpy"] and "matplotlib" not in convert
    assert report["matplotlib"]


def test_quality_carries_every_figure_of_evaluate():
    from dataclasses import fields

    from edgepack.evaluate import EvalResult

    figures = {f.name for f in fields(EvalResult)} - {"model", "reference", "text", "seconds"}
    assert {f.name for f in fields(Evaluation)} == figures
