"""Run a VLA checkpoint directory as a station policy (``policy_type: "vla"``).

Decoding: greedy by default (deterministic for evaluation); set ``station_temperature`` in the
checkpoint's gymnast_vla.json (``save_pretrained(..., station_temperature=T)``) or config.json
(which wins; format-1 checkpoints keep it there), or the ``GYMNAST_VLA_TEMPERATURE`` environment
variable (which wins over both), to sample instead. ``GYMNAST_VLA_DEVICE`` picks the torch device
through the same resolver as training (``robot_bridge.devices.resolve_device``: "cpu", "cuda",
"cuda:N" or "auto"), but unset it means the CPU, not "auto": the robot host's control loop must
not depend on, or compete for, a GPU that training jobs may hold; the tiny VLA acts well within a control step on a CPU; and the
champion and the challenger it compares then run on the same device with the same numerics,
whatever the host has. ``GYMNAST_DEVICE`` (the trainers' setting) is deliberately not read here:
a sim station started beside a GPU training job would otherwise follow it onto the GPU.
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


def station_device() -> torch.device:
    """The station policy's device: ``GYMNAST_VLA_DEVICE``, else the CPU (see the module doc)."""
    from robot_bridge.devices import resolve_device

    return resolve_device(None, env=DEVICE_ENV, default="cpu")


def _parse_temperature(raw) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise ValueError(
            f"{TEMPERATURE_ENV} / station_temperature must be a number, got {raw!r}"
        ) from None


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
        env = os.environ.get(TEMPERATURE_ENV)
        if env is not None:
            _parse_temperature(env)  # a bad setting fails before the model loads
        # A station's checkpoint came over the wire: no remote code, no base_model_path.
        vla = VLAPolicy.from_pretrained(path, device=station_device(), trust_remote_code=False)
        # ``from_pretrained`` resolves the checkpoint's own setting (config.json's over
        # gymnast_vla.json's); the environment wins over both.
        raw = env if env is not None else vla.station_temperature
        return cls(vla, _parse_temperature(raw))

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
