"""Benchmarks: ``python -m benchmarks.<name>`` prints a table of timings and
ratios against named baselines measured in the same run."""
