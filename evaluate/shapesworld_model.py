"""`python evaluate/shapesworld_model.py ARGS` runs `ppllava-hermes bench shapesworld_model ARGS` (ppllava_hermes/recipes/bench/shapesworld_model.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
