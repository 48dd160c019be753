"""Policies that need no weights: a privileged scripted expert for the simulator, and random.

The expert reads the simulator's ground truth (``SimBackend.privileged_state``) and drives the
end effector through task waypoints with Bridge delta actions. Its ``noise`` and
``mistake_prob`` make its success rate tunable, so it can stand in for demonstrators and
policies of any quality when testing the improvement loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robot_bridge.policies.base import Policy, PolicyLoadError
from robot_bridge.spec import ACTION_DIM, ACTION_HIGH, ACTION_LOW, LANGUAGE_TASKS, get_task

if TYPE_CHECKING:
    from robot_bridge.backends.base import Observation, RobotBackend

_HALF_RANGE = (ACTION_HIGH - ACTION_LOW) / 2  # (7,)


def _episode_rng(seed: int, episode_seed: int | None, episode_index: int) -> np.random.Generator:
    # A seeded episode is reproducible; unseeded episodes still differ from one another.
    key = [seed, 0, episode_seed] if episode_seed is not None else [seed, 1, episode_index]
    return np.random.default_rng(key)


def _config_from_dict(cls: type, config: dict, policy_type: str):
    valid = {f.name for f in fields(cls)}
    extra = set(config) - valid - {"policy_type"}
    if extra:
        raise PolicyLoadError(
            f"{policy_type} config has unknown keys {sorted(extra)}; valid keys: {sorted(valid)}"
        )
    return cls(**{k: v for k, v in config.items() if k in valid})


# --------------------------------------------------------------------------- expert


@dataclass(frozen=True)
class ScriptedExpertConfig:
    """``noise``: Gaussian action noise std as a fraction of each dimension's half range.
    ``mistake_prob``: per-episode probability of a deliberate plan error (a missed grasp, an
    early release, a half-closed drawer)."""

    noise: float = 0.0
    mistake_prob: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise <= 2.0:
            raise ValueError(
                f"noise must be in [0, 2] (fraction of the action half range), got {self.noise}"
            )
        if not 0.0 <= self.mistake_prob <= 1.0:
            raise ValueError(f"mistake_prob must be in [0, 1], got {self.mistake_prob}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass
class _Phase:
    """One waypoint: where to go (computed from ground truth when the phase starts), with what
    gripper command, and when to move on."""

    name: str
    goal: Callable[[dict], tuple[np.ndarray, float]]  # state -> (position, yaw)
    gripper: float
    tol: float = 0.01  # position error (m) that counts as arrived
    hold: int = 0  # extra steps to stay once arrived (gripper closing/opening)
    max_steps: int = 15  # move on regardless, so a blocked arm cannot stall the episode


def _grasp_yaw(object_yaw: float) -> float:
    """The gripper yaw that closes across an elongated object, nearest to zero."""
    return float((object_yaw + math.pi / 2) % math.pi - math.pi / 2)


def _up(p: np.ndarray, dz: float) -> np.ndarray:
    return p + np.array([0.0, 0.0, dz])


def _at_height(p: np.ndarray, z: float) -> np.ndarray:
    out = np.array(p, copy=True)  # the state's own dtype, as the plans always used
    out[2] = z
    return out


def _pick_and_place(grasp_point, yaw, above, into, approach_up, tols, early_release) -> list:
    """Approach above the grasp point, descend, grasp, lift, (drop: a mistake), carry above the
    goal, lower into it (``tols``: carry and lower tolerances), release, retreat upwards."""
    hold = lambda s: (s["ee_pos"].copy(), s["target_rpy"][2])  # noqa: E731
    keep_yaw = lambda goal: lambda s: (goal(s), s["target_rpy"][2])  # noqa: E731
    phases = [
        _Phase("approach", lambda s: (_up(grasp_point(s), approach_up), yaw(s)), 1.0, tol=0.012),
        _Phase("descend", lambda s: (grasp_point(s), yaw(s)), 1.0, tol=0.008, max_steps=8),
        _Phase("grasp", hold, 0.0, tol=1.0, hold=3),
        _Phase("lift", keep_yaw(lambda s: np.r_[s["ee_pos"][:2], 0.04]), 0.0, tol=0.015),
    ]
    if early_release:
        phases.append(_Phase("drop", hold, 1.0, tol=1.0, hold=2))
    return phases + [
        _Phase("carry", keep_yaw(above), 0.0, tol=tols[0]),
        _Phase("lower", keep_yaw(into), 0.0, tol=tols[1]),
        _Phase("release", hold, 1.0, tol=1.0, hold=2),
        _Phase("retreat", keep_yaw(lambda s: _up(s["ee_pos"], 0.08)), 1.0, max_steps=10**9),
    ]


class ScriptedExpertPolicy(Policy):
    """Waypoint expert with privileged simulator state; chunks of one action."""

    policy_type = "scripted_expert"

    def __init__(self, config: ScriptedExpertConfig, backend: RobotBackend | None) -> None:
        from robot_bridge.backends.sim import SimBackend  # the expert only exists in simulation

        if not isinstance(backend, SimBackend):
            raise TypeError(
                "ScriptedExpertPolicy needs the simulated station's ground truth: expected a "
                f"SimBackend (backend 'sim' or 'sim_gap'), got {type(backend).__name__}"
            )
        self.config = config
        self.backend = backend
        self._phases: list[_Phase] = []
        self._episodes = 0

    @classmethod
    def from_checkpoint(
        cls, path: Path, config: dict, backend: RobotBackend | None
    ) -> ScriptedExpertPolicy:
        return cls(_config_from_dict(ScriptedExpertConfig, config, cls.policy_type), backend)

    def reset(self, task: str, instruction: str, seed: int | None = None) -> None:
        get_task(task)
        self._task = task
        self._rng = _episode_rng(self.config.seed, seed, self._episodes)
        self._episodes += 1
        self._mistake = bool(self._rng.random() < self.config.mistake_prob)
        self._phases = self._plan(task)
        # The first waypoint is placed at the first act: the station may reset the policy
        # before it resets the scene.
        self._phase_index = -1

    # ------------------------------------------------------------------ plans

    def _plan(self, task: str) -> list[_Phase]:
        if task == "open_drawer":
            return self._plan_open_drawer()
        if task == "close_drawer":
            return self._plan_close_drawer()
        if task in LANGUAGE_TASKS:
            return self._plan_cup(task.split("_", 1)[0])
        container = "sink" if task == "eggplant_in_sink" else "basket"
        return self._plan_eggplant(container)

    def _mistake_of(self, miss_height: float) -> tuple[np.ndarray, bool]:
        """This episode's deliberate error, if it has one: half the time a grasp
        ``miss_height`` above the object (pinching the air), else a release on the way."""
        offset, early_release = np.zeros(3), False
        if self._mistake:
            if self._rng.random() < 0.5:
                offset[2] = miss_height
            else:
                early_release = True
        return offset, early_release

    def _plan_eggplant(self, container: str) -> list[_Phase]:
        offset, early_release = self._mistake_of(0.05)

        def grasp_point(s: dict) -> np.ndarray:
            p = s["eggplant_pos"].copy()
            # Keep the finger pads off the table.
            p[2] = max(p[2], s["table_z"] + 0.02)
            return p + offset

        def into_container(s: dict) -> np.ndarray:
            c = s[f"{container}_center"].copy()
            c[2] = s["table_z"] + s[f"{container}_wall_height"] + 0.03
            return c

        return _pick_and_place(
            grasp_point,
            lambda s: _grasp_yaw(s["eggplant_yaw"]),
            lambda s: _at_height(s[f"{container}_center"], 0.04),
            into_container,
            approach_up=0.08,
            tols=(0.015, 0.012),
            early_release=early_release,
        )

    def _plan_cup(self, colour: str) -> list[_Phase]:
        """Grasp the ``colour`` cup from above, lift it, carry it over the plate, lower it until
        it stands on the plate, release, lift away. The mistakes are the eggplant's: a grasp
        above the cup, or a release on the way."""
        key = f"{colour}_cup_pos"
        offset, early_release = self._mistake_of(0.06)

        def grasp_point(s: dict) -> np.ndarray:
            # a little below the cup's middle: the pads then clear the table by ~1 cm
            return s[key] + offset + np.array([0.0, 0.0, -0.004])

        def onto_plate(s: dict) -> np.ndarray:
            # the grasp point's height above the table, put back on top of the plate (+3 mm,
            # so the cup drops the last bit rather than being pushed into the plate)
            height = s["plate_top_z"] + s["cup_half_height"] - 0.004 + 0.003
            return _at_height(s["plate_center"], height)

        return _pick_and_place(
            grasp_point,
            lambda s: 0.0,
            lambda s: _at_height(s["plate_center"], 0.04),
            onto_plate,
            approach_up=0.09,
            tols=(0.012, 0.008),
            early_release=early_release,
        )

    def _plan_open_drawer(self) -> list[_Phase]:
        # The mistake: pinch above the handle tab, so the pull drags nothing.
        miss = np.array([0.0, 0.0, 0.035 if self._mistake else 0.0])
        grasp = lambda s: s["handle_grasp_pos"] + miss  # noqa: E731
        hold = lambda s: (s["ee_pos"].copy(), 0.0)  # noqa: E731
        return [
            _Phase("approach", lambda s: (_up(grasp(s), 0.07), 0.0), 1.0, tol=0.012),
            _Phase("descend", lambda s: (grasp(s), 0.0), 1.0, tol=0.007, max_steps=8),
            _Phase("grasp", hold, 0.0, tol=1.0, hold=3),
            _Phase(
                "pull",
                lambda s: (s["ee_pos"] - [s["drawer_travel"] - 0.01, 0.0, 0.0], 0.0),
                0.0,
                tol=0.015,
                max_steps=10,
            ),
            _Phase("release", hold, 1.0, tol=1.0, hold=2),
            _Phase("retreat", lambda s: (_up(s["ee_pos"], 0.07), 0.0), 1.0, max_steps=10**9),
        ]

    def _plan_close_drawer(self) -> list[_Phase]:
        # The mistake: stop pushing half way.
        fraction = 0.5 if self._mistake else 1.0
        standoff = np.array([-0.03, 0.0, 0.0])

        def push_goal(s: dict) -> tuple[np.ndarray, float]:
            tip = s["handle_tip_pos"].copy()
            # The pads reach 0.012 m past the site; overshoot a little so the drawer seats.
            tip[0] += fraction * s["drawer_q"] - 0.012 + 0.006
            return tip, 0.0

        return [
            _Phase(
                "approach",
                lambda s: (_up(s["handle_tip_pos"] + standoff, 0.06), 0.0),
                0.0,
                tol=0.012,
            ),
            _Phase(
                "descend",
                lambda s: (s["handle_tip_pos"] + standoff, 0.0),
                0.0,
                tol=0.008,
                max_steps=8,
            ),
            _Phase("push", push_goal, 0.0, tol=0.012, max_steps=10),
            _Phase(
                "retreat", lambda s: (_up(s["ee_pos"] + standoff, 0.06), 0.0), 0.0, max_steps=10**9
            ),
        ]

    # ------------------------------------------------------------------ control

    def _enter_next_phase(self, state: dict) -> None:
        self._phase_index = min(self._phase_index + 1, len(self._phases) - 1)
        phase = self._phases[self._phase_index]
        pos, yaw = phase.goal(state)
        self._goal_pos, self._goal_yaw = np.asarray(pos, dtype=np.float64), float(yaw)
        self._phase_steps = 0
        self._arrived_steps = 0

    @property
    def phase(self) -> str:
        return self._phases[self._phase_index].name if self._phase_index >= 0 else "start"

    def _advance(self, s: dict) -> None:
        phase = self._phases[self._phase_index]
        arrived = (
            np.linalg.norm(s["ee_pos"] - self._goal_pos) < phase.tol
            and abs(float(np.angle(np.exp(1j * (s["ee_rpy"][2] - self._goal_yaw))))) < 0.1
        )
        self._arrived_steps = self._arrived_steps + 1 if arrived else 0
        done = self._arrived_steps > phase.hold or self._phase_steps >= phase.max_steps
        if done and self._phase_index < len(self._phases) - 1:
            self._enter_next_phase(s)

    def act(self, obs: Observation, instruction: str) -> np.ndarray:
        if not self._phases:
            raise RuntimeError(
                "ScriptedExpertPolicy.reset(task, instruction, seed) must come before act"
            )
        s = self.backend.privileged_state()
        if self._phase_index < 0:
            self._enter_next_phase(s)
        else:
            self._advance(s)
        self._phase_steps += 1
        phase = self._phases[self._phase_index]
        action = np.zeros(ACTION_DIM)
        # Deltas are taken from the commanded target, not the measured pose, so a lagging arm
        # does not make the target overshoot.
        action[:3] = self._goal_pos - s["target_pos"]
        action[3:5] = -s["target_rpy"][:2]
        action[5] = np.angle(np.exp(1j * (self._goal_yaw - s["target_rpy"][2])))
        action[6] = phase.gripper
        if self.config.noise > 0:
            action += self._rng.normal(0.0, self.config.noise * _HALF_RANGE)
        action = np.clip(action, ACTION_LOW, ACTION_HIGH).astype(np.float32)
        return action[None]  # (K=1, 7)


# --------------------------------------------------------------------------- random


@dataclass(frozen=True)
class RandomPolicyConfig:
    seed: int = 0
    chunk_size: int = 1

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


class RandomPolicy(Policy):
    """Uniform actions inside the Bridge bounds: a floor for any learned policy."""

    policy_type = "random"

    def __init__(self, config: RandomPolicyConfig) -> None:
        self.config = config
        self._episodes = 0
        self._rng = np.random.default_rng(config.seed)

    @classmethod
    def from_checkpoint(
        cls, path: Path, config: dict, backend: RobotBackend | None
    ) -> RandomPolicy:
        return cls(_config_from_dict(RandomPolicyConfig, config, cls.policy_type))

    def reset(self, task: str, instruction: str, seed: int | None = None) -> None:
        self._rng = _episode_rng(self.config.seed, seed, self._episodes)
        self._episodes += 1

    def act(self, obs: Observation, instruction: str) -> np.ndarray:
        k = self.config.chunk_size
        return self._rng.uniform(ACTION_LOW, ACTION_HIGH, size=(k, ACTION_DIM)).astype(
            np.float32
        )  # (K, 7)
