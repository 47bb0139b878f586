"""Benchmarks and checks run as scripts (``python -m evaluate.<name>``); results go to ``docs/results/``."""
