"""`python train/train_dmc.py ARGS` runs `ppllava-hermes train train_dmc ARGS` (ppllava_hermes/recipes/train/train_dmc.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
