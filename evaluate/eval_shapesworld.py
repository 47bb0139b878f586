"""`python evaluate/eval_shapesworld.py ARGS` runs `ppllava-hermes bench eval_shapesworld ARGS` (ppllava_hermes/recipes/bench/eval_shapesworld.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
