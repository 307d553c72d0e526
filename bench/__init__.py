"""Benchmarks behind `scredge bench`: latency of real generation through any runner, and
SCR's own cost (the same weights with and without SCR layers)."""
