"""Benchmark scripts: run each from the repository root as a module, `python -m benchmarks.NAME [options]`, so
that it imports the test helpers as `tests.support` (and a sibling benchmark as `benchmarks.NAME`)."""
