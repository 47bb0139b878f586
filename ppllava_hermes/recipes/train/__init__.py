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


def run_training(step_fn, params, *, steps: int, lr: float, warmup: int, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.01, model=None, start: float | None = None, max_minutes: float | None = None,
                 stop_message: str = "stopping at step {step}: time limit {max_minutes} min", log_every: int = 0,
                 on_log=None, eval_every: int = 0, evaluate=None, lr_at=None,
                 after_step=None) -> tuple[list[dict], int]:
    """The ShapesWorld trainers' step loop (stages 0-5): returns ``(validation log, steps done)``.

    Optimizer ``AdamW(params, lr, betas, weight_decay)`` with :func:`warmup_cosine` ``(warmup, steps)``
    (both fresh per call), or, with ``lr_at``, no scheduler: ``lr_at(step)`` is the rate of step ``step``,
    set on every parameter group just before ``optimizer.step()`` (stages 3-5, whose schedule also follows
    the time used; ``lr`` and ``warmup`` are then only the optimizer's initial rate and unused). For
    ``step`` in ``1..steps``:

    1. ``model.train()`` (when ``model`` is given: an evaluation may have left it in eval mode);
    2. ``loss, info = step_fn(step)``: build the batch, run the forward, return the scalar loss to
       minimise (auxiliary losses included) and whatever ``on_log`` wants to show (``info``);
    3. ``zero_grad(set_to_none=True)``, ``loss.backward()``, ``clip_grad_norm_(params, 1.0)``,
       ``optimizer.step()``, ``scheduler.step()`` (with ``lr_at``: the rate set before the step instead);
    4. every ``log_every`` steps (0: never): ``on_log(step, loss, info, lr, minutes)``, ``lr`` the rate
       the next step will use (``scheduler.get_last_lr()[0]``), ``minutes`` since ``start``;
    5. every ``eval_every`` steps (0: never): ``res = evaluate(step)``, ``{"step": step, **res}`` is
       appended to the log and ``"  val: " + json.dumps(res)`` printed;
    6. ``after_step(step)`` when given (periodic checkpoints);
    7. with ``max_minutes`` (None: no limit), once more than that has passed since ``start`` (default:
       this call; trainers pass their own start, so model loading and earlier stages count):
       ``stop_message.format(step=step, max_minutes=max_minutes)`` is printed and the loop ends.

    ``params`` is a list (the optimizer and the clipping both read it); ``steps`` >= 1 (the schedule
    divides by it). Saving, the final evaluation and the report stay with the trainer.
    """
    import json
    import time

    import torch

    start = time.time() if start is None else start
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
    sched = warmup_cosine(opt, warmup, steps) if lr_at is None else None
    log: list[dict] = []
    step = 0
    for step in range(1, steps + 1):
        if model is not None:
            model.train()
        loss, info = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        opt.step()
        if sched is not None:
            sched.step()
        if log_every and step % log_every == 0:
            rate = sched.get_last_lr()[0] if sched is not None else opt.param_groups[0]["lr"]
            on_log(step, loss, info, rate, (time.time() - start) / 60)
        if eval_every and step % eval_every == 0:
            res = evaluate(step)
            log.append({"step": step, **res})
            print(f"  val: {json.dumps(res)}", flush=True)
        if after_step is not None:
            after_step(step)
        if max_minutes is not None and (time.time() - start) / 60 > max_minutes:
            print(stop_message.format(step=step, max_minutes=max_minutes), flush=True)
            break
    return log, step



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
