"""The GRPO math: group-normalised advantages, dynamic sampling, task balance, and PPO's
clipped surrogate with the KL estimators (World-Gymnast / SimpleVLA-RL); ``policy.grpo`` uses
these and re-exports them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(P, G) outcome rewards -> (P, G) advantages: the per-group z-score."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = (
        rewards.std(dim=1, keepdim=True, unbiased=True)
        if rewards.shape[1] > 1
        else torch.zeros_like(mean)
    )
    return (rewards - mean) / (std + eps)


def keep_groups(rewards: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """(P, G) -> (P,) bool: groups whose success rate lies in [low, high] (dynamic sampling)."""
    rate = rewards.float().mean(dim=1)
    return (rate >= low) & (rate <= high)


def task_balance_weights(group_tasks: Sequence[str], keep: torch.Tensor) -> torch.Tensor:
    """(P,) weights on the kept groups' advantages: kept / (tasks kept * the task's kept), so
    each task with kept groups carries an equal share of the update and the weights of the kept
    groups still sum to their count (the step size stays that of an unweighted update)."""
    if len(group_tasks) != len(keep):
        raise ValueError(f"{len(group_tasks)} group tasks for {len(keep)} groups")
    pairs = list(zip(group_tasks, keep.tolist(), strict=True))
    count = Counter(t for t, k in pairs if k)
    kept = sum(count.values())
    return torch.tensor(
        [kept / (len(count) * count[t]) if k else 0.0 for t, k in pairs], dtype=torch.float32
    )


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, dict]:
    """PPO's clipped objective with an asymmetric clip, token-mean; returns (loss, stats).

    ``logprobs`` / ``old_logprobs``: (M, N) per action token; ``advantages``: (M,) per rollout chunk.
    """
    logratio = logprobs - old_logprobs
    ratio = logratio.exp()
    adv = advantages[:, None].expand_as(ratio)  # (M, N)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        clipfrac = ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).float().mean()
        approx_kl = k3(logratio).mean()  # KL(pi_old || pi), >= 0
    return loss, {"clipfrac": float(clipfrac), "approx_kl": float(approx_kl)}


def reference_kl(reference, images, instructions, tokens, logprobs, temperature) -> torch.Tensor:
    """k3 estimate of KL(pi || pi_ref) on the sampled tokens, token-mean (differentiable in
    ``logprobs``; the reference is frozen)."""
    with torch.no_grad():
        ref = reference.token_stats(images, instructions, tokens, temperature=temperature).logprobs
    return k3(ref.to(logprobs.dtype) - logprobs).mean()


def k3(logratio: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL from per-sample log-ratios log(q/p) under p: r - 1 - log r >= 0."""
    return logratio.exp() - 1 - logratio
