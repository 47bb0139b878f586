"""Training recipes (`ppllava-hermes train NAME`, or `python train/NAME.py` in a checkout); the library never imports them."""


def warmup_cosine(optimizer, warmup: int, steps: int):
    """LambdaLR: a linear warm-up over ``warmup`` steps times a cosine decay over all ``steps`` (to 0).

    The ShapesWorld VLM scripts' schedule (the shipped checkpoints were trained with it); note it
    differs from ``transformers.get_cosine_schedule_with_warmup``, whose cosine starts after the warm-up.
    """
    import math

    import torch

    def factor(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

