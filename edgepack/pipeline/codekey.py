"""What a cached step depends on besides its inputs and settings: the code it runs and the tools it calls.

The code of a step is the module its step function is defined in (``steps/<name>.py``) and every edgepack module
that one can import, directly or not, found by reading the sources (``source_closure``): imports inside
functions count, a package's ``__init__`` counts for every module in it (it runs first), and a module that lists
its folder's modules to import them (``pkgutil.iter_modules``, as ``convert/families`` does) brings its whole
package. So the key changes with any edit a step could execute, even when the version number does not (a
development install, a patched copy), and with nothing else: an edited report does not redo a conversion.

One import is not followed: ``importlib.import_module(name)`` with a name computed at run time. Its only use is
``isolate``'s child process, which imports the module of a function its caller passed in, and that caller imports
the function by name (``isolate.call(render_check, ...)``), so the function's module is in the closure already.
(``tests/unit`` checks that no other module of edgepack imports by a computed name.)

The tools are the third-party packages that code imports, each by its installed version; for llama.cpp also a
digest of the shared libraries llama-cpp-python loads (``hostfacts.llama_cpp_runtime``). Both are found from the
same closure, so no list is kept by hand.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the edgepack package
PIPELINE = __name__.rpartition(".")[0]  # "edgepack.pipeline"
# Not code a step runs, though every step module reaches them: the pipeline package's __init__ only re-exports
# the build's API (following it would make every step depend on every other step), and this module computes keys
# (what it imports, llama_cpp among them, is not called by a step).
NOT_STEP_CODE = frozenset({PIPELINE, __name__})


@functools.lru_cache(maxsize=None)
def _imports(path: Path) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """(absolute module names imported, relative imports as "level:module:names", whether it imports the modules
    of its folder by listing them)."""
    absolute, relative, by_name = [], [], False
    todo = list(ast.parse(path.read_bytes(), filename=str(path)).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse  # imports for type checkers only never run
            continue
        if isinstance(node, ast.Import):
            absolute += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ",".join(a.name for a in node.names)
            if node.level:
                relative.append(f"{node.level}:{node.module or ''}:{names}")
            else:
                absolute += [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("iter_modules", "walk_packages"):
            by_name = True
        todo += list(ast.iter_child_nodes(node))
    return tuple(absolute), tuple(relative), by_name


def _file_of(name: str, root: Path) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for f in (root / rel / "__init__.py", (root / rel).with_suffix(".py")):
        if f.is_file():
            return f
    return None


def source_closure(module: str, root: Path = ROOT) -> tuple[list[Path], list[str]]:
    """(the files of every edgepack module ``module`` can import, sorted; the top-level names of the other
    packages they import, sorted, the standard library left out).

    The modules in ``NOT_STEP_CODE`` are left out (unless asked for themselves)."""
    top = root.name
    seen: dict[str, Path] = {}
    third_party: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or not name or (name in NOT_STEP_CODE and name != module):
            continue
        if not (name == top or name.startswith(top + ".")):
            if name.split(".")[0] not in sys.stdlib_module_names and name != "__future__":
                third_party.add(name.split(".")[0])
            continue
        f = _file_of(name, root)
        if f is None:  # an attribute imported with `from pkg import name`, not a module
            continue
        seen[name] = f
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        package = name if f.name == "__init__.py" else name.rpartition(".")[0]
        absolute, relative, by_name = _imports(f)
        todo += list(absolute)
        for rel in relative:
            level, base, names = rel.split(":")
            anchor = package.split(".")[: len(package.split(".")) - int(level) + 1]
            base = ".".join(anchor + ([base] if base else []))
            todo += [base] + [f"{base}.{n}" for n in names.split(",")]
        if by_name:  # imports by name: every module of this package may run
            todo += [top + "." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                     for p in f.parent.rglob("*.py")]
    return sorted(set(seen.values())), sorted(third_party)


@functools.lru_cache(maxsize=None)
def code_key(module: str, root: Path = ROOT) -> str:
    """A digest of the edgepack code a step defined in ``module`` can run (``source_closure``)."""
    digest = hashlib.sha256()
    for f in source_closure(module, root)[0]:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def tools_key(module: str) -> dict[str, str | None]:
    """The versions of the third-party packages a step defined in ``module`` imports (None: not installed); for
    llama.cpp the runtime's version and library digest (``llama_cpp_runtime``)."""
    from ..hostfacts import llama_cpp_runtime

    out: dict[str, str | None] = {}
    for name in source_closure(module)[1]:
        if name == "llama_cpp":
            out.update(llama_cpp_runtime())
        else:
            out[name] = _version(name)
    return out


@functools.lru_cache(maxsize=None)
def _version(import_name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    dists = _distributions().get(import_name) or [import_name]
    try:
        return version(dists[0])
    except PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    """Import name -> the distributions that install it (numpy -> numpy, yaml -> PyYAML)."""
    from importlib.metadata import packages_distributions

    return packages_distributions()
