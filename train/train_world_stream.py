"""`python train/train_world_stream.py ARGS` runs `ppllava-hermes train train_world_stream ARGS` (ppllava_hermes/recipes/train/train_world_stream.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
