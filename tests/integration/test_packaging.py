"""edgepack as users get it: a non-editable install (profiles and the eval text as package data), Python 3.10
(tomli), and the example CI workflow compiling llama.cpp the way the Makefile does.

The install tests build a wheel from a copy of the sources (what `pip install .` does) and install it into a
fresh venv with --no-deps --no-index, so they exercise the installed package, not the working tree. The 3.11 one
takes the dependencies from this environment (offline); the 3.10 one has pip resolve them for 3.10 (PyPI).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
WORKFLOW = ROOT / ".github" / "workflows" / "edgepack-build.example.yml"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def makefile_vars() -> dict[str, str]:
    """`NAME := value` assignments of the Makefile (continuation lines joined)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return {m[1]: " ".join(m[2].split()) for m in re.finditer(r"^([A-Z_]+)\s*:?=\s*(.*)$", text, re.M)}


# --- the example workflow and the Makefile compile llama.cpp alike ----------------------------------

def test_example_workflow_builds_llama_cpp_like_the_makefile():
    """The workflow compiles llama-cpp-python once with the Makefile's portable flags (no -march=native: AMX
    kernels crash on AMX Xeons), caches the wheel, and every job installs edgepack against that wheel."""
    make = makefile_vars()
    flow = yaml.safe_load(WORKFLOW.read_text())
    env = flow["env"]
    assert env["LLAMA_CPP_VERSION"] == make["LLAMA_CPP_VERSION"]
    assert env["LLAMA_CMAKE_ARGS"].split() == make["LLAMA_CMAKE_ARGS"].split()
    assert "-DGGML_NATIVE=OFF" in make["LLAMA_CMAKE_ARGS"].split()
    assert {f"-DGGML_AMX_{k}=OFF" for k in ("TILE", "INT8", "BF16")} <= set(make["LLAMA_CMAKE_ARGS"].split())
    # the package pins the version both compile
    pins = [Requirement(r) for r in pyproject()["project"]["dependencies"]]
    assert [str(r.specifier) for r in pins if r.name == "llama-cpp-python"] == [f"=={make['LLAMA_CPP_VERSION']}"]
    # the Makefile's wheel rule and the workflow's runtime job use those variables
    rule = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    assert re.search(r'CMAKE_ARGS="\$\(LLAMA_CMAKE_ARGS\)".*pip.* wheel .*llama-cpp-python==\$\(LLAMA_CPP_VERSION\)',
                     rule)
    jobs = flow["jobs"]
    runtime = jobs["runtime"]["steps"]
    compile_runs = [s["run"] for s in runtime if "pip wheel" in s.get("run", "")]
    assert len(compile_runs) == 1
    assert 'CMAKE_ARGS="$LLAMA_CMAKE_ARGS"' in compile_runs[0]
    assert '"llama-cpp-python==$LLAMA_CPP_VERSION"' in compile_runs[0]
    cache = next(s for s in runtime if s.get("uses", "").startswith("actions/cache@"))
    key_step = next(s for s in runtime if s.get("id") == "key")
    assert "steps.key.outputs.key" in cache["with"]["key"]
    assert "$LLAMA_CPP_VERSION" in key_step["run"] and '"$LLAMA_CMAKE_ARGS" | sha256sum' in key_step["run"]
    assert cache["with"]["path"] == "wheels" and any(
        s.get("uses", "").startswith("actions/upload-artifact@") and s["with"]["path"] == "wheels/" for s in runtime)

    def needs(job: str) -> set[str]:
        direct = jobs[job].get("needs", [])
        direct = [direct] if isinstance(direct, str) else direct
        return set(direct).union(*(needs(j) for j in direct)) if direct else set()

    installs = 0
    for name, job in jobs.items():
        for i, step in enumerate(job["steps"]):
            for line in step.get("run", "").splitlines():
                if re.search(r"\bpip install\b.*\bedgepack\b", line):
                    installs += 1
                    assert "--find-links wheels" in line, f"{name}: {line}"
                    assert "runtime" in needs(name), f"{name} installs edgepack without the runtime job"
                    assert any(s.get("uses", "").startswith("actions/download-artifact@")
                               and s["with"]["name"] == "llama-cpp-python-wheel" for s in job["steps"][:i]), name
    assert installs == 4  # build, plan, unit, collect


# --- Python 3.10: tomli -------------------------------------------------------------------------------

def test_tomli_is_a_dependency_before_python_311():
    """tomllib is 3.11+; requires-python says 3.10: every `import tomllib` falls back to tomli, which the
    package requires exactly where tomllib is missing."""
    assert pyproject()["project"]["requires-python"] == ">=3.10"
    [tomli] = [Requirement(r) for r in pyproject()["project"]["dependencies"] if Requirement(r).name == "tomli"]
    assert tomli.marker.evaluate({"python_version": "3.10"}) and not tomli.marker.evaluate({"python_version": "3.11"})
    importers = []
    for path in sorted((ROOT / "edgepack").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "tomllib" for a in node.names):
                importers.append(path.name)
            if isinstance(node, ast.Try) and any(isinstance(n, ast.Import) and n.names[0].name == "tomllib"
                                                 for n in node.body):
                fallback = [n for h in node.handlers for n in h.body if isinstance(n, ast.Import)]
                assert [(a.name, a.asname) for n in fallback for a in n.names] == [("tomli", "tomllib")], path
    assert importers, "no module reads TOML?"


# --- a non-editable install -----------------------------------------------------------------------------

def edgepack_wheel(tmp: Path) -> Path:
    """`pip wheel .` of a copy of what an sdist carries (the working tree is not touched), offline."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "edgepack", src / "edgepack", ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-q", src,
         "-w", tmp / "wheels"], cwd=tmp)
    [wheel] = (tmp / "wheels").glob("edgepack-*.whl")
    return wheel


def new_venv(python: str | Path, venv: Path, wheel: Path) -> Path:
    """A venv of ``python`` with the edgepack wheel in it and nothing else; returns its interpreter."""
    run([python, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps",
         "--no-index", wheel], cwd=venv.parent)
    return venv / "bin" / "python"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEPACK_", "PYTHON"))}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def run(args: list, cwd: Path, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=clean_env(),
                         timeout=600, **kw)
    assert res.returncode == 0, f"{args}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def venv_site_packages(venv: Path) -> Path:
    [site] = glob.glob(str(venv / "lib" / "python3.*" / "site-packages"))
    return Path(site)


def check_installed_commands(venv: Path, tmp: Path) -> None:
    """The README's commands from the venv's console script, in a folder that is not the repository."""
    exe = venv / "bin" / "edgepack"
    where = run([venv / "bin" / "python", "-c", "import edgepack; print(edgepack.__file__)"], cwd=tmp).stdout
    assert Path(where.strip()).is_relative_to(venv), where  # the installed copy, not the working tree
    listed = run([exe, "profiles", "list", "--json"], cwd=tmp).stdout
    assert "pixel-8" in {p["name"] for p in json.loads(listed)}
    fit = json.loads(run([exe, "fit", "--config", DEMO / "model" / "config.json", "--quant", "Q4_K_M", "-p", "pixel-8",
                          "--json"], cwd=tmp).stdout)
    assert fit["picks"]["pixel-8"]
    out = tmp / "out"
    built = json.loads(run([exe, "build", DEMO / "edgepack.toml", "-o", out, "-t", "Q4_0", "-p", "pixel-8", "--json"],
                           cwd=tmp).stdout)
    assert not built["failures"] and not [s for s in built["steps"] if s["status"] == "skipped"]
    run([exe, "verify", out / "bundles" / "pixel-8"], cwd=tmp)


@pytest.mark.slow
def test_non_editable_install_has_everything(tmp_path):
    """`pip install .` (a wheel, not editable) then `edgepack profiles list`, `fit --config ... -p pixel-8` and a
    `build` of the demo: the profiles and the built-in eval text must come with the package."""
    venv = tmp_path / "v"
    new_venv(sys.executable, venv, edgepack_wheel(tmp_path))
    # The dependencies come from this interpreter's site-packages (a path line, so its editable edgepack finder
    # is not loaded): the venv's own edgepack is the one imported.
    (venv_site_packages(venv) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check_installed_commands(venv, tmp_path)


def python_310() -> str | None:
    """A CPython 3.10: $EDGEPACK_TEST_PYTHON310, python3.10 on PATH, or pyenv's (this project's machines carry
    pyenv's 3.10; Debian's bookworm has only 3.11, and no PyPI or npm package ships a 3.10 that installs
    offline)."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [os.environ.get("EDGEPACK_TEST_PYTHON310"), shutil.which("python3.10"),
                  *sorted(glob.glob(str(pyenv_root / "versions" / "3.10.*" / "bin" / "python3.10")), reverse=True)]
    for c in filter(None, candidates):  # a pyenv shim may be on PATH without the version being selected
        probe = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 10)":
            return c
    return None


@pytest.mark.slow
def test_python_310_install_runs_the_commands(tmp_path):
    """requires-python is >=3.10: on 3.10 (no tomllib) the wheel installs with its dependencies (tomli among
    them, from PyPI like the README's set-up), and profiles, fit and build run."""
    python = python_310()
    if python is None:
        pytest.skip("no Python 3.10 interpreter (set EDGEPACK_TEST_PYTHON310 to one)")
    venv = tmp_path / "v310"
    vpy = new_venv(python, venv, edgepack_wheel(tmp_path))
    assert run([vpy, "-c", "import sys; print(sys.version_info[:2])"], cwd=tmp_path).stdout.strip() == "(3, 10)"
    # llama-cpp-python is a ctypes binding (its wheel is py3-none): this environment's copy serves 3.10 too, and
    # spares a 5-minute compile. Everything else is resolved for 3.10 by pip, tomli included.
    import llama_cpp

    runtime = tmp_path / "llama-runtime"
    runtime.mkdir()
    (runtime / "llama_cpp").symlink_to(Path(llama_cpp.__file__).parent)
    (venv_site_packages(venv) / "llama_runtime.pth").write_text(f"{runtime}\n")
    deps = [r for r in pyproject()["project"]["dependencies"] if Requirement(r).name != "llama-cpp-python"]
    llama_deps = [r for r in requires("llama-cpp-python") if "extra ==" not in r]  # what the binding imports
    run([sys.executable, "-m", "pip", "--python", vpy, "install", "-q", "--disable-pip-version-check", *deps,
         *llama_deps], cwd=tmp_path)
    assert run([vpy, "-c", "import tomli, edgepack.config.tomlfile as c; print(c.tomllib.__name__)"],
               cwd=tmp_path).stdout.strip() == "tomli"
    check_installed_commands(venv, tmp_path)
