"""Finetune the VLM judge on success-labelled episodes and calibrate its threshold.

Examples are the judge's own image of each labelled episode (its final frame, or the last frames
tiled) with the episode's ``success`` label, plus optional early-frame negatives. Batches are
class-balanced (half successes, half failures) and augmented with the artefacts world-model
rollouts show (blur, low resolution, noise, colour shifts, small shifts), because the judge will
score imagined rollouts after training on real ones.

Data parallelism (launched by torchrun / ``accelerate launch``; ``policy.distributed``):
``batch_size`` is the global batch; every rank draws and augments the same global batch with the
same CPU generator and keeps its contiguous slice; each slice's loss is weighted by its share of
the batch, and the gradients are summed across ranks before clipping, so every rank takes the
1-process step. Explicit sums rather than DistributedDataParallel because the loss goes through
``VLMJudge.yes_no_margin``, not the model's ``forward`` DDP hooks. The logged loss is the global
batch's; rank 0 alone shows progress, and calibrates the threshold on the validation episodes,
then hands it (and the validation metrics) to the other ranks, so every rank returns the same
judge.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gymnast_common.schedule import warmup_cosine
from reward.config import THRESHOLD_RULES, AugmentConfig, JudgeTrainConfig, VLMJudgeConfig
from reward.judge import SuccessJudge
from reward.metrics import binary_metrics
from reward.vlm import VLMJudge, shift_images, video_to_image

log = logging.getLogger(__name__)


class JudgeDataError(ValueError):
    """The labelled episodes cannot train or calibrate a judge (empty, one class, ...)."""


@dataclass
class JudgeExamples:
    images: torch.Tensor  # (N, 3, S, S) uint8
    instructions: list[str]
    labels: torch.Tensor  # (N,) float32 {0, 1}
    early: torch.Tensor  # (N,) bool: an early-frame negative, not an episode's own label
    n_episodes: int
    n_skipped: int


def labelled(episodes: Sequence[Any]) -> tuple[list[Any], int]:
    """Episodes with a success label, and how many had none (``success is None``)."""
    kept = [e for e in episodes if e.success is not None]
    return kept, len(episodes) - len(kept)


def _require_both_classes(labels: Sequence[bool], what: str) -> None:
    n_pos = int(sum(bool(x) for x in labels))
    n_neg = len(labels) - n_pos
    if len(labels) == 0:
        raise JudgeDataError(
            f"no success-labelled episodes in the {what} (success is None for all)"
        )
    if n_pos == 0 or n_neg == 0:
        raise JudgeDataError(
            f"the {what} has a single class ({n_pos} successes, {n_neg} failures); "
            "a judge needs both successes and failures"
        )


def build_examples(
    judge: VLMJudge, episodes: Sequence[Any], train: JudgeTrainConfig
) -> JudgeExamples:
    kept, skipped = labelled(episodes)
    _require_both_classes([e.success for e in kept], "training episodes")
    c = judge.config
    images, texts, labels, early = [], [], [], []

    def add(video: np.ndarray, text: str, label: bool, is_early: bool) -> None:
        img = video_to_image(video, c.frame_stride, c.frames_per_image, c.image_size)
        images.append((img * 255).round().to(torch.uint8))
        texts.append(text)
        labels.append(float(label))
        early.append(is_early)

    for e in kept:
        frames = np.asarray(e.frames)
        add(frames, e.instruction, bool(e.success), False)
        last_early = min(int(train.early_frac * (len(frames) - 1)), len(frames) - 2)
        if train.early_negatives and last_early >= 0:
            ts = np.unique(np.linspace(0, last_early, train.early_per_episode).round().astype(int))
            for t in ts:
                add(frames[: t + 1], e.instruction, False, True)
    return JudgeExamples(
        images=torch.stack(images),
        instructions=texts,
        labels=torch.tensor(labels, dtype=torch.float32),
        early=torch.tensor(early, dtype=torch.bool),
        n_episodes=len(kept),
        n_skipped=skipped,
    )


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """Per-image separable Gaussian blur; sigma (B,) may be 0 (no blur)."""
    b, c, h, w = x.shape
    r = max(1, math.ceil(2 * sigma_max))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))  # (B, 2r+1)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 2r+1)
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="reflect")  # (1, B*C, H+2r, W+2r)
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)  # horizontal
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)  # vertical
    return y.reshape(b, c, h, w)


def augment(x: torch.Tensor, aug: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, S, S) float in [0, 1] -> same, with world-model-like artefacts."""
    if not aug.enabled:
        return x
    b, _, s, _ = x.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    if aug.shift_px > 0:
        d = torch.randint(-aug.shift_px, aug.shift_px + 1, (2, b), generator=gen)
        x = shift_images(x, d[0], d[1])
    lowres = torch.rand(b, generator=gen) < aug.lowres_prob
    sizes = uniform(aug.lowres_min_frac * s, s).round().int()
    x = x.clone()
    for i in torch.nonzero(lowres).flatten().tolist():
        small = F.interpolate(x[i : i + 1], size=int(sizes[i]), mode="bilinear", antialias=True)
        x[i] = F.interpolate(small, size=s, mode="bilinear", align_corners=False)[0]
    if aug.blur_sigma_max > 0:
        sigma = uniform(0.0, aug.blur_sigma_max) * (torch.rand(b, generator=gen) < aug.blur_prob)
        x = _gaussian_blur(x, sigma, aug.blur_sigma_max)
    gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = gray + (x - gray) * uniform(1 - aug.saturation, 1 + aug.saturation).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * uniform(1 - aug.contrast, 1 + aug.contrast).view(b, 1, 1, 1)
    x = x * uniform(1 - aug.brightness, 1 + aug.brightness).view(b, 1, 1, 1)
    noise_std = uniform(0.0, aug.noise_std_max).view(b, 1, 1, 1)
    x = x + noise_std * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0)


def _balanced_batch(
    ex: JudgeExamples, batch_size: int, early_frac: float, gen: torch.Generator
) -> torch.Tensor:
    """Half successes; the other half failures, ``early_frac`` of it early-frame negatives."""
    pos = torch.nonzero((ex.labels == 1) & ~ex.early).flatten()
    neg_final = torch.nonzero((ex.labels == 0) & ~ex.early).flatten()
    neg_early = torch.nonzero(ex.early).flatten()
    half = batch_size // 2
    n_early = round(half * early_frac) if len(neg_early) else 0

    def draw(pool: torch.Tensor, k: int) -> torch.Tensor:
        return pool[torch.randint(len(pool), (k,), generator=gen)]

    return torch.cat([draw(pos, half), draw(neg_final, half - n_early), draw(neg_early, n_early)])


def finetune_judge(
    judge_or_config: VLMJudge | VLMJudgeConfig,
    episodes: Sequence[Any],
    config: JudgeTrainConfig,
    val_episodes: Sequence[Any] | None = None,
    progress: bool = True,
) -> tuple[VLMJudge, dict[str, Any]]:
    """Train the judge on labelled episodes; with ``val_episodes``, calibrate its threshold.

    Augmentation stays on the CPU (its generator too); the augmented batch moves to the judge's
    device (``config.device``; None keeps a given judge where it is).
    Returns the trained judge (in eval mode) and metrics (loss, speed, data counts, val F1).

    Launched with several processes it trains data-parallel (see the module docstring); each
    rank's judge then moves to its own GPU (``cuda:LOCAL_RANK``) even when ``config.device`` is
    None, and every rank returns the same judge, threshold included.
    """
    judge = _as_vlm_judge(judge_or_config, episodes)
    ctx, precision = _place_judge(judge, config, val_episodes)
    ex = build_examples(judge, episodes, config)
    if ex.n_skipped:
        log.warning(
            "skipped %d of %d episodes without a success label", ex.n_skipped, len(episodes)
        )
    losses, loss_ema, elapsed = _train_judge(judge, ex, config, ctx, precision, progress)
    metrics: dict[str, Any] = {
        "steps": config.steps,
        "steps_per_s": config.steps / elapsed,
        "train_time_s": elapsed,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_ema": loss_ema,
        **_example_counts(ex),
        "train_config": config.to_dict(),
        "device": str(judge.device),
        "precision": precision,
        "world_size": ctx.world_size,
    }
    if val_episodes is not None:
        metrics |= _calibrate_on_rank0(judge, val_episodes, ctx, config.threshold_rule)
    metrics["threshold"] = judge.config.threshold
    return judge, metrics


def _place_judge(
    judge: VLMJudge, config: JudgeTrainConfig, val_episodes: Sequence[Any] | None
) -> tuple[Any, str]:
    """Set up data parallelism and move the judge to its device (the same weights on every
    rank); checks the batch and the validation episodes first. Returns (ctx, precision)."""
    from policy.distributed import DistContext
    from robot_bridge.devices import resolve_device, resolve_precision

    # config.device None: the judge's kind of device, which DistContext makes each rank's own
    # GPU when distributed (and which is not applied to a 1-process judge: it stays put)
    dev = (
        resolve_device(config.device)
        if config.device is not None
        else torch.device(judge.device.type)
    )
    ctx, dev = DistContext.setup(dev)
    ctx.check_batch(config.batch_size)
    if val_episodes is not None:  # before training, and on every rank (rank 0 calibrates)
        _require_both_classes([e.success for e in labelled(val_episodes)[0]], "validation episodes")
    if config.device is not None or ctx.enabled:
        judge.to(dev)
    ctx.broadcast_parameters(judge.model)  # seeded builds agree already; a given judge may not
    return ctx, resolve_precision(config.precision, judge.device)


def _train_judge(
    judge: VLMJudge,
    ex: JudgeExamples,
    config: JudgeTrainConfig,
    ctx: Any,
    precision: str,
    progress: bool,
) -> tuple[list[float], float, float]:
    """``config.steps`` optimizer steps; returns the losses, their EMA and the seconds taken.
    The judge's model is left in eval mode, also when a step fails."""
    steps, lr = config.steps, config.lr
    gen = torch.Generator().manual_seed(config.seed)
    model = judge.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    sched = warmup_cosine(opt, max(1, int(config.warmup_frac * steps)), steps, floor=0.1)
    loss_ema, losses = None, []
    bar = _progress(steps, progress and ctx.is_main)
    t0 = time.perf_counter()
    try:
        for step in range(steps):
            loss = _slice_loss(judge, ex, config, ctx, precision, gen)
            # the global batch's loss: a sum over ranks, so a NaN anywhere stops every rank
            loss_v = ctx.sum(loss.detach()).item()
            if not math.isfinite(loss_v):
                raise FloatingPointError(f"judge loss is {loss_v} at step {step} (lr {lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            ctx.sum_gradients(params)
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss_v)
            loss_ema = losses[-1] if loss_ema is None else 0.95 * loss_ema + 0.05 * losses[-1]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_ema:.3f}")
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    return losses, loss_ema, time.perf_counter() - t0


def _slice_loss(
    judge: VLMJudge,
    ex: JudgeExamples,
    config: JudgeTrainConfig,
    ctx: Any,
    precision: str,
    gen: torch.Generator,
) -> torch.Tensor:
    """This rank's loss on its slice of a fresh global batch, weighted by the slice's share."""
    from robot_bridge.devices import autocast

    # the global batch, drawn and augmented alike on every rank; this rank's slice
    idx = _balanced_batch(ex, config.batch_size, config.early_batch_frac, gen)
    x = augment(ex.images[idx].float() / 255.0, config.augment, gen)
    mine = ctx.shard(idx)
    idx, x = idx[mine], x[mine]
    with autocast(judge.device, precision):
        margin = judge.yes_no_margin(x, [ex.instructions[i] for i in idx.tolist()])
    loss = F.binary_cross_entropy_with_logits(margin.float(), ex.labels[idx].to(margin.device))
    if ctx.enabled:
        loss = loss * (len(idx) / config.batch_size)  # the slice's share of the global batch
    return loss


def _example_counts(ex: JudgeExamples) -> dict[str, int]:
    return {
        "n_train_episodes": ex.n_episodes,
        "n_skipped_unlabelled": ex.n_skipped,
        "n_positive": int(((ex.labels == 1) & ~ex.early).sum()),
        "n_negative": int(((ex.labels == 0) & ~ex.early).sum()),
        "n_early_negatives": int(ex.early.sum()),
    }


def _calibrate_on_rank0(
    judge: VLMJudge, val_episodes: Sequence[Any], ctx: Any, rule: str = "balanced_accuracy"
) -> dict:
    """Calibrate the threshold and evaluate on rank 0; every rank gets its threshold and
    metrics (a failure on rank 0 is reported to the others instead of leaving them waiting)."""
    result = None
    if ctx.is_main:
        try:
            _, calibration = calibrate_threshold(judge, val_episodes, rule)
            result = {"val_calibration": calibration, "val": evaluate_judge(judge, val_episodes)}
            result["threshold"] = judge.config.threshold
        except BaseException:
            ctx.broadcast_object(None)
            raise
    result = ctx.broadcast_object(result)
    if result is None:
        raise RuntimeError("rank 0 failed to calibrate the judge's threshold (see its error)")
    judge.config = replace(judge.config, threshold=result.pop("threshold"))
    return result


def _as_vlm_judge(judge_or_config: Any, episodes: Sequence[Any]) -> VLMJudge:
    if isinstance(judge_or_config, VLMJudge):
        return judge_or_config
    if isinstance(judge_or_config, VLMJudgeConfig):
        instructions = sorted({e.instruction for e in episodes})
        return VLMJudge.from_config(judge_or_config, instructions=instructions)
    raise TypeError(
        f"finetune_judge needs a VLMJudge or VLMJudgeConfig, got {type(judge_or_config).__name__}"
    )


def _progress(steps: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc="judge finetune", leave=False)


def _score_episodes(
    judge: SuccessJudge, episodes: Sequence[Any], what: str
) -> tuple[np.ndarray, np.ndarray]:
    kept, skipped = labelled(episodes)
    if skipped:
        log.warning("skipped %d of %d %s without a success label", skipped, len(episodes), what)
    _require_both_classes([e.success for e in kept], what)
    probs = np.concatenate(
        [
            judge.success_probability(
                [np.asarray(e.frames) for e in kept[i : i + 64]],
                [e.instruction for e in kept[i : i + 64]],
            )
            for i in range(0, len(kept), 64)
        ]
    )
    return probs, np.array([bool(e.success) for e in kept])


def calibrate_threshold(
    judge: SuccessJudge, episodes: Sequence[Any], rule: str = "balanced_accuracy"
) -> tuple[float, dict[str, Any]]:
    """Set ``judge.config.threshold`` to the cut on labelled episodes that maximizes ``rule``:
    ``balanced_accuracy`` (the mean of the success and failure recalls) or ``f1``.

    Candidates are midpoints (in logit space) between neighbouring distinct probabilities, and 0.5;
    among equal scores the one closest to 0.5 wins. Returns the threshold and the metrics it gives.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {', '.join(THRESHOLD_RULES)}, got {rule!r}")
    probs, labels = _score_episodes(judge, episodes, "validation episodes")
    best = best_threshold(probs, labels, rule)
    judge.config = replace(judge.config, threshold=best)
    return best, binary_metrics(probs >= best, labels)


def best_threshold(probs: np.ndarray, labels: np.ndarray, rule: str = "balanced_accuracy") -> float:
    """The cut of success probabilities that maximizes ``rule`` against the labels."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {', '.join(THRESHOLD_RULES)}, got {rule!r}")
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=bool)
    # midpoints in logit space: a confident judge puts both classes near 0 and 1, where plain
    # midpoints would hug one class
    u = np.clip(np.unique(probs), 1e-7, 1 - 1e-7)
    logits = np.log(u / (1 - u))
    mids = 1 / (1 + np.exp(-(logits[:-1] + logits[1:]) / 2))
    candidates = np.clip(np.append(mids, 0.5), 1e-4, 1 - 1e-4)
    best, best_key = 0.5, None
    for thr in candidates:
        key = (_threshold_score(probs >= thr, labels, rule), -abs(thr - 0.5))
        if best_key is None or key > best_key:
            best, best_key = float(thr), key
    return best


def _threshold_score(votes: np.ndarray, labels: np.ndarray, rule: str) -> float:
    if rule == "f1":
        f1 = binary_metrics(votes, labels)["f1"]
        return -1.0 if f1 is None else f1
    recalls = [
        float((votes[labels == c] == c).mean()) for c in (True, False) if (labels == c).any()
    ]
    return float(np.mean(recalls))


def evaluate_judge(
    judge: SuccessJudge,
    episodes: Sequence[Any],
    n_samples: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Precision / recall / F1 of ``judge()`` rewards (the majority vote RL uses) vs labels."""
    kept, skipped = labelled(episodes)
    if not kept:
        raise JudgeDataError("no success-labelled episodes to evaluate on")
    rewards = np.concatenate(
        [
            judge.judge(
                [np.asarray(e.frames) for e in kept[i : i + 64]],
                [e.instruction for e in kept[i : i + 64]],
                n_samples=n_samples,
                threshold=threshold,
            ).rewards
            for i in range(0, len(kept), 64)
        ]
    )
    out: dict[str, Any] = binary_metrics(rewards > 0.5, np.array([bool(e.success) for e in kept]))
    out["n_skipped_unlabelled"] = skipped
    return out


@dataclass
class ReplayedEpisode:
    """A real episode's actions replayed open-loop in the world model: the imagined video, with
    the real episode's instruction, task and outcome."""

    frames: np.ndarray  # (T, S, S, 3) uint8: the imagined frames, at the world model's size
    instruction: str
    success: bool
    task: str | None = None


@torch.no_grad()
def replay_in_imagination(
    world_model: Any,
    episodes: Sequence[Any],
    max_steps: int = 40,
    batch_size: int = 16,
    seed: int = 0,
) -> list[ReplayedEpisode]:
    """Each labelled episode's executed actions (its first ``max_steps``) replayed open-loop in
    the world model from its first real frame. Episodes without actions or label are left out."""
    kept = [e for e in labelled(episodes)[0] if len(e.actions) > 0]
    if not kept:
        raise JudgeDataError("no success-labelled episodes with actions to replay")
    if max_steps < 1 or batch_size < 1:
        raise ValueError(f"need max_steps >= 1 and batch_size >= 1, got {max_steps}, {batch_size}")
    by_length: dict[int, list[Any]] = {}
    for e in kept:  # a batch of rollouts shares one length
        by_length.setdefault(min(len(e.actions), max_steps), []).append(e)
    gen = torch.Generator(device=world_model.device).manual_seed(seed)
    out = []
    for steps, group in sorted(by_length.items()):
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            frames0 = np.stack([np.asarray(e.frames[0]) for e in chunk])
            actions = torch.as_tensor(np.stack([np.asarray(e.actions[:steps]) for e in chunk]))
            videos = world_model.rollout(frames0, actions.float(), gen).cpu().numpy()
            out += [
                ReplayedEpisode(v, e.instruction, bool(e.success), getattr(e, "task", None))
                for v, e in zip(videos, chunk, strict=True)
            ]
    return out


@torch.no_grad()
def evaluate_judge_on_imagined(
    judge: SuccessJudge,
    world_model: Any,
    episodes: Sequence[Any],
    max_steps: int = 40,
    batch_size: int = 16,
    seed: int = 0,
    n_samples: int | None = None,
) -> dict[str, Any]:
    """The judge on imagined replays of real episodes, against what really happened.

    The judge votes on each replay (``replay_in_imagination``) and the vote is compared with the
    episode's real outcome. This is the reward GRPO gets for an action sequence vs. what the same
    actions did on the arm: where the real-episode F1 is high and this one is low, the world
    model (not the judge) is what misleads RL.
    """
    replays = replay_in_imagination(world_model, episodes, max_steps, batch_size, seed)
    votes = []
    for i in range(0, len(replays), batch_size):
        chunk = replays[i : i + batch_size]
        result = judge.judge(
            [r.frames for r in chunk], [r.instruction for r in chunk], n_samples=n_samples
        )
        votes.append(np.asarray(result.rewards) > 0.5)
    out: dict[str, Any] = binary_metrics(
        np.concatenate(votes), np.array([r.success for r in replays])
    )
    out["max_steps"] = max_steps
    return out
