"""Helpers for tests, examples and benchmarks: tiny offline targets. Not used by training itself."""
