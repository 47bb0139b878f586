"""`python evaluate/run_eval.py ARGS` runs `ppllava-hermes bench run_eval ARGS` (ppllava_hermes/recipes/bench/run_eval.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
