"""Helpers the test tiers, benchmarks/ and scripts/ share: import them as ``tests.support.<module>``."""
