"""`python evaluate/paired_pooling.py ARGS` runs `ppllava-hermes bench paired_pooling ARGS` (ppllava_hermes/recipes/bench/paired_pooling.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
