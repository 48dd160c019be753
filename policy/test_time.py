"""Test-time training from one novel initial frame (World-Gymnast's TTT).

Before deploying in a new scene, World-Gymnast runs GRPO in the world model from that scene's
single initial frame and the instruction: every group of imagined rollouts starts from the same
real frame, the judge scores them, and the policy is updated, with no real rollouts at all.
"""

from __future__ import annotations

import numpy as np

from policy.grpo import GRPOConfig, GRPOStats, Start, train_grpo


def default_test_time_config() -> GRPOConfig:
    """The tiny preset for 10 steps, one start (the novel frame) per step."""
    return GRPOConfig.from_preset("tiny", steps=10, starts_per_step=1)


def check_frame(frame: np.ndarray) -> None:
    """Raise ValueError unless ``frame`` is one (H, W, 3) uint8 camera frame."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3 or 0 in frame.shape:
        raise ValueError(
            f"frame must be one uint8 (H, W, 3) camera frame, got shape {frame.shape} "
            f"dtype {frame.dtype}"
        )


def test_time_train(
    policy,
    world_model,
    judge,
    frame: np.ndarray,
    instruction: str,
    config: GRPOConfig | None = None,
    *,
    progress: bool = False,
) -> list[GRPOStats]:
    """GRPO in imagination from one (frame, instruction); updates ``policy`` in place.

    ``config`` defaults to :func:`default_test_time_config`; a ``starts_per_step`` above 1 draws
    the one start that many times per step (more groups from the same frame).
    """
    check_frame(frame)
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
    config = config or default_test_time_config()
    starts = [Start(frame, instruction, task="test_time")]
    return train_grpo(policy, world_model, judge, starts, config, progress=progress)


test_time_train.__test__ = False  # its name starts with "test": keep pytest from collecting it
