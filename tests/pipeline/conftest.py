"""Inputs the pipeline's stage tests share: tiny untrained models and real HDF5 episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fake_episodes import episode_meta

from robot_bridge.backends.base import Observation
from robot_bridge.episodes import EpisodeWriter
from robot_bridge.spec import TASKS

SHAPE = (64, 64, 3)


def write_episode(root, e: int, task: str, success: bool):
    meta = episode_meta(e, task)
    rng = np.random.default_rng(e)
    w = EpisodeWriter(root, meta, image_shape=SHAPE)
    steps = 4
    for t in range(steps + 1):
        frame = rng.integers(0, 256, SHAPE, dtype=np.uint8)
        action = None
        if t < steps:
            action = np.concatenate([rng.uniform(-0.05, 0.05, 6), [t % 2]]).astype(np.float32)
        w.append(Observation(frame, np.zeros(7, np.float32), 1.0 + 0.2 * t, t), action)
    return w.finish(
        success=success,
        success_source="sim_ground_truth",
        termination="success" if success else "max_steps",
    )


@pytest.fixture(scope="module")
def round_inputs(tmp_path_factory):
    """A champion, a world model, a judge (tiny, untrained) and six real episodes on disk."""
    from policy.config import VLAConfig
    from policy.vla import VLAPolicy
    from reward.config import VLMJudgeConfig
    from reward.vlm import VLMJudge
    from world_model.config import WorldModelConfig
    from world_model.model import ActionConditionedWorldModel

    root = tmp_path_factory.mktemp("inputs")
    tasks = ("open_drawer", "close_drawer")
    for e in range(6):
        write_episode(root / "episodes", e, tasks[e % 2], success=e % 3 == 0)
    torch.manual_seed(0)
    VLAPolicy.build(VLAConfig.from_preset("tiny")).save_pretrained(root / "champion")
    ActionConditionedWorldModel(WorldModelConfig.from_preset("tiny")).save_pretrained(
        root / "world_model"
    )
    instructions = [TASKS[t].instruction for t in tasks]
    VLMJudge.from_config(VLMJudgeConfig.from_preset("tiny"), instructions).save_pretrained(
        root / "judge"
    )
    return root


@pytest.fixture(scope="session")
def episode_writer():
    """``write_episode(root, e, task, success)``: one real HDF5 episode of random frames."""
    return write_episode
