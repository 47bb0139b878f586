"""`python evaluate/memory_recall.py ARGS` runs `ppllava-hermes bench memory_recall ARGS` (ppllava_hermes/recipes/bench/memory_recall.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
