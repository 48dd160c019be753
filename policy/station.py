"""Run a VLA checkpoint directory as a station policy (``policy_type: "vla"``).

Decoding: greedy by default (deterministic for evaluation); set ``station_temperature`` in the
checkpoint's config.json, or the ``GYMNAST_VLA_TEMPERATURE`` environment variable (which wins), to
sample instead. ``GYMNAST_VLA_DEVICE`` picks the torch device (default cpu).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from policy.vla import VLAPolicy
from robot_bridge.policies.base import Policy

TEMPERATURE_ENV = "GYMNAST_VLA_TEMPERATURE"
DEVICE_ENV = "GYMNAST_VLA_DEVICE"


class VLAStationPolicy(Policy):
    def __init__(self, vla: VLAPolicy, temperature: float = 0.0) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.vla = vla.eval()
        self.temperature = float(temperature)
        self._generator = torch.Generator(device=vla.device)
        self._generator.seed()

    @classmethod
    def from_checkpoint(cls, path: Path, config: dict, backend=None) -> VLAStationPolicy:
        raw = os.environ.get(TEMPERATURE_ENV, config.get("station_temperature", 0.0))
        try:
            temperature = float(raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"{TEMPERATURE_ENV} / station_temperature must be a number, got {raw!r}"
            ) from None
        # A station's checkpoint came over the wire: no remote code, no base_model_path.
        vla = VLAPolicy.from_pretrained(
            path, device=os.environ.get(DEVICE_ENV, "cpu"), trust_remote_code=False
        )
        return cls(vla, temperature)

    def reset(self, task: str, instruction: str, seed: int | None = None) -> None:
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed))

    def act(self, obs, instruction: str) -> np.ndarray:
        sample = self.vla.sample(
            obs.image[None], [instruction], temperature=self.temperature, generator=self._generator
        )
        return sample.actions[0]  # (K, 7) float32
