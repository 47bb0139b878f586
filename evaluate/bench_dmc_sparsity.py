"""`python evaluate/bench_dmc_sparsity.py ARGS` runs `ppllava-hermes bench bench_dmc_sparsity ARGS` (ppllava_hermes/recipes/bench/bench_dmc_sparsity.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
