"""Benchmarks and checks (`ppllava-hermes bench NAME`, or `python evaluate/NAME.py` in a checkout); results go to `docs/results/`."""
