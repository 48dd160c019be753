"""Action-conditioned video world model (diffusers) for GRPO in imagination.

Public API::

    cfg = WorldModelConfig.from_preset("tiny")
    model, metrics = train_world_model(cfg, episodes, WorldModelTrainConfig(steps=500))
    state = model.start(init_frames)                      # (B, H, W, 3) uint8
    state, frames = model.imagine(state, actions)         # (B, K, 7) -> (B, K, S, S, 3) uint8
    model.save_pretrained(dir); ActionConditionedWorldModel.from_pretrained(dir)
"""

from world_model.config import PRESETS, WorldModelConfig
from world_model.data import EmptyDatasetError, WindowDataset
from world_model.evaluate import (
    evaluate_world_model,
    next_frame_error,
    rollout_error,
    write_side_by_side_video,
)
from world_model.model import ActionConditionedWorldModel, CheckpointMismatchError, WorldState
from world_model.train import NonFiniteLossError, WorldModelTrainConfig, train_world_model

__all__ = [
    "PRESETS",
    "ActionConditionedWorldModel",
    "CheckpointMismatchError",
    "EmptyDatasetError",
    "NonFiniteLossError",
    "WindowDataset",
    "WorldModelConfig",
    "WorldModelTrainConfig",
    "WorldState",
    "evaluate_world_model",
    "next_frame_error",
    "rollout_error",
    "train_world_model",
    "write_side_by_side_video",
]
