"""`python evaluate/bench_streaming.py ARGS` runs `ppllava-hermes bench bench_streaming ARGS` (ppllava_hermes/recipes/bench/bench_streaming.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
