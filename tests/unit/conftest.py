"""The unit tier imports neither torch nor llama.cpp (issue 15): it runs in seconds, and it is the tier that says
whether edgepack's own logic holds, whatever the heavy stack does.

Checked, not hoped: a unit test module whose import brings in torch or llama_cpp (directly, or through the edgepack
code it imports) is a collection error, and a unit test that imports either while it runs (its fixtures included)
errors at teardown, both naming the module. The check compares sys.modules before and after, so it is exact when
the unit tier runs on its own (`make test-unit`, `pytest tests/unit`); in a full run another tier may have imported
them first. Only this process is watched: a unit test's subprocesses are its own business, but keep them light.
Move a test that needs either to tests/integration (llama.cpp) or tests/fidelity (a transformers reference).
"""

import sys

import pytest

HEAVY = ("torch", "llama_cpp")
_BEFORE = pytest.StashKey[frozenset]()


def _loaded() -> frozenset:
    return frozenset(name for name in HEAVY if name in sys.modules)


def _refusal(where: str, new: frozenset) -> str:
    return (f"{where} imported {', '.join(sorted(new))}: the unit tier imports neither torch nor llama_cpp; move the "
            f"test to tests/integration (llama.cpp) or tests/fidelity (a transformers reference)")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    before = _loaded()
    report = yield
    new = _loaded() - before
    if new and report.passed:
        report.outcome = "failed"
        report.longrepr = _refusal(collector.nodeid, new)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_BEFORE] = _loaded()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "teardown":
        new = _loaded() - item.stash.get(_BEFORE, frozenset(HEAVY))
        if new and report.passed:
            report.outcome = "failed"
            report.longrepr = _refusal(item.nodeid, new)
    return report
