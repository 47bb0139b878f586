"""`python train/train_clip.py ARGS` runs `ppllava-hermes train train_clip ARGS` (ppllava_hermes/recipes/train/train_clip.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
