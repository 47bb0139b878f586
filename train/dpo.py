"""`python train/dpo.py ARGS` runs `ppllava-hermes train dpo ARGS` (ppllava_hermes/recipes/train/dpo.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
