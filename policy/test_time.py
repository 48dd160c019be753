"""Test-time training from one novel initial frame (World-Gymnast's TTT).

Before deploying in a new scene, World-Gymnast runs GRPO in the world model from that scene's
single initial frame and the instruction(s): every group of imagined rollouts starts from the same
real frame, the judge scores them, and the policy is updated, with no real rollouts at all.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def starts_from_frame(
    frame: np.ndarray, instructions: str | Sequence[str], tasks: Sequence[str] | None = None
) -> list[Start]:
    """One start per instruction, every one on the same single ``frame`` (checked): the only
    real input test-time training has. ``tasks`` names each instruction's task (default
    ``"test_time"`` for all: one novel task)."""
    check_frame(frame)
    if not isinstance(instructions, (list, tuple)):
        instructions = [instructions]
    if not instructions:
        raise ValueError("instruction must be a non-empty string, got no instruction")
    for instruction in instructions:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
    tasks = ["test_time"] * len(instructions) if tasks is None else list(tasks)
    if len(tasks) != len(instructions):
        raise ValueError(f"got {len(tasks)} tasks for {len(instructions)} instructions")
    return [Start(frame, text, task) for text, task in zip(instructions, tasks, strict=True)]


def test_time_train(
    policy,
    world_model,
    judge,
    frame: np.ndarray,
    instruction: str | Sequence[str],
    config: GRPOConfig | None = None,
    *,
    tasks: Sequence[str] | None = None,
    progress: bool = False,
) -> list[GRPOStats]:
    """GRPO in imagination from one frame and the instruction(s); updates ``policy`` in place.

    ``frame`` is one (H, W, 3) uint8 camera frame: a batch of frames, an episode or anything
    else is refused (``check_frame``). ``instruction``: one, or one per task to train (``tasks``
    names their tasks), all started from ``frame``. ``config`` defaults to
    :func:`default_test_time_config`; a ``starts_per_step`` above the number of instructions
    draws the starts that many times per step (more groups from the same frame).
    """
    starts = starts_from_frame(frame, instruction, tasks)
    config = config or default_test_time_config()
    return train_grpo(policy, world_model, judge, starts, config, progress=progress)


test_time_train.__test__ = False  # its name starts with "test": keep pytest from collecting it
