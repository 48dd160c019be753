"""Train or finetune the world model on recorded episodes (next-frame diffusion loss)."""

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
    """
    steps, batch_size, lr, seed = config.steps, config.batch_size, config.lr, config.seed
    dev, precision = placement(config.device, config.precision)
    torch.manual_seed(seed)
    model = _build(model_or_config, init_from).to(dev)
    cfg = model.config
    data = WindowDataset(episodes, model.codec, cfg.image_size, cfg.context_frames, cfg.action_dim)
    fresh = isinstance(model_or_config, WorldModelConfig) and init_from is None
    if fresh:
        cfg.action_mean, cfg.action_std = (tuple(x) for x in data.action_stats())

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, config.warmup_steps, steps, floor=1.0)  # warmup, then constant
    gen = torch.Generator(device=model.device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="world model", disable=not progress)
    for step in bar:
        idx = torch.from_numpy(rng.integers(0, len(data), size=batch_size))
        batch = {k: v.to(model.device) for k, v in data.batch(idx).items()}
        with autocast(dev, precision):
            loss = model.training_loss(**batch, generator=gen)
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(
                f"world-model loss is {loss.item()} at step {step} (lr={lr}); stopping"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if not math.isfinite(grad_norm.item()):
            raise NonFiniteLossError(
                f"world-model gradient norm is {grad_norm.item()} at step {step} (lr={lr}); stopping"
            )
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}")
    elapsed = time.perf_counter() - t0
    model.eval()
    metrics = {
        "loss": losses,
        "final_loss": float(np.mean(losses[-max(1, steps // 10) :])),
        "steps": steps,
        "batch_size": batch_size,
        "train_seconds": elapsed,
        "steps_per_s": steps / elapsed,
        "transitions": len(data),
        "episodes": len(episodes),
        "warm_start": str(init_from) if init_from is not None else None,
        "device": str(dev),
        "precision": precision,
    }
    return model, metrics


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
