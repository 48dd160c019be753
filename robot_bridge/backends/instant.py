"""A backend that answers at once, so a benchmark measures the bridge's own cost."""

from __future__ import annotations

import numpy as np

from robot_bridge.backends.base import (
    BackendInfo,
    Observation,
    RobotBackend,
    SequenceCounter,
    StepOutcome,
)
from robot_bridge.spec import STATE_DIM, get_task


class InstantBackend(RobotBackend):
    """Returns a fixed pre-allocated frame of the configured size; integrates the state."""

    def __init__(self, height: int = 256, width: int = 256) -> None:
        self.info = BackendInfo(name="instant", camera_shape=(height, width, 3))
        rng = np.random.default_rng(0)
        self._image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        self._state = np.zeros(STATE_DIM, dtype=np.float32)
        self._seq = SequenceCounter()

    def reset(self, task: str, seed: int | None = None) -> Observation:
        get_task(task)
        self._state = np.array([0.3, 0.0, 0.1, 0, 0, 0, 1.0], dtype=np.float32)
        return self.observe()

    def step(self, action: np.ndarray) -> StepOutcome:
        self._state[:6] += action[:6]
        self._state[6] = action[6]
        return StepOutcome(self.observe())

    def observe(self) -> Observation:
        return self._seq.stamp(self._image, self._state.copy())
