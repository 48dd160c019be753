"""Supervised finetuning of the VLA on recorded episodes (cross-entropy on action tokens).

Each training example is a window: the frame before action ``t``, the episode's instruction, and
the action chunk ``t .. t+K-1``. Chunks running past the end of an episode are padded with a
hold action (zero motion, last gripper command): what the arm does once an episode is over.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gymnast_common.config import Config
from gymnast_common.schedule import warmup_cosine
from policy.augment import AugmentConfig, augment_images
from policy.config import VLAConfig
from policy.tokenization import ActionTokenizer
from policy.vla import VLAPolicy
from robot_bridge.episodes.schema import EpisodeLike


@dataclass
class SFTWindows:
    frames: np.ndarray  # (F, H, W, 3) uint8, every usable frame (at model resolution if known)
    instructions: list[str]  # per window
    action_chunks: np.ndarray  # (N, K, 7) float32, window n starts at frames[n]

    def __len__(self) -> int:
        return len(self.instructions)


def chunk_actions(actions: np.ndarray, chunk_size: int) -> np.ndarray:
    """(T, D) actions -> (T, K, D) chunks; past the end: zero motion, last gripper command."""
    t, d = actions.shape
    hold = np.zeros(d, dtype=np.float32)
    hold[-1] = actions[-1, -1]
    padded = np.concatenate([actions, np.repeat(hold[None], chunk_size - 1, axis=0)])  # (T+K-1, D)
    idx = np.arange(t)[:, None] + np.arange(chunk_size)[None]  # (T, K)
    return padded[idx].astype(np.float32)


def resize_frames(frames: np.ndarray, size: tuple[int, int], batch: int = 512) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, h, w, 3) with the policy's antialiased bilinear resize."""
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    out = []
    for i in range(0, len(frames), batch):
        x = (
            torch.from_numpy(np.ascontiguousarray(frames[i : i + batch]))
            .permute(0, 3, 1, 2)
            .float()
        )
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def build_windows(
    episodes: Sequence[EpisodeLike], chunk_size: int, image_size: tuple[int, int] | None
) -> SFTWindows:
    frames, instructions, chunks = [], [], []
    for i, ep in enumerate(episodes):
        actions = np.asarray(ep.actions, dtype=np.float32)
        t = len(actions)
        if t == 0:
            continue
        if actions.ndim != 2 or len(ep.frames) < t:
            raise ValueError(
                f"episode {i}: need (T, D) actions and at least T frames, got actions {actions.shape} "
                f"and {len(ep.frames)} frames"
            )
        img = np.asarray(ep.frames[:t])
        frames.append(resize_frames(img, image_size) if image_size else img)
        instructions += [ep.instruction] * t
        chunks.append(chunk_actions(actions, chunk_size))
    if not chunks:
        raise ValueError(f"train_sft: none of the {len(episodes)} episodes has any actions")
    return SFTWindows(np.concatenate(frames), instructions, np.concatenate(chunks))


def _soft_targets(targets: torch.Tensor, n_bins: int, sigma: float) -> torch.Tensor:
    """(N, A) target bins -> (N, A, n_bins) Gaussian label distributions (HL-Gauss style).

    Bins are ordered, so a near miss should cost less than a far one; hard one-hot targets make
    every wrong bin equally wrong and spend the early steps on bin-level noise.
    """
    bins = torch.arange(n_bins, dtype=torch.float32, device=targets.device)
    w = torch.exp(-0.5 * ((bins - targets[..., None].float()) / sigma) ** 2)  # (N, A, n_bins)
    return w / w.sum(-1, keepdim=True)


def action_loss(logits: torch.Tensor, target: torch.Tensor, label_sigma: float) -> torch.Tensor:
    """Mean KL(target || policy) over (B, N) positions; with one-hot targets, cross-entropy.

    KL rather than soft cross-entropy so that a perfect fit reads 0 whatever ``label_sigma``.
    """
    if label_sigma == 0:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    soft = _soft_targets(target, logits.shape[-1], label_sigma)  # (B, N, n_bins)
    logq = F.log_softmax(logits, dim=-1)
    return (soft * (soft.clamp_min(1e-12).log() - logq)).sum(-1).mean()


SFT_PRESETS: dict[str, dict] = {"tiny": {}}


@dataclass
class SFTConfig(Config):
    """SFT's training options; ``train_sft`` reports the metrics of a run with these."""

    PRESETS = SFT_PRESETS

    steps: int = 300
    batch_size: int = 16  # the global batch when launched data-parallel
    lr: float = 3e-3
    seed: int = 0
    weight_decay: float = 0.01
    # linear warmup over this many steps (None: a twentieth of ``steps``), then cosine to 10%
    warmup_steps: int | None = None
    grad_clip: float = 1.0
    # a VLAPolicy keeps its action statistics (its tokens keep their meaning) unless this is set
    refit_action_stats: bool = False
    # > 0: train on Gaussian-smoothed bin targets of that width in bins; 0: one-hot cross-entropy
    label_sigma: float = 3.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # draw each instruction's windows equally often (an instruction uniformly, then one of its
    # windows) instead of every window alike: a mix whose successes are mostly one task's (as
    # Iter-SFT's are) would otherwise teach the policy to do that task whatever it is told
    balance_instructions: bool = False
    # ``robot_bridge.devices`` settings: the policy moves there once; "bf16" autocasts its forward
    # pass (fp32 weights, optimizer and loss)
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        if self.label_sigma < 0:
            raise ValueError(f"label_sigma must be >= 0 (bins), got {self.label_sigma}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"need steps >= 1, batch_size >= 1, lr > 0; got {self.steps}, {self.batch_size}, "
                f"{self.lr}"
            )
        from robot_bridge.devices import check_device_setting, check_precision_setting

        check_device_setting(self.device, "SFTConfig.device")
        check_precision_setting(self.precision, "SFTConfig.precision")


def train_sft(
    policy_or_config: VLAPolicy | VLAConfig,
    episodes: Iterable[EpisodeLike],
    config: SFTConfig,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
) -> tuple[VLAPolicy, dict]:
    """Finetune (or build and train) a VLA on episodes; returns (policy, metrics).

    A ``VLAConfig`` builds a fresh tiny policy whose action bins span the episodes' q01/q99. A
    ``VLAPolicy`` keeps its action stats unless ``config.refit_action_stats``.
    ``callback(step, {"loss", "token_accuracy", "lr", "grad_norm"})`` is called every step (e.g.
    for MLflow).

    Launched by torchrun / ``accelerate launch`` with several processes (``policy.distributed``),
    it trains data-parallel: ``batch_size`` is the global batch, every rank draws and augments
    the same global batch and trains on its slice under DistributedDataParallel, so a step
    matches the 1-process step on that batch; the logged loss / accuracy are global means, and
    ``callback`` and the progress bar run on rank 0 only (callers save on
    ``policy.distributed.is_main_process()`` only). Every rank returns the same policy.
    """
    from tqdm.auto import tqdm

    from policy.distributed import DistContext
    from robot_bridge.devices import placement

    dev, precision = placement(config.device, config.precision)
    ctx, dev = DistContext.setup(dev)
    ctx.check_batch(config.batch_size)
    episodes = list(episodes)
    policy = _policy_to_train(policy_or_config, episodes, config.refit_action_stats)
    policy.to(dev)
    run = _Trainer.make(policy, episodes, config, ctx, dev, precision)
    policy.train()
    losses, accs = [], []
    start = time.perf_counter()
    show = progress and ctx.is_main
    bar = tqdm(range(config.steps), disable=not show, desc="sft", dynamic_ncols=True)
    for step in bar:
        loss_v, acc, grad_norm = run.train_step(step)
        losses.append(loss_v)
        accs.append(acc)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{acc:.2f}")
        if callback is not None and ctx.is_main:
            lr = run.sched.get_last_lr()[0]
            callback(
                step,
                {"loss": loss_v, "token_accuracy": acc, "lr": lr, "grad_norm": float(grad_norm)},
            )
    elapsed = time.perf_counter() - start
    policy.eval()
    metrics = _curve_metrics(losses, accs) | {
        "steps_per_s": config.steps / elapsed,
        "num_episodes": len(episodes),
        "num_windows": len(run.windows),
        "device": str(dev),
        "precision": precision,
        "world_size": ctx.world_size,
        **greedy_action_error(policy, run.windows, run.rng),
    }
    return policy, metrics


def keep_steps(steps: int, keep: int) -> list[int]:
    """The steps after which ``train_sft_keeping`` keeps a policy: ``keep`` evenly spaced,
    ending at the last."""
    if not 1 <= keep <= steps:
        raise ValueError(f"policies to keep must be in [1, steps={steps}], got {keep}")
    return sorted({round(steps * i / keep) for i in range(1, keep + 1)})


def train_sft_keeping(
    policy_or_config: VLAPolicy | VLAConfig,
    episodes: Iterable[EpisodeLike],
    config: SFTConfig,
    keep: int,
    snapshots: Path,
    progress: bool = True,
) -> tuple[VLAPolicy, dict]:
    """``train_sft``, also saving the policy after each of ``keep_steps`` but the last as
    ``snapshots/step_NNNN`` (the last is the returned policy): one SFT run gives the SFT arm and
    the policies a real check chooses among, the same training either way."""
    from policy.distributed import is_main_process

    at = set(keep_steps(config.steps, keep))
    episodes = list(episodes)
    policy = _policy_to_train(policy_or_config, episodes, config.refit_action_stats)

    def saved(step: int, _metrics: dict) -> None:
        if step + 1 in at and step + 1 < config.steps and is_main_process():
            policy.save_pretrained(Path(snapshots) / f"step_{step + 1:04d}")

    return train_sft(policy, episodes, config, progress=progress, callback=saved)


@dataclass
class _Trainer:
    """One run's training windows and their target bins, the (wrapped) model, the optimizer and
    the generator batches and augmentation draw from."""

    model: torch.nn.Module  # the policy, under DDP when launched distributed
    windows: SFTWindows
    targets: torch.Tensor  # (N, K * 7) the windows' action bins
    config: SFTConfig
    ctx: Any  # policy.distributed.DistContext
    dev: torch.device
    precision: str
    rng: np.random.Generator
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: Any

    @classmethod
    def make(cls, policy: VLAPolicy, episodes: list, c: SFTConfig, ctx, dev, precision) -> _Trainer:
        windows = build_windows(episodes, policy.config.chunk_size, policy.image_size)
        targets = torch.from_numpy(
            policy.action_tokenizer.to_bins(windows.action_chunks).reshape(len(windows), -1)
        )
        rng = np.random.default_rng(c.seed)
        torch.manual_seed(c.seed)
        params = [p for p in policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=c.lr, betas=(0.9, 0.95), weight_decay=c.weight_decay)
        warmup = max(1, c.steps // 20) if c.warmup_steps is None else max(1, c.warmup_steps)
        sched = warmup_cosine(opt, warmup, c.steps, floor=0.1)
        model = ctx.wrap(policy)  # DDP when launched distributed (broadcasts rank 0's weights)
        return cls(model, windows, targets, c, ctx, dev, precision, rng, params, opt, sched)

    def draw_batch(self, size: int) -> np.ndarray:
        """Window indices of a batch: uniform over windows, or with ``balance_instructions``
        uniform over instructions, then over that instruction's windows."""
        if not self.config.balance_instructions:
            return self.rng.integers(0, len(self.windows), size=size)
        groups = self.instruction_windows
        which = self.rng.integers(0, len(groups), size=size)
        within = self.rng.random(size)
        return np.array(
            [groups[g][int(u * len(groups[g]))] for g, u in zip(which, within, strict=True)]
        )

    @functools.cached_property
    def instruction_windows(self) -> list[np.ndarray]:
        """Each instruction's window indices, in instruction order."""
        names = np.array(self.windows.instructions)
        return [np.flatnonzero(names == n) for n in np.unique(names)]

    def train_step(self, step: int) -> tuple[float, float, torch.Tensor]:
        """One optimizer step on a fresh global batch: (its mean loss, its mean token accuracy,
        the gradient norm before clipping)."""
        c = self.config
        # The global batch, drawn and augmented identically on every rank; each keeps its slice.
        idx = self.draw_batch(c.batch_size)
        images = augment_images(self.windows.frames[idx], c.augment, self.rng)
        loss, loss_v, acc = _slice_loss(
            self.model, self.windows, self.targets, idx, images, c, self.dev, self.precision,
            self.ctx,
        )  # fmt: skip
        if not math.isfinite(loss_v):
            raise FloatingPointError(
                f"SFT loss is {loss_v} at step {step} (lr={self.sched.get_last_lr()[0]:.2e}); "
                "check the episodes' actions/frames for NaN or lower the learning rate"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients all-reduced (averaged over ranks) here
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.opt.step()
        self.sched.step()
        return loss_v, acc, grad_norm


def _slice_loss(model, windows, targets, idx, images, c, dev, precision, ctx):
    """This rank's slice of the global batch: (its loss to backpropagate, the global batch's mean
    loss, its mean token accuracy). Means over ranks when distributed, so a NaN on any rank stops
    all of them."""
    from robot_bridge.devices import autocast

    mine = ctx.shard(idx)
    idx, images = idx[mine], images[mine]
    with autocast(dev, precision):
        logits = model(images, [windows.instructions[i] for i in idx])  # action_logits
    target = targets[idx].to(dev)  # (B, N)
    loss = action_loss(logits, target, c.label_sigma)  # logits: (B, N, 256) float32
    acc_t = (logits.detach().argmax(-1) == target).float().mean()
    loss_v, acc = ctx.mean(torch.stack([loss.detach(), acc_t])).tolist()
    return loss, loss_v, acc


def _policy_to_train(
    policy_or_config: VLAPolicy | VLAConfig, episodes: list, refit_action_stats: bool
) -> VLAPolicy:
    """A fresh policy whose action bins span the episodes' actions, or the given one (its bins
    refitted when asked)."""
    if not episodes:
        raise ValueError("train_sft got an empty list of episodes")
    all_actions = [np.asarray(ep.actions) for ep in episodes if len(ep.actions)]
    if not all_actions:
        raise ValueError(f"train_sft: none of the {len(episodes)} episodes has any actions")
    stats = ActionTokenizer.from_actions(np.concatenate(all_actions), token_start=0).to_dict()
    if isinstance(policy_or_config, VLAConfig):
        return VLAPolicy.build(policy_or_config, stats)
    if isinstance(policy_or_config, VLAPolicy):
        if refit_action_stats:
            policy_or_config.set_action_stats(stats)
        return policy_or_config
    raise TypeError(f"expected a VLAPolicy or VLAConfig, got {type(policy_or_config).__name__}")


def _curve_metrics(losses: list[float], accs: list[float]) -> dict:
    """The training curves and their means over the first and last few steps."""
    tail = max(1, min(10, len(losses) // 5))
    return {
        "loss": losses,
        "token_accuracy": accs,
        "initial_loss": float(np.mean(losses[:tail])),
        "final_loss": float(np.mean(losses[-tail:])),
        "final_token_accuracy": float(np.mean(accs[-tail:])),
    }


@torch.no_grad()
def greedy_action_error(
    policy: VLAPolicy, windows: SFTWindows, rng: np.random.Generator, n: int = 256
) -> dict:
    """Mean |greedy action - demonstrated action| per dimension on up to n training windows."""
    idx = rng.choice(len(windows), size=min(n, len(windows)), replace=False)
    errs = []
    for chunk in np.array_split(idx, max(1, len(idx) // 64)):
        s = policy.sample(
            windows.frames[chunk], [windows.instructions[i] for i in chunk], greedy=True
        )
        errs.append(
            np.abs(s.actions - windows.action_chunks[chunk]).reshape(-1, s.actions.shape[-1])
        )
    per_dim = np.concatenate(errs).mean(axis=0)
    return {"train_greedy_l1_per_dim": per_dim.tolist(), "train_greedy_l1": float(per_dim.mean())}
