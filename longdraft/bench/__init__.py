"""Benchmarks (scripts, not tests): ``longdraft bench <name>``."""
