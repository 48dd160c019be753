"""A faithful fake of the Interbotix X-Series Python API (ROS 2 ``interbotix_xs_modules``).

Only the calls the station's Interbotix backend makes are here, with the real names, signatures
and return types of ``InterbotixManipulatorXS`` (``.arm``: ``InterbotixArmXSInterface``,
``.gripper``: ``InterbotixGripperXSInterface``, ``.core``: ``InterbotixRobotXSCore``). Every public
call is recorded in ``bot.calls`` so tests can assert exactly what would reach the motors.

Kinematics are the real WidowX 250 6DOF product-of-exponentials description (the ``wx250s`` screw
axes and home pose the Interbotix API uses), with a numerical inverse kinematics that, like the real
``set_ee_pose_matrix``, refuses targets it cannot converge to or that break joint position or
velocity limits, and then sends nothing. The motors track commands perfectly and instantly; faults
(effort spikes, hardware error registers, a stuck arm) are injected by tests.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

import numpy as np

# wx250s description (interbotix_xs_modules.xs_robot.mr_descriptions.wx250s), metres.
WX250S_SLIST = np.array(
    [
        [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, -0.11065, 0.0, 0.0],
        [0.0, 1.0, 0.0, -0.36065, 0.0, 0.04975],
        [1.0, 0.0, 0.0, 0.0, 0.36065, 0.0],
        [0.0, 1.0, 0.0, -0.36065, 0.0, 0.29975],
        [1.0, 0.0, 0.0, 0.0, 0.36065, 0.0],
    ]
).T  # (6, n_joints): one screw axis per column, as modern_robotics wants
WX250S_M = np.array(
    [
        [1.0, 0.0, 0.0, 0.458325],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.36065],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
ARM_JOINTS = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate"]
# What the xs_sdk publishes on joint_states for a wx250s (joint_order, then the finger joints).
JOINT_STATE_NAMES = [*ARM_JOINTS, "gripper", "left_finger", "right_finger"]
ALL_GROUP_MOTORS = 7  # the "all" group: joint_order of wx250s.yaml
LOWER_LIMITS = [-3.141583, -1.884956, -2.146755, -3.141583, -1.745329, -3.141583]
UPPER_LIMITS = [3.141583, 1.989675, 1.605703, 3.141583, 2.146755, 3.141583]
VELOCITY_LIMITS = [3.14] * 6  # Velocity_Limit 131 * 0.229 rpm, in rad/s
SLEEP_POSITIONS = [0.0, -1.80, 1.55, 0.0, 0.8, 0.0]
FINGER_LOWER, FINGER_UPPER = 0.015, 0.037  # left_finger limits (m)
REST_EFFORT_MA = 120.0
REV = 2 * np.pi


@dataclass
class Call:
    name: str  # "arm.set_ee_pose_matrix", "core.robot_reboot_motors", ...
    args: tuple
    kwargs: dict


class CallLog(list):
    def __getitem__(self, index):
        item = super().__getitem__(index)
        return CallLog(item) if isinstance(index, slice) else item

    def names(self) -> list[str]:
        return [c.name for c in self]

    def named(self, name: str) -> list[Call]:
        return [c for c in self if c.name == name]


def _skew(w: np.ndarray) -> np.ndarray:
    return np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])


def _screw_exp(screw: np.ndarray, theta: float) -> np.ndarray:
    """exp([S] theta) for a revolute screw axis with a unit rotation part (Rodrigues)."""
    w, v = screw[:3], screw[3:]
    W = _skew(w)
    T = np.eye(4)
    T[:3, :3] = np.eye(3) + np.sin(theta) * W + (1 - np.cos(theta)) * W @ W
    T[:3, 3] = (np.eye(3) * theta + (1 - np.cos(theta)) * W + (theta - np.sin(theta)) * W @ W) @ v
    return T


def fk(thetas) -> np.ndarray:
    """Space-frame forward kinematics of the wx250s (modern_robotics.FKinSpace)."""
    T = np.eye(4)
    for i, theta in enumerate(thetas):
        T = T @ _screw_exp(WX250S_SLIST[:, i], float(theta))
    return T @ WX250S_M


def _rotation_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector of R (axis * angle)."""
    cos = np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-9:
        return np.zeros(3)
    if np.pi - angle < 1e-6:
        axis = np.sqrt(np.maximum((np.diag(R) + 1) / 2, 0.0))
        return axis * angle
    return (
        angle
        / (2 * np.sin(angle))
        * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    )


def _pose_error(T_goal: np.ndarray, T: np.ndarray) -> np.ndarray:
    return np.concatenate([T_goal[:3, 3] - T[:3, 3], _rotation_log(T_goal[:3, :3] @ T[:3, :3].T)])


def ik(T_goal: np.ndarray, guess, max_iterations: int = 20, tol: float = 1e-3):
    """Newton-Raphson IK (as modern_robotics.IKinSpace, eomg = ev = 0.001, 20 iterations)."""
    theta = np.array(guess, dtype=float)
    for _ in range(max_iterations + 1):
        err = _pose_error(T_goal, fk(theta))
        if np.linalg.norm(err[:3]) < tol and np.linalg.norm(err[3:]) < tol:
            return theta, True
        J = np.empty((6, len(theta)))  # (6, n_joints): d[position, rotation]/d theta, numerically
        T0 = fk(theta)
        for j in range(len(theta)):
            bumped = theta.copy()
            bumped[j] += 1e-6
            J[:, j] = _pose_error(fk(bumped), T0) / 1e-6
        theta = theta + np.linalg.pinv(J) @ err
    return theta, False


def euler_angles_to_rotation_matrix(theta) -> np.ndarray:
    """interbotix_common_modules.angle_manipulation: R = Rz(yaw) Ry(pitch) Rx(roll)."""
    r, p, y = theta
    Rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    Ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    Rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


@dataclass
class JointState:
    """sensor_msgs/JointState: positions (rad, m for fingers), velocities, efforts (mA)."""

    name: list[str]
    position: list[float]
    velocity: list[float]
    effort: list[float]


@dataclass
class RobotInfo:
    """interbotix_xs_msgs/srv/RobotInfo.Response for the 'arm' group."""

    joint_names: list[str] = field(default_factory=lambda: list(ARM_JOINTS))
    num_joints: int = 6
    joint_lower_limits: list[float] = field(default_factory=lambda: list(LOWER_LIMITS))
    joint_upper_limits: list[float] = field(default_factory=lambda: list(UPPER_LIMITS))
    joint_velocity_limits: list[float] = field(default_factory=lambda: list(VELOCITY_LIMITS))
    joint_sleep_positions: list[float] = field(default_factory=lambda: list(SLEEP_POSITIONS))
    profile_type: str = "time"
    mode: str = "position"


class _Recorded:
    def __init__(self, prefix: str, log: CallLog) -> None:
        self._prefix, self._log = prefix, log

    def _record(self, method: str, *args: Any, **kwargs: Any) -> None:
        self._log.append(Call(f"{self._prefix}.{method}", args, kwargs))


class FakeRobotXSCore(_Recorded):
    """InterbotixRobotXSCore: joint states, motor registers, reboot and torque services."""

    def __init__(self, log: CallLog, initial_positions) -> None:
        super().__init__("core", log)
        self.robot_model = self.robot_name = "wx250s"
        self.js_mutex = Lock()
        self.joint_states = JointState(
            name=list(JOINT_STATE_NAMES),
            position=[*map(float, initial_positions), 0.0, FINGER_UPPER, -FINGER_UPPER],
            velocity=[0.0] * len(JOINT_STATE_NAMES),
            effort=[REST_EFFORT_MA] * len(JOINT_STATE_NAMES),
        )
        self.js_index_map = {n: i for i, n in enumerate(self.joint_states.name)}
        # Fault injection.
        self.hardware_error_status = [0] * ALL_GROUP_MOTORS
        self.reboot_clears_errors = True
        self.torque_on = True
        self.stuck = False  # motors ignore position commands (jammed arm)

    # -- the API --------------------------------------------------------------------------
    def robot_get_joint_states(self) -> JointState:
        self._record("robot_get_joint_states")
        with self.js_mutex:
            return copy.deepcopy(self.joint_states)

    def robot_get_motor_registers(self, cmd_type: str, name: str, reg: str) -> list[int]:
        self._record("robot_get_motor_registers", cmd_type, name, reg)
        if (cmd_type, name, reg) != ("group", "all", "Hardware_Error_Status"):
            raise NotImplementedError(f"fake reads only the all-group error register, not {reg!r}")
        return list(self.hardware_error_status)

    def robot_reboot_motors(
        self, cmd_type: str, name: str, enable: bool, smart_reboot: bool = False
    ) -> None:
        self._record("robot_reboot_motors", cmd_type, name, enable, smart_reboot=smart_reboot)
        if self.reboot_clears_errors:
            self.hardware_error_status = [0] * ALL_GROUP_MOTORS
        self.torque_on = enable

    def robot_torque_enable(self, cmd_type: str, name: str, enable: bool) -> None:
        self._record("robot_torque_enable", cmd_type, name, enable)
        self.torque_on = enable

    def robot_write_commands(self, group_name: str, commands: list[float]) -> None:
        self._record("robot_write_commands", group_name, list(commands))
        self._move_arm(commands)

    # -- the simulated motors -------------------------------------------------------------
    def _move_arm(self, positions) -> None:
        if self.stuck or not self.torque_on or any(self.hardware_error_status):
            return
        with self.js_mutex:
            for name, q in zip(ARM_JOINTS, positions, strict=True):
                self.joint_states.position[self.js_index_map[name]] = float(q)

    def arm_positions(self) -> list[float]:
        return [self.joint_states.position[self.js_index_map[n]] for n in ARM_JOINTS]

    def set_effort(self, joint: str, milliamps: float) -> None:
        self.joint_states.effort[self.js_index_map[joint]] = float(milliamps)


class FakeArmXSInterface(_Recorded):
    """InterbotixArmXSInterface for the 'arm' group."""

    def __init__(
        self, core: FakeRobotXSCore, log: CallLog, moving_time: float, accel_time: float
    ) -> None:
        super().__init__("arm", log)
        self.core = core
        self.group_name = "arm"
        self.group_info = RobotInfo()
        self.moving_time, self.accel_time = moving_time, accel_time
        self.initial_guesses = [
            [0.0] * 6,
            [np.deg2rad(-120)] + [0.0] * 5,
            [np.deg2rad(120)] + [0.0] * 5,
        ]
        self.joint_commands = core.arm_positions()
        self.T_sb = fk(self.joint_commands)

    # -- the API --------------------------------------------------------------------------
    def set_trajectory_time(self, moving_time: float = None, accel_time: float = None) -> None:
        self._record("set_trajectory_time", moving_time=moving_time, accel_time=accel_time)
        self._set_times(moving_time, accel_time)

    def set_joint_positions(
        self,
        joint_positions: list[float],
        moving_time: float = None,
        accel_time: float = None,
        blocking: bool = True,
    ) -> bool:
        self._record(
            "set_joint_positions",
            [float(q) for q in joint_positions],
            moving_time=moving_time,
            accel_time=accel_time,
            blocking=blocking,
        )
        self._set_times(moving_time, accel_time)
        if not self._check_joint_limits(joint_positions):
            return False
        self._publish(joint_positions)
        return True

    def go_to_home_pose(
        self, moving_time: float = None, accel_time: float = None, blocking: bool = True
    ) -> None:
        self._record(
            "go_to_home_pose", moving_time=moving_time, accel_time=accel_time, blocking=blocking
        )
        self._set_times(moving_time, accel_time)
        self._publish([0.0] * 6)

    def go_to_sleep_pose(
        self, moving_time: float = None, accel_time: float = None, blocking: bool = True
    ) -> None:
        self._record(
            "go_to_sleep_pose", moving_time=moving_time, accel_time=accel_time, blocking=blocking
        )
        self._set_times(moving_time, accel_time)
        self._publish(self.group_info.joint_sleep_positions)

    def set_ee_pose_matrix(
        self,
        T_sd: np.ndarray,
        custom_guess: list[float] = None,
        execute: bool = True,
        moving_time: float = None,
        accel_time: float = None,
        blocking: bool = True,
    ) -> tuple[np.ndarray, bool]:
        self._record(
            "set_ee_pose_matrix",
            np.array(T_sd, dtype=float),
            custom_guess=None if custom_guess is None else [float(q) for q in custom_guess],
            execute=execute,
            moving_time=moving_time,
            accel_time=accel_time,
            blocking=blocking,
        )
        return self._solve(
            np.asarray(T_sd, dtype=float), custom_guess, execute, moving_time, accel_time
        )

    def set_ee_pose_components(
        self,
        x: float = 0,
        y: float = 0,
        z: float = 0,
        roll: float = 0,
        pitch: float = 0,
        yaw: float = None,
        custom_guess: list[float] = None,
        execute: bool = True,
        moving_time: float = None,
        accel_time: float = None,
        blocking: bool = True,
    ) -> tuple[np.ndarray, bool]:
        self._record(
            "set_ee_pose_components",
            x=x, y=y, z=z, roll=roll, pitch=pitch, yaw=yaw, custom_guess=custom_guess,
            execute=execute, moving_time=moving_time, accel_time=accel_time, blocking=blocking,
        )  # fmt: skip
        if yaw is None:
            yaw = float(np.arctan2(y, x))
        T_sd = np.eye(4)
        T_sd[:3, :3] = euler_angles_to_rotation_matrix([roll, pitch, yaw])
        T_sd[:3, 3] = [x, y, z]
        return self._solve(T_sd, custom_guess, execute, moving_time, accel_time)

    def get_ee_pose(self) -> np.ndarray:
        """The actual pose, from the encoders (not the last command)."""
        self._record("get_ee_pose")
        return fk(self.core.arm_positions())

    def get_ee_pose_command(self) -> np.ndarray:
        self._record("get_ee_pose_command")
        return np.array(self.T_sb)

    def get_joint_commands(self) -> list[float]:
        self._record("get_joint_commands")
        return list(self.joint_commands)

    def capture_joint_positions(self) -> None:
        self._record("capture_joint_positions")
        self.joint_commands = self.core.arm_positions()
        self.T_sb = fk(self.joint_commands)

    # -- internals mirroring the real class -----------------------------------------------
    def _set_times(self, moving_time: float | None, accel_time: float | None) -> None:
        if moving_time is not None:
            self.moving_time = moving_time
        if accel_time is not None:
            self.accel_time = accel_time

    def _check_joint_limits(self, positions) -> bool:
        theta = [int(q * 1000) / 1000.0 for q in positions]
        info = self.group_info
        for i in range(info.num_joints):
            if not info.joint_lower_limits[i] <= theta[i] <= info.joint_upper_limits[i]:
                return False
            speed = abs(theta[i] - self.joint_commands[i]) / float(self.moving_time)
            if speed > info.joint_velocity_limits[i]:
                return False
        return True

    def _wrap(self, theta: np.ndarray) -> np.ndarray:
        theta = (theta + np.pi) % REV - np.pi
        for i in range(len(theta)):
            if round(theta[i], 3) < round(self.group_info.joint_lower_limits[i], 3):
                theta[i] += REV
            elif round(theta[i], 3) > round(self.group_info.joint_upper_limits[i], 3):
                theta[i] -= REV
        return theta

    def _solve(self, T_sd, custom_guess, execute, moving_time, accel_time):
        guesses = self.initial_guesses if custom_guess is None else [custom_guess]
        theta = np.zeros(6)
        for guess in guesses:
            theta, converged = ik(T_sd, guess)
            if converged:
                theta = self._wrap(theta)
                self._set_times(moving_time, accel_time)
                if self._check_joint_limits(theta):
                    if execute:
                        self._publish(theta)
                        self.T_sb = T_sd
                    return theta, True
        return theta, False

    def _publish(self, positions) -> None:
        self.joint_commands = [float(q) for q in positions]
        self.core._move_arm(self.joint_commands)
        self.T_sb = fk(self.joint_commands)


class FakeGripperXSInterface(_Recorded):
    """InterbotixGripperXSInterface in PWM mode: grasp closes, release opens, at set pressure."""

    def __init__(self, core: FakeRobotXSCore, log: CallLog, gripper_pressure: float = 0.5) -> None:
        super().__init__("gripper", log)
        self.core = core
        self.gripper_name = "gripper"
        self.gripper_pressure = gripper_pressure
        self.left_finger_index = core.js_index_map["left_finger"]
        self.left_finger_lower_limit = FINGER_LOWER
        self.left_finger_upper_limit = FINGER_UPPER

    def set_pressure(self, pressure: float) -> None:
        self._record("set_pressure", pressure)
        self.gripper_pressure = pressure

    def release(self, delay: float = 1.0) -> None:
        self._record("release", delay=delay)
        self._move_fingers(FINGER_UPPER)

    def grasp(self, delay: float = 1.0) -> None:
        self._record("grasp", delay=delay)
        self._move_fingers(FINGER_LOWER)

    def _move_fingers(self, left: float) -> None:
        with self.core.js_mutex:
            self.core.joint_states.position[self.left_finger_index] = left
            self.core.joint_states.position[self.core.js_index_map["right_finger"]] = -left


class FakeInterbotixManipulatorXS:
    """InterbotixManipulatorXS(robot_model='wx250s', ...) with .core, .arm, .gripper."""

    def __init__(
        self,
        robot_model: str = "wx250s",
        group_name: str = "arm",
        gripper_name: str = "gripper",
        robot_name: str = None,
        moving_time: float = 2.0,
        accel_time: float = 0.3,
        gripper_pressure: float = 0.5,
        initial_positions=SLEEP_POSITIONS,
    ) -> None:
        if robot_model != "wx250s" or group_name != "arm" or gripper_name != "gripper":
            raise NotImplementedError("the fake models a wx250s with groups 'arm' and 'gripper'")
        self.calls = CallLog()
        self.core = FakeRobotXSCore(self.calls, initial_positions)
        self.arm = FakeArmXSInterface(self.core, self.calls, moving_time, accel_time)
        self.gripper = FakeGripperXSInterface(self.core, self.calls, gripper_pressure)
        self.is_shut_down = False

    def shutdown(self) -> None:
        self.calls.append(Call("shutdown", (), {}))
        self.is_shut_down = True


class FakeCamera:
    """A camera with ``read() -> (uint8 (H, W, 3) RGB, capture time.monotonic())``.

    ``age_s`` makes every frame that many seconds old (a frozen driver); ``frames`` counts reads.
    """

    def __init__(self, shape: tuple[int, int, int] = (256, 256, 3)) -> None:
        self.shape = shape
        self.age_s = 0.0
        self.frames = 0
        self.closed = False

    def read(self) -> tuple[np.ndarray, float]:
        self.frames += 1
        image = np.full(self.shape, self.frames % 256, dtype=np.uint8)
        return image, time.monotonic() - self.age_s

    def close(self) -> None:
        self.closed = True
