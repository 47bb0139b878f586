"""`python train/train_world.py ARGS` runs `ppllava-hermes train train_world ARGS` (ppllava_hermes/recipes/train/train_world.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
