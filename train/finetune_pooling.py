"""`python train/finetune_pooling.py ARGS` runs `ppllava-hermes train finetune_pooling ARGS` (ppllava_hermes/recipes/train/finetune_pooling.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
