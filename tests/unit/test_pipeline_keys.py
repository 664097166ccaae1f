"""The build pipeline's structure (issue 15): a step's cache key covers the code it runs and the tools it calls,
found from its module's imports (never a hand-kept list); the path from `edgepack build` to a stage is plain
calls (no importlib, no signature introspection); one `atomic_dir`. Fast: no build runs here, and neither
llama.cpp nor torch is imported (the tools in a key: tests/integration/test_pipeline_tools.py)."""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest

from edgepack.fileio import atomic_dir, sweep_temp_files
from edgepack.pipeline.codekey import code_key, source_closure

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "edgepack"
STEPS = sorted(p.stem for p in (PKG / "pipeline" / "steps").glob("*.py") if p.stem != "__init__")


def closure(step: str, root: Path = PKG) -> set[str]:
    return {f.relative_to(root).as_posix() for f in source_closure(f"edgepack.pipeline.steps.{step}", root)[0]}


def test_a_steps_code_is_its_stage_not_the_others():
    convert, quantize, report = closure("convert"), closure("quantize"), closure("report")
    assert {"convert/core.py", "convert/checkpoint.py", "fileio.py", "pipeline/steps/convert.py"} <= convert
    assert "convert/families/llama.py" in convert  # registered by listing the package: all of it counts
    assert "quantize.py" in quantize and "report.py" in report
    assert not {"report.py", "quantize.py", "pipeline/steps/report.py", "pipeline/run.py"} & convert
    assert not {"report.py", "convert/core.py", "pipeline/steps/convert.py"} & quantize
    assert {"adapters/write.py", "convert/checkpoint.py"} <= closure("adapter")  # issue 12's case
    for step in STEPS:  # every step module is reached, and none reaches the order of a build or its siblings
        files = closure(step)
        assert f"pipeline/steps/{step}.py" in files and "pipeline/run.py" not in files
        assert "pipeline/__init__.py" not in files and "pipeline/codekey.py" not in files


def test_what_every_step_reaches_imports_no_stage():
    """The pipeline's own modules that every step imports (artifacts, cache, context, plan) reach no stage, not even
    inside a function: a stage there would be in every step's key (an edit to it would redo every step)."""
    for module in ("artifacts", "cache", "context", "plan"):
        files = {f.relative_to(PKG).as_posix() for f in source_closure(f"edgepack.pipeline.{module}")[0]}
        assert files <= {"__init__.py", "cilog.py", "progress.py", "fileio.py", "errors.py", "pipeline/artifacts.py",
                         "pipeline/cache.py", "pipeline/context.py", "pipeline/plan.py",
                         "quants.py"}, (module, sorted(files))  # quants: the type table plan names units by
    assert "evaluate.py" not in closure("convert") and "evaluate.py" in closure("evaluate")


def test_an_edit_changes_the_keys_of_the_steps_that_run_it_and_no_others(tmp_path):
    copy = tmp_path / "edgepack"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = {s: code_key(f"edgepack.pipeline.steps.{s}", copy) for s in STEPS}
    report = copy / "report.py"
    report.write_text(report.read_text() + "\n# an edit\n")
    code_key.cache_clear()
    after = {s: code_key(f"edgepack.pipeline.steps.{s}", copy) for s in STEPS}
    assert {s for s in STEPS if before[s] != after[s]} == {s for s in STEPS if "report.py" in closure(s, copy)}
    assert "report" in {s for s in STEPS if before[s] != after[s]} and before["convert"] == after["convert"]


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(getattr(node, "module", None) or "")} | {a.name for a in node.names}
        elif isinstance(node, ast.Call):
            out.add(getattr(node.func, "attr", getattr(node.func, "id", "")))
    return out


def test_the_build_path_has_no_importlib_or_introspection():
    """`edgepack build` -> `pipeline.run.build` -> a step -> its stage: calls a reader and a type checker follow."""
    files = [PKG / "cli" / "build.py", *sorted((PKG / "pipeline").rglob("*.py"))]
    for f in files:
        found = _calls(f) & {"importlib", "import_module", "__import__", "inspect", "signature"}
        assert not found or f.name == "codekey.py", (f, found)


def test_only_isolate_imports_by_a_computed_name():
    """codekey does not follow `importlib.import_module(name)`: it may stay only where the name is known to be in
    the closure already (isolate's child) or the package is listed (convert/families)."""
    users = {f.relative_to(PKG).as_posix() for f in PKG.rglob("*.py") if "import_module" in _calls(f)}
    assert users == {"isolate.py", "convert/families/__init__.py"}
    assert "iter_modules" in _calls(PKG / "convert" / "families" / "__init__.py")
    for f in PKG.rglob("*.py"):  # and every isolate.call names its function, so the function's module is reached
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "call" and \
                    getattr(node.func.value, "id", "") == "isolate":
                assert isinstance(node.args[0], ast.Name), f"{f.relative_to(PKG)}:{node.lineno}: pass the function"


def test_atomic_dir_builds_beside_then_renames(tmp_path):
    out = tmp_path / "bundle"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".bundle.") and not out.exists()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("one")
    assert (out / "sub" / "a.txt").read_text() == "one"
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:  # a failure leaves the old folder as it was
        (tmp / "b.txt").write_text("two")
        raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"] and (out / "sub" / "a.txt").is_file()
    with atomic_dir(out) as tmp:  # a success replaces it whole
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_what_a_killed_atomic_dir_leaves_is_swept(tmp_path):
    out = tmp_path / "x"
    writer = atomic_dir(out)
    tmp = writer.__enter__()  # entered, never left: as after kill -9
    (tmp / "f").write_text("half")
    assert sweep_temp_files(tmp_path) == [tmp.name] and list(tmp_path.iterdir()) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
