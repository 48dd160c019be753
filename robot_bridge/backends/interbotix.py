"""The real WidowX 250s, driven through the Interbotix X-Series Python API (ROS 2).

Control follows bridge_data_robot's ``widowx_envs``: the backend keeps a *target* end-effector
pose; every 200 ms step rotates it by the action's Euler deltas (about the end-effector point, in
base-frame axes) and shifts it by the position deltas, clips the position to the workspace box,
and sends the pose to the Interbotix inverse kinematics seeded with the measured joints. The
gripper is absolute: below 0.5 grasps, otherwise releases (the stock PWM gripper is binary).

Safety habits, also from Bridge: a target the IK cannot reach is refused (``IKError``, nothing is
sent, the target stays); joint efforts above the configured limits send the arm to neutral
(``JointEffortError``); a camera frame older than ``max_frame_age_s`` is never returned
(``StaleFrameError``); the motors' hardware error registers are checked at every reset and
rebooted once if needed (``MotorFaultError`` if they stay faulty).

The arm cannot rearrange the scene: ``reset`` only brings the arm to its start pose with the
gripper open. Putting the drawer or eggplant back is the lab's job (a person, or an AutoEval-style
reset policy run as its own job). ``success`` is always None; labels come from a detector or an
operator. See docs/interbotix.md for running this on the robot host.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from robot_bridge.backends.base import (
    BackendError,
    BackendInfo,
    Observation,
    RobotBackend,
    StepOutcome,
)
from robot_bridge.rotations import euler_to_matrix, matrix_to_euler
from robot_bridge.spec import (
    CONTROL_HZ,
    IMAGE_SHAPE,
    STATE_DIM,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    clip_target_position,
    get_task,
    validate_action,
)

log = logging.getLogger(__name__)

# The gripper-down orientation in the base frame (bridge_data_robot's DEFAULT_ROTATION, a pitch
# of +90 degrees). States and rotation deltas are Euler angles of R @ DEFAULT_ROTATION.T, which
# keeps them away from the pitch = 90 degrees gimbal lock that absolute angles would sit on.
DEFAULT_ROTATION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
# bridge_data_robot's WidowX 250s neutral joint angles (waist ... wrist_rotate): above the table,
# gripper down, clear of the scene.
BRIDGE_NEUTRAL_JOINTS = (-0.13192235, -0.76238847, 0.44485444, -0.01994175, 1.7564081, -0.15953401)
# bridge_data_robot's ABS_MAX_JOINT_EFFORTS (mA, "experimental values") for the six arm joints.
BRIDGE_MAX_EFFORTS_MA = (1200.0, 1500.0, 900.0, 900.0, 900.0, 1050.0)
ALL_MOTORS = "all"  # the xs_sdk group holding every motor of the arm and gripper


class InterbotixError(BackendError):
    """Something the real arm refused or could not do; the message says what and what to check."""


class IKError(InterbotixError):
    """The target pose has no inverse-kinematics solution within joint limits; nothing was sent."""

    recoverable = True


class JointEffortError(InterbotixError):
    """A joint drew more current than allowed (a collision or a jam); the arm went to neutral."""


class StaleFrameError(InterbotixError):
    """The newest camera frame is older than allowed; the camera or its driver stalled."""


class MotorFaultError(InterbotixError):
    """A motor reports a hardware error that a reboot did not clear, or the arm does not move."""


class InterbotixUnavailableError(ImportError):
    """The Interbotix ROS 2 packages are not importable in this Python environment."""


class Camera(Protocol):
    def read(self) -> tuple[np.ndarray, float]:
        """Newest frame, uint8 (H, W, 3) RGB, and its capture time on ``time.monotonic()``."""

    def close(self) -> None: ...


@dataclass
class InterbotixConfig:
    robot_model: str = "wx250s"
    group_name: str = "arm"
    gripper_name: str = "gripper"
    camera_device: int | str = 0  # cv2.VideoCapture index or path (/dev/video2)
    camera_shape: tuple[int, int, int] = IMAGE_SHAPE
    control_period_s: float = 1.0 / CONTROL_HZ
    # Slightly longer than a period so consecutive moves blend instead of stopping every step.
    moving_time_s: float = 0.25
    accel_time_s: float = 0.1
    reset_moving_time_s: float = 2.0
    reset_accel_time_s: float = 0.5
    gripper_pressure: float = 0.5
    gripper_delay_s: float = 0.0  # the step's own pacing gives the fingers time
    reset_gripper_delay_s: float = 1.0
    neutral_joints: tuple[float, ...] = BRIDGE_NEUTRAL_JOINTS
    # Start pose after neutral: x, y, z (m) and roll, pitch, yaw relative to gripper-down (rad),
    # bridge_data_robot's default start_state.
    start_pose: tuple[float, ...] = (0.3, 0.0, 0.15, 0.0, 0.0, 0.0)
    neutral_tolerance_rad: float = 0.1
    max_joint_efforts_ma: tuple[float, ...] = BRIDGE_MAX_EFFORTS_MA
    effort_margin_ma: float = 10.0
    max_frame_age_s: float = 1.0
    motor_count: int = 7  # motors in the "all" group (wx250s joint_order); fewer answers = a fault

    def __post_init__(self) -> None:
        # JSON from --backend-arg gives lists.
        for name in ("camera_shape", "neutral_joints", "start_pose", "max_joint_efforts_ma"):
            setattr(self, name, tuple(getattr(self, name)))
        if len(self.camera_shape) != 3 or self.camera_shape[2] != 3 or min(self.camera_shape) < 1:
            raise ValueError(f"camera_shape must be (H, W, 3), got {self.camera_shape}")
        for name in ("control_period_s", "gripper_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for moving, accel in (
            ("moving_time_s", "accel_time_s"),
            ("reset_moving_time_s", "reset_accel_time_s"),
        ):
            m, a = getattr(self, moving), getattr(self, accel)
            # The Interbotix time-based profile needs accel_time <= moving_time / 2.
            if m <= 0 or not 0 <= a <= m / 2:
                raise ValueError(
                    f"need {moving} > 0 and 0 <= {accel} <= {moving}/2, got {m} and {a}"
                )
        if len(self.neutral_joints) != 6 or len(self.max_joint_efforts_ma) != 6:
            raise ValueError(
                "neutral_joints and max_joint_efforts_ma need one value per arm joint (6), got "
                f"{len(self.neutral_joints)} and {len(self.max_joint_efforts_ma)}"
            )
        if len(self.start_pose) != 6:
            raise ValueError(
                f"start_pose must be [x, y, z, roll, pitch, yaw], got {self.start_pose}"
            )
        xyz = np.array(self.start_pose[:3], dtype=np.float32)
        if np.any(xyz < WORKSPACE_LOW) or np.any(xyz > WORKSPACE_HIGH):
            raise ValueError(
                f"start_pose position {xyz.tolist()} must lie in the workspace box "
                f"{WORKSPACE_LOW.tolist()} .. {WORKSPACE_HIGH.tolist()}"
            )
        if not 0.0 <= self.gripper_pressure <= 1.0:
            raise ValueError(f"gripper_pressure must be in [0, 1], got {self.gripper_pressure}")
        if self.max_frame_age_s <= 0 or self.neutral_tolerance_rad <= 0 or self.motor_count < 1:
            raise ValueError(
                "max_frame_age_s and neutral_tolerance_rad must be > 0 and motor_count >= 1, got "
                f"{self.max_frame_age_s}, {self.neutral_tolerance_rad}, {self.motor_count}"
            )


def pose_to_matrix(xyz, rpy_from_down) -> np.ndarray:
    """4x4 base-frame pose from a position and angles relative to gripper-down."""
    T = np.eye(4)
    T[:3, :3] = euler_to_matrix(rpy_from_down) @ DEFAULT_ROTATION
    T[:3, 3] = xyz
    return T


def next_target(target: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, bool]:
    """Apply one action's [dx, dy, dz, droll, dpitch, dyaw] to a 4x4 target; clip to the box.

    The rotation is about the end-effector point in base-frame axes (Bridge's
    ``action2transform_local`` with the end effector at its target).
    """
    T = np.eye(4)
    T[:3, :3] = euler_to_matrix(delta[3:6]) @ target[:3, :3]
    # float32 in: clip_target_position compares its float32 result with its input.
    xyz, clipped = clip_target_position((target[:3, 3] + delta[:3]).astype(np.float32))
    T[:3, 3] = xyz
    return T, clipped


class OpenCVCamera:
    """One USB/V4L camera read by a background thread; ``read`` returns the newest frame.

    Frames are resized to (H, W) and converted to RGB. If the device stops delivering, the newest
    frame simply ages and the backend reports it stale instead of replaying it.
    """

    def __init__(self, device: int | str, shape: tuple[int, int, int] = IMAGE_SHAPE) -> None:
        import cv2  # only the real station needs OpenCV

        self._cv2, self._size = cv2, (shape[1], shape[0])  # cv2 wants (W, H)
        self._cap = cv2.VideoCapture(device)
        if not self._cap.isOpened():
            raise InterbotixError(f"cannot open camera {device!r}; check the device index or path")
        self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver from queueing old frames
        self._latest: tuple[np.ndarray, float] | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grab, name=f"camera-{device}", daemon=True)
        self._thread.start()

    def _grab(self) -> None:
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            captured = time.monotonic()
            if not ok:
                time.sleep(0.01)
                continue
            small = self._cv2.resize(bgr, self._size, interpolation=self._cv2.INTER_AREA)
            self._latest = (self._cv2.cvtColor(small, self._cv2.COLOR_BGR2RGB), captured)
            self._first.set()

    def read(self) -> tuple[np.ndarray, float]:
        if not self._first.wait(timeout=2.0):
            raise StaleFrameError("the camera has not delivered a frame within 2 s of opening")
        return self._latest  # a (frame, time) tuple is replaced whole, so this read is consistent

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._cap.release()


def _connect_interbotix(config: InterbotixConfig) -> tuple[Any, Callable[[], None]]:
    """Build the real InterbotixManipulatorXS; return it and the call that shuts its node down."""
    try:
        from interbotix_xs_modules.xs_robot.arm import InterbotixManipulatorXS
    except ImportError as e:
        raise InterbotixUnavailableError(
            "the interbotix backend needs ROS 2 and interbotix_xs_modules on this Python path: "
            "source /opt/ros/<distro>/setup.bash and the Interbotix workspace's install/setup.bash "
            f"(see docs/interbotix.md); import failed with: {e}"
        ) from e
    bot = InterbotixManipulatorXS(
        robot_model=config.robot_model,
        group_name=config.group_name,
        gripper_name=config.gripper_name,
        moving_time=config.reset_moving_time_s,
        accel_time=config.reset_accel_time_s,
        gripper_pressure=config.gripper_pressure,
    )
    try:  # Humble and later: one global node spun by robot_startup()
        from interbotix_common_modules.common_robot.robot import robot_shutdown, robot_startup
    except ImportError:  # Galactic: the manipulator spins its own executor
        return bot, bot.shutdown
    robot_startup()
    return bot, robot_shutdown


class InterbotixBackend(RobotBackend):
    """WidowX 250s under 5 Hz end-effector delta control (bridge_data_robot conventions).

    ``bot_factory`` (returning an ``InterbotixManipulatorXS``-like object) and ``camera`` replace
    the real arm and OpenCV camera, e.g. with the fakes in tests; keyword overrides build an
    ``InterbotixConfig`` when no ``config`` is given (``--backend-arg camera_device=2``).
    """

    def __init__(
        self,
        config: InterbotixConfig | None = None,
        *,
        bot_factory: Callable[[], Any] | None = None,
        camera: Camera | None = None,
        **overrides: Any,
    ) -> None:
        if config is not None and overrides:
            raise ValueError(
                f"pass either config or keyword overrides, not both: {sorted(overrides)}"
            )
        self.config = config or InterbotixConfig(**overrides)
        if bot_factory is None:
            self._bot, self._shutdown = _connect_interbotix(self.config)
        else:
            self._bot = bot_factory()
            self._shutdown = getattr(self._bot, "shutdown", None)
        try:
            self._camera = camera or OpenCVCamera(
                self.config.camera_device, self.config.camera_shape
            )
        except Exception:
            if self._shutdown is not None:
                self._shutdown()  # leave no ROS node spinning behind a failed start
            raise
        self._arm, self._core, self._gripper = self._bot.arm, self._bot.core, self._bot.gripper
        self._joint_names = list(self._arm.group_info.joint_names)
        if len(self._joint_names) != 6:
            raise InterbotixError(f"expected a 6-joint arm group, got {self._joint_names}")
        self._max_efforts = np.array(self.config.max_joint_efforts_ma)
        self._target: np.ndarray | None = None  # (4, 4) commanded end-effector pose
        self._gripper_open: bool | None = None
        self._seq = itertools.count()
        self._closed = False
        self.info = BackendInfo(
            name="interbotix",
            camera_shape=self.config.camera_shape,
            has_ground_truth_success=False,
            extra={
                "robot_model": self.config.robot_model,
                "camera_device": self.config.camera_device,
            },
        )

    # -- RobotBackend ---------------------------------------------------------------------
    def reset(self, task: str, seed: int | None = None) -> Observation:
        """Check the motors, open the gripper, go to neutral, then to the start pose.

        ``seed`` cannot place objects on a real table; the scene is reset by the lab.
        """
        get_task(task)
        self._ensure_motors_ok()
        self._set_gripper(open_=True, delay=self.config.reset_gripper_delay_s)
        if not self._go_to_neutral():
            log.warning("arm did not reach neutral; checking the motors and retrying once")
            self._ensure_motors_ok(force_reboot=True)
            if not self._go_to_neutral():
                raise MotorFaultError(
                    f"arm did not reach neutral within {self.config.neutral_tolerance_rad} rad "
                    f"(measured {np.round(self._measured_joints(), 3).tolist()}); check for a "
                    "blocked arm or an unpowered motor"
                )
        start = pose_to_matrix(self.config.start_pose[:3], self.config.start_pose[3:])
        self._move_to(
            start, self.config.reset_moving_time_s, self.config.reset_accel_time_s, blocking=True
        )
        self._target = self._arm.get_ee_pose()
        return self.observe()

    def step(self, action: np.ndarray) -> StepOutcome:
        if self._target is None:
            raise InterbotixError("step before reset: call reset() first")
        a = validate_action(action)
        started = time.monotonic()
        target, clipped = next_target(self._target, a)
        self._move_to(target, self.config.moving_time_s, self.config.accel_time_s, blocking=False)
        self._target = target
        self._set_gripper(open_=bool(a[6] >= 0.5), delay=self.config.gripper_delay_s)
        self._sleep_until(started + self.config.control_period_s)
        self._check_efforts()
        return StepOutcome(self.observe(), workspace_clipped=clipped)

    def observe(self) -> Observation:
        image, captured = self._camera.read()
        age = time.monotonic() - captured
        if age > self.config.max_frame_age_s:
            raise StaleFrameError(
                f"newest camera frame is {age:.2f} s old (limit {self.config.max_frame_age_s} s); "
                f"is camera {self.config.camera_device!r} still streaming?"
            )
        if image.dtype != np.uint8 or image.shape != self.config.camera_shape:
            raise InterbotixError(
                f"camera frame must be {self.config.camera_shape} uint8, got {image.shape} {image.dtype}"
            )
        return Observation(
            image=image, state=self._state(), timestamp=captured, seq=next(self._seq)
        )

    def success(self) -> None:
        return None  # no ground truth on a real table; a detector or an operator labels episodes

    def hold_safe(self) -> None:
        """Command the measured joint positions, so the arm stops where it is."""
        q = self._measured_joints()
        held = self._arm.set_joint_positions(
            q,
            moving_time=self.config.moving_time_s,
            accel_time=self.config.accel_time_s,
            blocking=False,
        )
        if not held:
            # The API refuses positions a hair outside its limits or too far from the last
            # command; the motors must still stop, so publish the measured positions directly.
            log.warning("hold_safe: set_joint_positions refused %s; writing them directly", q)
            self._core.robot_write_commands(self._arm.group_name, q)
            self._arm.capture_joint_positions()
        if self._target is not None:
            self._target = self._arm.get_ee_pose()

    def close(self) -> None:
        """Open the gripper, fold the arm into its sleep pose, shut the ROS node and camera down."""
        if self._closed:
            return
        self._closed = True
        try:
            timing = {
                "moving_time": self.config.reset_moving_time_s,
                "accel_time": self.config.reset_accel_time_s,
            }
            self._gripper.release(delay=self.config.reset_gripper_delay_s)
            self._arm.go_to_home_pose(**timing)  # via home, so the folding arm clears the table
            self._arm.go_to_sleep_pose(**timing)
        finally:
            if self._shutdown is not None:
                self._shutdown()
            self._camera.close()

    # -- internals ------------------------------------------------------------------------
    def _move_to(
        self, T: np.ndarray, moving_time: float, accel_time: float, blocking: bool
    ) -> None:
        # The full matrix, not set_ee_pose_components: gripper-down is pitch = 90 degrees in the
        # API's absolute angles, where roll and yaw are not separable.
        _, found = self._arm.set_ee_pose_matrix(
            T,
            custom_guess=self._measured_joints(),
            execute=True,
            moving_time=moving_time,
            accel_time=accel_time,
            blocking=blocking,
        )
        if not found:
            xyz = np.round(T[:3, 3], 4).tolist()
            rpy = np.round(matrix_to_euler(T[:3, :3] @ DEFAULT_ROTATION.T), 3).tolist()
            raise IKError(
                f"no inverse-kinematics solution within joint limits for target xyz={xyz} m, "
                f"rpy from gripper-down={rpy} rad; nothing was sent and the target is unchanged"
            )

    def _set_gripper(self, open_: bool, delay: float) -> None:
        if open_ == self._gripper_open:
            return  # the PWM gripper holds its last command; re-sending would re-stall the motor
        (self._gripper.release if open_ else self._gripper.grasp)(delay=delay)
        self._gripper_open = open_

    def _go_to_neutral(self) -> bool:
        """Command the neutral joints (blocking); True if the encoders confirm the arm got there."""
        self._arm.set_joint_positions(
            list(self.config.neutral_joints),
            moving_time=self.config.reset_moving_time_s,
            accel_time=self.config.reset_accel_time_s,
            blocking=True,
        )
        error = np.abs(np.array(self._measured_joints()) - np.array(self.config.neutral_joints))
        return bool(np.max(error) <= self.config.neutral_tolerance_rad)

    def _check_efforts(self) -> None:
        js = self._core.robot_get_joint_states()
        efforts = np.array([js.effort[self._core.js_index_map[n]] for n in self._joint_names])
        excess = np.abs(efforts) - self._max_efforts
        if np.max(excess) <= self.config.effort_margin_ma:
            return
        worst = int(np.argmax(excess))
        self._set_gripper(open_=True, delay=self.config.reset_gripper_delay_s)
        self._go_to_neutral()
        self._target = self._arm.get_ee_pose()
        raise JointEffortError(
            f"joint {self._joint_names[worst]} drew {efforts[worst]:.0f} mA, over its "
            f"{self._max_efforts[worst]:.0f} mA limit (efforts {np.round(efforts).tolist()} mA); "
            "gripper opened and arm sent to neutral; check for a collision before continuing"
        )

    def _ensure_motors_ok(self, force_reboot: bool = False) -> None:
        status = self._motor_status()
        if not force_reboot and self._healthy(status):
            return
        log.warning("motor hardware error status %s; rebooting faulty motors", status)
        self._core.robot_reboot_motors("group", ALL_MOTORS, enable=True, smart_reboot=True)
        self._core.robot_torque_enable("group", ALL_MOTORS, True)
        self._arm.capture_joint_positions()  # the API's advice after torquing back on
        status = self._motor_status()
        if not self._healthy(status):
            raise MotorFaultError(
                f"motors still report Hardware_Error_Status {status} after a reboot (expected "
                f"{self.config.motor_count} zeros); power-cycle the arm and check cables and load"
            )

    def _motor_status(self) -> list[int]:
        return list(
            self._core.robot_get_motor_registers("group", ALL_MOTORS, "Hardware_Error_Status")
        )

    def _healthy(self, status: list[int]) -> bool:
        # A motor that stops answering drops out of the reply, as bridge_data_robot checks.
        return len(status) >= self.config.motor_count and not any(status)

    def _measured_joints(self) -> list[float]:
        js = self._core.robot_get_joint_states()
        return [float(js.position[self._core.js_index_map[n]]) for n in self._joint_names]

    def _gripper_fraction(self) -> float:
        js = self._core.robot_get_joint_states()
        lo, hi = self._gripper.left_finger_lower_limit, self._gripper.left_finger_upper_limit
        return float(
            np.clip((js.position[self._gripper.left_finger_index] - lo) / (hi - lo), 0.0, 1.0)
        )

    def _state(self) -> np.ndarray:
        """[x, y, z, roll, pitch, yaw, gripper] from the encoders; angles from gripper-down."""
        T = self._arm.get_ee_pose()
        rpy = matrix_to_euler(T[:3, :3] @ DEFAULT_ROTATION.T)
        state = np.concatenate([T[:3, 3], rpy, [self._gripper_fraction()]]).astype(np.float32)
        assert state.shape == (STATE_DIM,), state.shape
        return state

    @staticmethod
    def _sleep_until(deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)


__all__ = [
    "Camera",
    "IKError",
    "InterbotixBackend",
    "InterbotixConfig",
    "InterbotixError",
    "InterbotixUnavailableError",
    "JointEffortError",
    "MotorFaultError",
    "OpenCVCamera",
    "StaleFrameError",
]
