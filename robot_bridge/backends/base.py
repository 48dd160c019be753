"""The robot backend contract: what the station needs from an arm, real or simulated."""

from __future__ import annotations

import importlib
import itertools
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from robot_bridge.spec import AUTOEVAL_TASKS, IMAGE_SHAPE, STATE_DIM


@dataclass
class Observation:
    """One camera frame and proprioceptive state, stamped so staleness is visible.

    ``timestamp`` is ``time.monotonic()`` on the station host when the frame was captured and
    ``seq`` increases by one with every observation the backend produces.
    """

    image: np.ndarray  # (H, W, 3) uint8
    state: np.ndarray  # (7,) float32, [x, y, z, roll, pitch, yaw, gripper]
    timestamp: float
    seq: int

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(
                f"observation image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}"
            )
        if self.state.shape != (STATE_DIM,):
            raise ValueError(
                f"observation state must have shape ({STATE_DIM},), got {self.state.shape}"
            )


class BackendError(RuntimeError):
    """The backend refused or could not complete a command; the station replies ``backend_error``.

    The station holds the arm safe and ends the current episode (keeping what was recorded)
    unless ``recoverable`` is true, as for an IK refusal, where nothing moved.
    """

    recoverable: bool = False


@dataclass
class StepOutcome:
    observation: Observation
    workspace_clipped: bool = False


class SequenceCounter:
    """Monotonic sequence numbers and timestamps for observations."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def stamp(self, image: np.ndarray, state: np.ndarray) -> Observation:
        return Observation(
            image=image,
            state=state.astype(np.float32),
            timestamp=time.monotonic(),
            seq=next(self._counter),
        )


@dataclass
class BackendInfo:
    name: str
    camera_shape: tuple[int, int, int] = IMAGE_SHAPE
    has_ground_truth_success: bool = False
    extra: dict = field(default_factory=dict)


class RobotBackend(ABC):
    """A WidowX-like arm under 5 Hz end-effector delta control.

    The station validates and Bridge-clips every action before ``step``; the backend applies
    the workspace box to the target pose and reports whether it had to.
    """

    info: BackendInfo
    # The tasks whose scene this backend has (the station's hello lists them): the AutoEval
    # tasks; the simulator adds the language tasks.
    tasks: tuple[str, ...] = AUTOEVAL_TASKS
    # Named scene variants ``reset(task, seed, scene=...)`` accepts besides the base scene
    # (``robot_bridge.backends.scenes``); a real arm has none, its scene is whatever is on the
    # table. The station refuses a variant the backend does not list.
    scene_variants: tuple[str, ...] = ()

    @abstractmethod
    def reset(self, task: str, seed: int | None = None) -> Observation:
        """Bring the scene to a (seeded) initial state for ``task`` and return the first frame."""

    @abstractmethod
    def step(self, action: np.ndarray) -> StepOutcome:
        """Apply one 7-D delta action for one control period (200 ms)."""

    @abstractmethod
    def observe(self) -> Observation:
        """Return a fresh observation without moving."""

    def success(self) -> bool | None:
        """Ground-truth task success if the backend knows it (simulation), else None."""
        return None

    def hold_safe(self) -> None:
        """Stop all motion and hold the current pose (e-stop, lease expiry, faults)."""

    def close(self) -> None:
        """Release hardware or simulator resources."""


# Backends are registered by import path so a robot host never imports what it does not run
# (the simulator pulls in MuJoCo, the real arm pulls in Interbotix/ROS).
BACKENDS: dict[str, str] = {
    "sim": "robot_bridge.backends.sim:SimBackend",
    "sim_gap": "robot_bridge.backends.sim:GapSimBackend",
    "interbotix": "robot_bridge.backends.interbotix:InterbotixBackend",
    "instant": "robot_bridge.backends.instant:InstantBackend",
}


class UnknownBackendError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def make_backend(name: str, **kwargs) -> RobotBackend:
    """Create a backend by registered name; an unknown name lists the valid ones."""
    if name not in BACKENDS:
        raise UnknownBackendError(
            f"unknown backend {name!r}; valid backends: {', '.join(sorted(BACKENDS))}"
        )
    module_name, attr = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != "mujoco":
            raise
        raise ModuleNotFoundError(
            f"backend {name!r} needs MuJoCo: pip install 'gymnast-station[sim]'", name=e.name
        ) from e
    return getattr(module, attr)(**kwargs)
