"""Train or finetune the world model on recorded episodes (next-frame diffusion loss).

Data parallelism (launched by torchrun / ``accelerate launch``; ``policy.distributed``):

* ``batch_size`` is the global batch; every rank draws the same window indices from the same
  seeded generator;
* the global batch is cut into ``batch_parts`` equal, contiguous *parts* (0: one per process);
  rank ``r`` of ``W`` takes parts ``[r P/W, (r+1) P/W)``. Each part's diffusion loss draws its
  noise, timesteps and action dropout from a generator seeded from ``(seed, step, part)``, so a
  step is a function of ``(seed, batch_parts)``, not of the process count: W processes with P
  parts take the step one process takes with P parts. A single part uses the run's own
  generator stream, so a 1-process run with the default draws exactly as it always has;
* each part's loss is weighted by its share of the global batch and backpropagated on its own
  (several parts per process are gradient accumulation), then the gradients are summed across
  ranks before clipping, so every rank takes the same optimizer step;
* the logged loss is the global batch's (a sum over ranks, so a non-finite loss on any rank
  stops all of them together); rank 0 alone shows progress, callers save on rank 0.

Why explicit gradient sums and not DistributedDataParallel: the loss is
``model.training_loss``, not ``forward``, which DDP's hooks are built around, and several parts
per rank would need ``no_sync`` bookkeeping; one all-reduce per optimizer step is exact.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gymnast_common.config import Config
from gymnast_common.schedule import warmup_cosine
from robot_bridge.devices import autocast, placement
from world_model.config import WorldModelConfig
from world_model.data import EpisodeLike, WindowDataset
from world_model.model import ActionConditionedWorldModel


class NonFiniteLossError(FloatingPointError):
    pass


WM_TRAIN_PRESETS: dict[str, dict[str, Any]] = {"tiny": {}}


@dataclass
class WorldModelTrainConfig(Config):
    """The world model's training options."""

    PRESETS = WM_TRAIN_PRESETS

    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    grad_clip: float = 1.0
    warmup_steps: int = 20  # linear warmup, then a constant learning rate
    # equal parts of the global batch, each with its own seeded generator (see the module
    # docstring): 0 is one per process; a multiple of the process count that divides batch_size
    batch_parts: int = 0
    # ``robot_bridge.devices`` settings ("auto": CUDA when present); "bf16" autocasts the forward
    # pass (fp32 weights, optimizer and loss)
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be >= 1, got steps={self.steps}, "
                f"batch_size={self.batch_size}"
            )
        if self.batch_parts < 0 or (self.batch_parts and self.batch_size % self.batch_parts):
            raise ValueError(
                f"batch_parts must be 0 (one per process) or a divisor of batch_size "
                f"{self.batch_size}, got {self.batch_parts}"
            )
        from robot_bridge.devices import check_device_setting, check_precision_setting

        check_device_setting(self.device, "WorldModelTrainConfig.device")
        check_precision_setting(self.precision, "WorldModelTrainConfig.precision")


def train_world_model(
    model_or_config: ActionConditionedWorldModel | WorldModelConfig,
    episodes: Sequence[EpisodeLike],
    config: WorldModelTrainConfig,
    progress: bool = True,
    init_from: str | Path | None = None,
) -> tuple[ActionConditionedWorldModel, dict[str, Any]]:
    """Train for ``config.steps`` optimizer steps on random windows of ``episodes``.

    A config builds a fresh model whose action statistics are fitted on these episodes. With
    ``init_from`` (a checkpoint directory) the model is warm-started from it and keeps the
    checkpoint's action statistics, since the learned action embedding depends on them.
    The model moves to ``config.device`` once; batches and the noise generator live there.
    Returns the model (in eval mode) and metrics: per-step ``loss``, ``steps_per_s``, ...

    Launched with several processes it trains data-parallel (see the module docstring); every
    rank returns the same model.
    """
    from policy.distributed import DistContext

    dev, precision = placement(config.device, config.precision)
    ctx, dev = DistContext.setup(dev)
    parts = resolve_batch_parts(ctx, config.batch_size, config.batch_parts)
    torch.manual_seed(config.seed)
    model = _build(model_or_config, init_from).to(dev)
    cfg = model.config
    data = WindowDataset.for_model(episodes, model)
    if isinstance(model_or_config, WorldModelConfig) and init_from is None:
        cfg.action_mean, cfg.action_std = (tuple(x) for x in data.action_stats())
    ctx.broadcast_parameters(model)  # seeded builds agree already; a given model may not

    run = _Trainer.make(model, data, config, ctx, parts, dev, precision)
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(config.steps), desc="world model", disable=not (progress and ctx.is_main))
    for step in bar:
        losses.append(run.train_step(step))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    elapsed = time.perf_counter() - t0
    model.eval()
    return model, _metrics(run, losses, elapsed, episodes, init_from)


@dataclass
class _Trainer:
    """One run's model, data, optimizer and generators, and this rank's parts of the batch."""

    model: ActionConditionedWorldModel
    data: WindowDataset
    config: WorldModelTrainConfig
    ctx: Any  # policy.distributed.DistContext
    parts: int
    dev: torch.device
    precision: str
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    rng: np.random.Generator

    @classmethod
    def make(cls, model, data, config, ctx, parts, dev, precision) -> _Trainer:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        sched = warmup_cosine(opt, config.warmup_steps, config.steps, floor=1.0)  # then constant
        gen = torch.Generator(device=model.device).manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        return cls(model, data, config, ctx, parts, dev, precision, params, opt, sched, gen, rng)

    def train_step(self, step: int) -> float:
        """One optimizer step on a fresh global batch; returns the global batch's loss."""
        lr = self.config.lr
        # the global batch, drawn alike on every rank; this rank computes its parts of it
        idx = torch.from_numpy(self.rng.integers(0, len(self.data), size=self.config.batch_size))
        self.opt.zero_grad(set_to_none=True)
        part_losses = self._backward_parts(step, idx)
        # the global batch's loss; a sum over ranks, so a NaN or inf anywhere reaches every rank
        loss_v = self.ctx.sum(part_losses.sum()).item()
        if not math.isfinite(loss_v):
            raise NonFiniteLossError(
                f"world-model loss is {loss_v} at step {step} (lr={lr}); stopping"
            )
        self.ctx.sum_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        if not math.isfinite(grad_norm.item()):
            raise NonFiniteLossError(
                f"world-model gradient norm is {grad_norm.item()} at step {step} (lr={lr}); stopping"
            )
        self.opt.step()
        self.sched.step()
        return loss_v

    def _backward_parts(self, step: int, idx: torch.Tensor) -> torch.Tensor:
        """Backpropagate this rank's parts of the batch ``idx``; their (weighted) losses."""
        from policy.distributed import part_generator

        ctx, parts, model = self.ctx, self.parts, self.model
        per_part = self.config.batch_size // parts
        my_parts = range(
            ctx.rank * parts // ctx.world_size, (ctx.rank + 1) * parts // ctx.world_size
        )
        part_losses = []
        for p in my_parts:
            part_idx = idx[p * per_part : (p + 1) * per_part]
            batch = self.data.batch(part_idx)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            g = self.gen if parts == 1 else part_generator(self.config.seed, step, p, model.device)
            if model.config.own_context_prob > 0:
                batch["context"] = own_context(model, self.data, part_idx, batch, g)
            with autocast(self.dev, self.precision):
                loss = model.training_loss(**batch, generator=g)
            if parts > 1:
                loss = loss / parts  # the part's share of the global batch
            loss.backward()
            part_losses.append(loss.detach())
        return torch.stack(part_losses)


def own_context(
    model: ActionConditionedWorldModel,
    data: WindowDataset,
    idx: torch.Tensor,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    """``batch["context"]`` with the newest frames of a ``model.config.own_context_prob`` share of
    the windows replaced by the model's own open-loop rollout of them. A chosen window ``i`` rolls
    ``d`` steps from window ``i - d`` of the same episode, ``d`` uniform in 1 to
    ``own_context_steps`` and at most the number of its newest context frames with a known action
    into them (a frame that is not its episode's first); each step's context carries the samples
    so far, and the window's newest ``d`` frames become them. The model samples in eval mode and
    without gradient (``sample_next`` takes none), as an open-loop rollout does."""
    context = batch["context"]
    known = batch["context_known"].to(context.device)
    # newest frames with a known action into them: how far back this episode's rollout can start
    cap = known.flip(1).int().cumprod(1).sum(1).clamp(max=model.config.own_context_steps)
    draw = torch.rand(len(idx), generator=generator, device=context.device)
    rows = ((draw < model.config.own_context_prob) & (cap > 0)).nonzero().flatten()
    if len(rows) == 0:
        return context
    depth = torch.ones_like(rows)
    if model.config.own_context_steps > 1:
        u = torch.rand(len(rows), generator=generator, device=context.device)
        depth = 1 + (u * cap[rows]).long()
    own = _own_rollout(model, data, idx[rows.cpu()], depth, generator)
    context = context.clone()
    for j, r in enumerate(rows.tolist()):
        d = int(depth[j])
        context[r, -d:] = own[j, :d].to(context.dtype)
    return context


def _own_rollout(
    model: ActionConditionedWorldModel,
    data: WindowDataset,
    idx: torch.Tensor,
    depth: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """(R, max depth, C, h, w): for each window ``idx[j]``, the model's open-loop samples of its
    newest ``depth[j]`` context frames, oldest first, rolled from window ``idx[j] - depth[j]``.
    Rollouts advance together: at lag ``s`` every window with ``depth >= s`` takes one step."""
    was_training = model.training
    model.eval()
    try:
        own = None
        for s in range(int(depth.max()), 0, -1):
            active = (depth >= s).nonzero().flatten()
            win = data.batch(idx[active.cpu()] - s)
            win = {k: v.to(model.device) for k, v in win.items()}
            ctx = win["context"]
            if own is not None:
                ctx = ctx.clone()
                for k, j in enumerate(active.tolist()):
                    n = int(depth[j]) - s  # this rollout's samples so far
                    if n:
                        ctx[k, -n:] = own[j, :n].to(ctx.dtype)
            sampled = model.sample_next(
                ctx,
                win["context_actions"],
                win["context_known"],
                win["action"],
                generator=generator,
            )
            if own is None:
                own = sampled.new_zeros((len(idx), int(depth.max()), *sampled.shape[1:]))
            for k, j in enumerate(active.tolist()):
                own[j, int(depth[j]) - s] = sampled[k]
    finally:
        model.train(was_training)
    return own


def _metrics(
    run: _Trainer, losses: list[float], elapsed: float, episodes, init_from
) -> dict[str, Any]:
    steps = run.config.steps
    return {
        "loss": losses,
        "final_loss": float(np.mean(losses[-max(1, steps // 10) :])),
        "steps": steps,
        "batch_size": run.config.batch_size,
        "batch_parts": run.parts,
        "world_size": run.ctx.world_size,
        "train_seconds": elapsed,
        "steps_per_s": steps / elapsed,
        "transitions": len(run.data),
        "episodes": len(episodes),
        "warm_start": str(init_from) if init_from is not None else None,
        "device": str(run.dev),
        "precision": run.precision,
    }


def resolve_batch_parts(ctx, batch_size: int, setting: int) -> int:
    """The number of batch parts for ``WorldModelTrainConfig.batch_parts`` = ``setting`` on
    ``ctx``'s processes (0: one per process); an uneven split is a ValueError."""
    ctx.check_batch(batch_size)
    parts = setting or ctx.world_size
    if parts % ctx.world_size:
        raise ValueError(
            f"WorldModelTrainConfig.batch_parts={setting} must be a multiple of the "
            f"{ctx.world_size} processes (or 0: one part per process)"
        )
    if batch_size % parts:
        raise ValueError(
            f"batch_size {batch_size} (the global batch) does not split into {parts} equal "
            f"parts (batch_parts={setting}, {ctx.world_size} processes)"
        )
    return parts


def _build(model_or_config, init_from) -> ActionConditionedWorldModel:
    if isinstance(model_or_config, WorldModelConfig):
        # a copy: fitting action statistics must not mutate the caller's config
        model = ActionConditionedWorldModel(dataclasses.replace(model_or_config))
    elif isinstance(model_or_config, ActionConditionedWorldModel):
        model = model_or_config
    else:
        raise TypeError(
            f"model_or_config must be a WorldModelConfig or ActionConditionedWorldModel, got {type(model_or_config).__name__}"
        )
    if init_from is not None:
        model.load_weights(init_from)
        ckpt = WorldModelConfig.load(Path(init_from) / "config.json")
        model.config.action_mean, model.config.action_std = ckpt.action_mean, ckpt.action_std
    return model
