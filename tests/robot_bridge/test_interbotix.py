"""The real-arm backend against a faithful fake of the Interbotix API: the exact calls it makes."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fakes.interbotix_fake import (
    SLEEP_POSITIONS,
    FakeCamera,
    FakeInterbotixManipulatorXS,
    euler_angles_to_rotation_matrix,
    fk,
)

from robot_bridge.backends.base import make_backend
from robot_bridge.backends.interbotix import (
    BRIDGE_NEUTRAL_JOINTS,
    DEFAULT_ROTATION,
    IKError,
    InterbotixBackend,
    InterbotixConfig,
    InterbotixError,
    InterbotixUnavailableError,
    JointEffortError,
    MotorFaultError,
    OpenCVCamera,
    StaleFrameError,
    euler_to_matrix,
    matrix_to_euler,
    pose_to_matrix,
)
from robot_bridge.spec import WORKSPACE_HIGH

MOTION = {"arm.set_joint_positions", "arm.set_ee_pose_matrix", "arm.set_ee_pose_components",
          "arm.go_to_home_pose", "arm.go_to_sleep_pose", "core.robot_write_commands",
          "gripper.grasp", "gripper.release"}  # fmt: skip


def act(dxyz=(0, 0, 0), drpy=(0, 0, 0), gripper=1.0) -> np.ndarray:
    return np.array([*dxyz, *drpy, gripper], dtype=np.float32)


def motion_calls(bot, since: int = 0) -> list[str]:
    return [c.name for c in bot.calls[since:] if c.name in MOTION]


@pytest.fixture
def rig():
    bot = FakeInterbotixManipulatorXS()
    camera = FakeCamera()
    backend = InterbotixBackend(
        InterbotixConfig(control_period_s=0.0), bot_factory=lambda: bot, camera=camera
    )
    yield backend, bot, camera
    backend.close()


def test_registered_by_name_and_has_no_ground_truth():
    bot = FakeInterbotixManipulatorXS()
    backend = make_backend(
        "interbotix", bot_factory=lambda: bot, camera=FakeCamera(), control_period_s=0.0
    )
    assert isinstance(backend, InterbotixBackend)
    assert backend.info.name == "interbotix" and not backend.info.has_ground_truth_success
    backend.reset("open_drawer")
    assert backend.success() is None


def test_without_ros_the_real_backend_says_what_to_install():
    import importlib.util

    if importlib.util.find_spec("interbotix_xs_modules") is not None:
        pytest.skip("Interbotix is installed here; this checks the message on machines without it")
    with pytest.raises(InterbotixUnavailableError, match="docs/interbotix.md"):
        make_backend("interbotix", camera=FakeCamera())


def test_reset_checks_motors_opens_gripper_goes_to_neutral_then_start_pose(rig):
    backend, bot, _ = rig
    obs = backend.reset("eggplant_in_sink", seed=3)
    assert bot.calls.names()[0] == "core.robot_get_motor_registers"
    assert bot.calls[0].args == ("group", "all", "Hardware_Error_Status")
    assert "core.robot_reboot_motors" not in bot.calls.names()
    assert motion_calls(bot) == [
        "gripper.release",
        "arm.set_joint_positions",
        "arm.set_ee_pose_matrix",
    ]
    (neutral,) = bot.calls.named("arm.set_joint_positions")
    assert neutral.args[0] == pytest.approx(list(BRIDGE_NEUTRAL_JOINTS))
    assert neutral.kwargs["blocking"] is True
    (start,) = bot.calls.named("arm.set_ee_pose_matrix")
    np.testing.assert_allclose(start.args[0], pose_to_matrix((0.3, 0.0, 0.15), (0, 0, 0)))
    # The state is measured: start position, gripper-down (zero angles), gripper open.
    np.testing.assert_allclose(obs.state, [0.3, 0.0, 0.15, 0, 0, 0, 1.0], atol=2e-3)
    assert obs.image.shape == (256, 256, 3) and obs.image.dtype == np.uint8


def test_step_sends_the_clipped_target_seeded_with_measured_joints(rig):
    backend, bot, _ = rig
    obs0 = backend.reset("open_drawer")
    T0 = fk(bot.core.arm_positions())
    joints_before = bot.core.arm_positions()
    n = len(bot.calls)
    out = backend.step(act(dxyz=(0.01, -0.02, 0.05), drpy=(0.1, 0, 0), gripper=0.0))

    (sent,) = bot.calls[n:].named("arm.set_ee_pose_matrix")
    expected = np.eye(4)
    expected[:3, :3] = euler_angles_to_rotation_matrix([0.1, 0, 0]) @ T0[:3, :3]
    expected[:3, 3] = T0[:3, 3] + [0.01, -0.02, 0.0]
    expected[2, 3] = WORKSPACE_HIGH[2]  # 0.15 + 0.05 is above the box
    np.testing.assert_allclose(sent.args[0], expected, atol=1e-6)
    assert sent.kwargs["custom_guess"] == pytest.approx(joints_before)
    assert sent.kwargs == {
        **sent.kwargs,
        "execute": True,
        "blocking": False,
        "moving_time": 0.25,
        "accel_time": 0.1,
    }
    assert out.workspace_clipped
    assert motion_calls(bot, n) == ["arm.set_ee_pose_matrix", "gripper.grasp"]
    # Measured state: the fake arm tracks perfectly, the fingers closed, roll is from gripper-down.
    np.testing.assert_allclose(out.observation.state[:3], expected[:3, 3], atol=2e-3)
    assert out.observation.state[3] == pytest.approx(0.1, abs=3e-3)
    assert out.observation.state[6] == 0.0
    assert out.observation.seq == obs0.seq + 1

    n = len(bot.calls)
    out = backend.step(act(dxyz=(0.0, 0.01, -0.02), gripper=0.2))
    assert not out.workspace_clipped
    assert motion_calls(bot, n) == ["arm.set_ee_pose_matrix"]  # still closed: no second grasp
    np.testing.assert_allclose(bot.calls.named("arm.set_ee_pose_matrix")[-1].args[0][:3, 3],
                               expected[:3, 3] + [0, 0.01, -0.02], atol=1e-6)  # fmt: skip


def test_ik_failure_is_refused_and_nothing_moves(rig):
    backend, bot, _ = rig
    backend.reset("eggplant_in_basket")
    toward_far_corner = act(dxyz=(0.05, 0.05, -0.05))  # (0.45, 0.25, -0.10) is out of reach
    with pytest.raises(IKError, match="no inverse-kinematics solution") as refused:
        for _ in range(8):
            n, joints, commands = len(bot.calls), bot.core.arm_positions(), bot.arm.joint_commands
            last_sent = bot.calls.named("arm.set_ee_pose_matrix")[-1].args[0]
            backend.step(toward_far_corner)
    assert "target is unchanged" in str(refused.value)
    assert motion_calls(bot, n) == ["arm.set_ee_pose_matrix"]  # asked, refused, nothing else
    assert bot.core.arm_positions() == joints and bot.arm.joint_commands == commands
    # The target stayed: a zero action asks for the last pose that was sent.
    n = len(bot.calls)
    backend.step(act())
    np.testing.assert_allclose(bot.calls[n:].named("arm.set_ee_pose_matrix")[0].args[0], last_sent)


def test_effort_spike_opens_gripper_goes_to_neutral_and_raises(rig):
    backend, bot, _ = rig
    backend.reset("close_drawer")
    backend.step(act(gripper=0.0))
    bot.core.set_effort("shoulder", -1505.0)  # within the limit's 10 mA margin
    backend.step(act(gripper=0.0))
    bot.core.set_effort("shoulder", -2000.0)
    n = len(bot.calls)
    with pytest.raises(JointEffortError, match="shoulder drew -2000 mA"):
        backend.step(act(dxyz=(0.01, 0, 0), gripper=0.0))
    assert motion_calls(bot, n) == [
        "arm.set_ee_pose_matrix",
        "gripper.release",
        "arm.set_joint_positions",
    ]
    assert bot.calls.named("arm.set_joint_positions")[-1].args[0] == pytest.approx(
        list(BRIDGE_NEUTRAL_JOINTS)
    )
    assert bot.core.arm_positions() == pytest.approx(list(BRIDGE_NEUTRAL_JOINTS))


def test_stale_frame_raises(rig):
    backend, _, camera = rig
    backend.reset("open_drawer")
    camera.age_s = 0.5
    assert backend.observe().timestamp < time.monotonic() - 0.4  # stamped at capture, not now
    camera.age_s = 1.5
    with pytest.raises(StaleFrameError, match="1.5"):
        backend.observe()
    with pytest.raises(StaleFrameError):
        backend.step(act())


def test_motor_fault_at_reset_reboots_then_proceeds(rig):
    backend, bot, _ = rig
    bot.core.hardware_error_status = [0, 0, 0, 0, 32, 0, 0]  # overload on wrist_angle
    backend.reset("open_drawer")
    names = bot.calls.names()
    assert names[:5] == ["core.robot_get_motor_registers", "core.robot_reboot_motors",
                         "core.robot_torque_enable", "arm.capture_joint_positions",
                         "core.robot_get_motor_registers"]  # fmt: skip
    reboot = bot.calls.named("core.robot_reboot_motors")[0]
    assert reboot.args == ("group", "all", True) and reboot.kwargs == {"smart_reboot": True}
    assert bot.calls.named("core.robot_torque_enable")[0].args == ("group", "all", True)
    assert bot.core.arm_positions() != pytest.approx(SLEEP_POSITIONS)  # it moved after the reboot


@pytest.mark.parametrize(
    "status", [[0, 0, 0, 0, 32, 0, 0], [0, 0, 0, 0, 0, 0]]
)  # error, silent motor
def test_motor_fault_that_survives_a_reboot_raises_before_any_motion(status):
    bot = FakeInterbotixManipulatorXS()
    bot.core.hardware_error_status = status
    bot.core.reboot_clears_errors = False
    backend = InterbotixBackend(bot_factory=lambda: bot, camera=FakeCamera(), control_period_s=0.0)
    with pytest.raises(MotorFaultError, match="after a reboot"):
        backend.reset("open_drawer")
    assert "core.robot_reboot_motors" in bot.calls.names()
    assert motion_calls(bot) == []


def test_arm_that_does_not_reach_neutral_is_a_motor_fault():
    bot = FakeInterbotixManipulatorXS()
    bot.core.stuck = True
    backend = InterbotixBackend(bot_factory=lambda: bot, camera=FakeCamera(), control_period_s=0.0)
    with pytest.raises(MotorFaultError, match="did not reach neutral"):
        backend.reset("open_drawer")
    assert bot.calls.names().count("arm.set_joint_positions") == 2  # tried, rebooted, tried again
    assert "core.robot_reboot_motors" in bot.calls.names()


def test_hold_safe_commands_the_measured_joints_and_retargets_there(rig):
    backend, bot, _ = rig
    backend.reset("open_drawer")
    backend.step(act(dxyz=(0.02, 0, 0)))
    measured = [q + 0.01 for q in bot.core.arm_positions()]  # the arm is a little off its command
    bot.core._move_arm(measured)
    n = len(bot.calls)
    backend.hold_safe()
    assert motion_calls(bot, n) == ["arm.set_joint_positions"]
    hold = bot.calls[n:].named("arm.set_joint_positions")[0]
    assert hold.args[0] == pytest.approx(measured) and hold.kwargs["blocking"] is False
    n = len(bot.calls)
    backend.step(act())  # a zero action now keeps the pose where the arm stopped
    np.testing.assert_allclose(
        bot.calls[n:].named("arm.set_ee_pose_matrix")[0].args[0], fk(measured), atol=1e-9
    )


def test_hold_safe_writes_directly_when_the_api_refuses(rig):
    backend, bot, _ = rig
    backend.reset("open_drawer")
    measured = bot.core.arm_positions()
    measured[0] += 1.0  # too far from the last command for the API's velocity check
    bot.core._move_arm(measured)
    n = len(bot.calls)
    backend.hold_safe()
    assert motion_calls(bot, n) == ["arm.set_joint_positions", "core.robot_write_commands"]
    assert bot.calls.named("core.robot_write_commands")[0].args == ("arm", pytest.approx(measured))
    assert "arm.capture_joint_positions" in bot.calls.names()[n:]
    assert bot.arm.joint_commands == pytest.approx(measured)


def test_close_folds_to_sleep_and_shuts_down_once(rig):
    backend, bot, camera = rig
    backend.reset("open_drawer")
    n = len(bot.calls)
    backend.close()
    backend.close()
    assert bot.calls.names()[n:] == [
        "gripper.release",
        "arm.go_to_home_pose",
        "arm.go_to_sleep_pose",
        "shutdown",
    ]
    assert bot.core.arm_positions() == pytest.approx(SLEEP_POSITIONS) and camera.closed


def test_step_before_reset_and_paced_steps():
    bot = FakeInterbotixManipulatorXS()
    backend = InterbotixBackend(bot_factory=lambda: bot, camera=FakeCamera(), control_period_s=0.05)
    with pytest.raises(InterbotixError, match="reset"):
        backend.step(act())
    backend.reset("open_drawer")
    t0 = time.monotonic()
    backend.step(act())
    assert time.monotonic() - t0 >= 0.05


def test_config_checks_name_expected_and_received():
    with pytest.raises(ValueError, match=r"accel_time_s <= moving_time_s/2, got 0.25 and 0.2"):
        InterbotixConfig(accel_time_s=0.2)
    with pytest.raises(ValueError, match="workspace box"):
        InterbotixConfig(start_pose=(0.3, 0.0, 0.5, 0, 0, 0))
    with pytest.raises(ValueError, match="one value per arm joint"):
        InterbotixConfig(neutral_joints=[0.0] * 5)
    assert InterbotixConfig(camera_shape=[128, 160, 3]).camera_shape == (128, 160, 3)  # from JSON


def test_euler_convention_matches_interbotix_and_round_trips():
    rng = np.random.default_rng(0)
    for rpy in rng.uniform([-3, -1.5, -3], [3, 1.5, 3], size=(20, 3)):
        np.testing.assert_allclose(
            euler_to_matrix(rpy), euler_angles_to_rotation_matrix(rpy), atol=1e-12
        )
        np.testing.assert_allclose(matrix_to_euler(euler_to_matrix(rpy)), rpy, atol=1e-9)
    # Gripper-down is a pitch of +90 degrees in the API's absolute angles.
    np.testing.assert_allclose(
        euler_angles_to_rotation_matrix([0, np.pi / 2, 0]), DEFAULT_ROTATION, atol=1e-12
    )


def test_opencv_camera_gives_resized_rgb_frames(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = str(tmp_path / "red.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(3):
        writer.write(np.full((48, 64, 3), (0, 0, 255), np.uint8))  # red, in BGR
    writer.release()
    camera = OpenCVCamera(path, (32, 40, 3))
    try:
        image, captured = camera.read()
    finally:
        camera.close()
    assert image.shape == (32, 40, 3) and image.dtype == np.uint8
    assert image[..., 0].min() > 200 and image[..., 2].max() < 50  # RGB order
    assert 0 <= time.monotonic() - captured < 2.0


def test_station_turns_backend_refusals_into_clear_replies(tmp_path):
    """The real station logic over the real-arm backend: an IK refusal is an error reply, nothing moves."""
    from robot_bridge import protocol
    from robot_bridge.station import Station, StationConfig

    bot, camera = FakeInterbotixManipulatorXS(), FakeCamera()
    backend = InterbotixBackend(
        InterbotixConfig(control_period_s=0.0), bot_factory=lambda: bot, camera=camera
    )
    station = Station(backend, StationConfig(episodes_dir=tmp_path / "episodes"))

    def call(op, args=None, lease=None, arrays=None):
        frames = protocol.request(f"{op}-{len(bot.calls)}", op, args or {}, lease, arrays)
        header, out = protocol.decode(station.handle([bytes(memoryview(f)) for f in frames]))
        return header, out

    lease = call("acquire_lease")[0]["result"]["lease"]
    assert call("reset", {"task": "open_drawer", "seed": 0}, lease)[0]["ok"]
    # push the target far into a corner the arm cannot reach, one clipped step at a time
    reply = None
    for _ in range(40):
        reply, _ = call("step", lease=lease, arrays={"action": act(dxyz=(0.05, 0.05, -0.05))})
        if not reply["ok"]:
            break
    assert reply["error"]["code"] == "backend_error"
    assert "IKError" in reply["error"]["message"] and "nothing moved" in reply["error"]["message"]
    since = len(bot.calls)
    ok, _ = call("step", lease=lease, arrays={"action": act(dxyz=(-0.05, -0.05, 0.05))})
    assert ok["ok"], ok  # the episode goes on after a refused step
    assert "arm.set_ee_pose_matrix" in motion_calls(bot, since)
    station.shutdown()
    backend.close()
