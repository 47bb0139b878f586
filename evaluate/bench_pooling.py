"""`python evaluate/bench_pooling.py ARGS` runs `ppllava-hermes bench bench_pooling ARGS` (ppllava_hermes/recipes/bench/bench_pooling.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
