"""`python evaluate/real_lm_memory.py ARGS` runs `ppllava-hermes bench real_lm_memory ARGS` (ppllava_hermes/recipes/bench/real_lm_memory.py)."""
from ppllava_hermes.recipes import run_script

if __name__ == "__main__":
    run_script(__file__)
