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



#: Pooling kernels the ShapesWorld VLM is trained with (the demo's (1, 2, 2) and a temporal (2, 2, 2)).
WORLD_KERNELS: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (2, 2, 2))


class WorldPoolingStages:
    """The session's pooling stages for the ShapesWorld trainers: one place for their modes and kernels.

    ``stage(pool, kernel, query)``: None for ``pool`` None; "avg": plain 3-D average pooling; "clip": weights
    from the ShapesWorld CLIP ``scorer`` against ``query`` (default ``default_query``). Each kernel's pooling
    module is built once (``padding="replicate"``, as the session's).
    """

    def __init__(self, scorer=None, default_query: str | None = None) -> None:
        from ppllava_hermes.pooling import PoolingConfig, PromptGuidedPooling

        self.scorer = scorer
        self.default_query = default_query
        self.poolers = {k: PromptGuidedPooling(PoolingConfig(kernel=k, padding="replicate")) for k in WORLD_KERNELS}

    def stage(self, pool: str | None, kernel: tuple[int, int, int] = (1, 2, 2), query: str | None = None):
        from ppllava_hermes.streaming.pooling_stage import PoolingStage

        if pool is None:
            return None
        if pool == "avg":
            return PoolingStage(self.poolers[kernel])
        if pool != "clip":
            raise ValueError(f"pooling mode {pool!r} not in (None, 'avg', 'clip')")
        return PoolingStage(self.poolers[kernel], self.scorer, query or self.default_query)
