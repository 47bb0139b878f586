"""`python evaluate/bench_decoding.py ARGS` runs `ppllava-hermes bench bench_decoding ARGS` (ppllava_hermes/recipes/bench/bench_decoding.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
