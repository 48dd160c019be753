"""The learning-rate schedule every trainer uses: linear warmup, then cosine decay to a floor.

transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` has the same cosine but starts its
warmup at 0 (the first step does nothing); this one starts at ``1 / warmup_steps``, as the
trainers here always have.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, floor: float) -> float:
    """The multiplier of the base learning rate at ``step`` (0-based).

    Steps ``0 .. warmup_steps-1`` ramp ``(step + 1) / warmup_steps``; then a half cosine from 1 at
    ``warmup_steps`` to ``floor`` at ``total_steps`` (held there after). ``floor=1``: constant
    after warmup.
    """
    warmup = max(1, warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, floor: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` on ``optimizer`` following :func:`warmup_cosine_factor`."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1] (a fraction of the base lr), got {floor}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, floor)
    )
