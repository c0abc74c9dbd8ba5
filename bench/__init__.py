"""Benchmarks: side by side against the baselines, in one run."""
