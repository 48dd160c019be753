"""The policy contract for station jobs, and the registry that loads checkpoints by type.

A policy checkpoint is a directory holding ``config.json`` (with a ``policy_type`` key) and,
for learned policies, ``*.safetensors``. The registry maps ``policy_type`` to a loader by import
path, so the robot host imports torch only when it actually runs a learned policy.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robot_bridge.checkpoints import CheckpointError, refuse_code

if TYPE_CHECKING:
    from robot_bridge.backends.base import Observation, RobotBackend


class Policy(ABC):
    """Image (+ state) and instruction in, a chunk of 7-D Bridge actions out."""

    def reset(self, task: str, instruction: str, seed: int | None = None) -> None:
        """Called at the start of every episode."""

    @abstractmethod
    def act(self, obs: Observation, instruction: str) -> np.ndarray:
        """Return a float32 action chunk of shape (K, 7), K >= 1, executed in order."""


POLICY_TYPES: dict[str, str] = {
    "scripted_expert": "robot_bridge.policies.scripted:ScriptedExpertPolicy",
    "random": "robot_bridge.policies.scripted:RandomPolicy",
    "vla": "policy.station:VLAStationPolicy",
    "autoeval_http": "robot_bridge.policies.autoeval_http:AutoEvalHTTPPolicy",
}


class PolicyLoadError(ValueError):
    pass


def read_policy_config(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise PolicyLoadError(f"policy checkpoint {checkpoint_dir} has no config.json")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PolicyLoadError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or "policy_type" not in config:
        raise PolicyLoadError(f"{path} must be a JSON object with a 'policy_type' key")
    return config


def load_policy(checkpoint_dir: str | Path, backend: RobotBackend | None = None) -> Policy:
    """Load a policy checkpoint directory; ``backend`` is offered to privileged (scripted) policies.

    Checkpoints a station runs come over the wire, so this loads data only: the directory is
    checked first (``refuse_code``), and loaders never import code from it or follow a path out.
    """
    try:
        refuse_code(checkpoint_dir)
    except CheckpointError as e:
        raise PolicyLoadError(str(e)) from None
    config = read_policy_config(checkpoint_dir)
    policy_type = config["policy_type"]
    if policy_type not in POLICY_TYPES:
        raise PolicyLoadError(
            f"unknown policy_type {policy_type!r} in {checkpoint_dir}; "
            f"valid types: {', '.join(sorted(POLICY_TYPES))}"
        )
    module_name, attr = POLICY_TYPES[policy_type].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # A robot host installs the training stack only for learned policies (the `vla` extra).
        raise PolicyLoadError(
            f"policy_type {policy_type!r} needs {module_name}, which cannot be imported on this "
            f"host (no module {e.name!r}); a station that runs VLA checkpoints installs "
            "gymnast-station[vla] and gymnast"
        ) from e
    cls = getattr(module, attr)
    return cls.from_checkpoint(Path(checkpoint_dir), config, backend)


def write_policy_config(checkpoint_dir: str | Path, policy_type: str, **fields) -> Path:
    """Make a config-only checkpoint (scripted and random policies need no weights)."""
    d = Path(checkpoint_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"policy_type": policy_type, **fields}, indent=2))
    return d
