"""A MuJoCo-simulated WidowX 250s station: the four AutoEval tasks with ground-truth success.

The arm follows the public Interbotix WX250s kinematics (link offsets and joint limits of
``wx250s.urdf.xacro``) built from primitive geoms; the scene is a table with a drawer cabinet, a
purple eggplant, a blue sink and a yellow basket, seen by one over-the-shoulder RGB camera.

Coordinates are the robot-base frame: x forward, y left, z up, origin at the base of the arm
(which stands on a 10 cm riser, so the table top is z = -0.10). The Bridge workspace box of
``robot_bridge.spec`` covers every object.

Control follows Bridge: each 5 Hz action is added to the *target* end-effector pose, the target
position is clipped to the workspace box, damped-least-squares IK turns the target into joint
set-points for position actuators, and the physics runs for one 200 ms control period.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace

import mujoco
import numpy as np

from robot_bridge.backends.base import (
    BackendInfo,
    Observation,
    RobotBackend,
    SequenceCounter,
    StepOutcome,
)
from robot_bridge.rotations import euler_to_matrix, matrix_to_euler
from robot_bridge.spec import ACTION_DIM, CONTROL_HZ, clip_target_position, get_task

TABLE_Z = -0.10  # table top in the robot-base frame

ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
FINGER_JOINTS = ("left_finger", "right_finger")

# Finger half-gap (pad surface to gripper centre line, metres). Fully open is the WX250s
# finger travel; the closed set-point lies past the joint stop so a closed gripper squeezes
# whatever it holds with the actuator's force limit instead of resting at zero force.
FINGER_OPEN = 0.037
FINGER_STOP = 0.0
FINGER_CLOSED_SETPOINT = -0.012

DRAWER_TRAVEL = 0.12  # slide range of the drawer (m)
DRAWER_OPEN_SUCCESS = 0.07  # open_drawer succeeds once the drawer is out this far
DRAWER_CLOSED_SUCCESS = 0.015  # close_drawer succeeds once the drawer is in this far

# Gripper-down orientation: the gripper's approach axis (its local x) points along -z and its
# fingers close along the base y axis. States and targets store angles relative to it.
R_DOWN = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


# --------------------------------------------------------------------------- rotations


def wrap_angle(a: np.ndarray | float) -> np.ndarray | float:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _rotation_error(rot_target: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """World-frame rotation vector taking ``rot`` to ``rot_target``."""
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (rot_target @ rot.T).reshape(9))
    vel = np.empty(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class SceneStyle:
    """Everything about the scene's look and contact that the gap variant changes."""

    table_rgba: tuple = (0.78, 0.66, 0.50, 1)
    table_texture: str | None = None  # None: plain; "checker": a two-tone checker board
    table_rgb2: tuple = (0.70, 0.58, 0.42)
    wall_rgba: tuple = (0.86, 0.86, 0.84, 1)
    floor_rgba: tuple = (0.35, 0.35, 0.38, 1)
    arm_rgba: tuple = (0.12, 0.12, 0.13, 1)
    arm_accent_rgba: tuple = (0.45, 0.45, 0.48, 1)
    finger_rgba: tuple = (0.85, 0.85, 0.85, 1)
    eggplant_rgba: tuple = (0.50, 0.10, 0.62, 1)
    eggplant_cap_rgba: tuple = (0.15, 0.60, 0.15, 1)
    sink_rgba: tuple = (0.10, 0.30, 0.90, 1)
    basket_rgba: tuple = (0.98, 0.85, 0.05, 1)
    cabinet_rgba: tuple = (0.92, 0.92, 0.90, 1)
    drawer_rgba: tuple = (0.95, 0.45, 0.10, 1)
    handle_rgba: tuple = (0.10, 0.75, 0.80, 1)
    light_dir: tuple = (0.3, 0.2, -1.0)
    light_diffuse: float = 0.65
    ambient: float = 0.35
    camera_pos: tuple = (0.12, -0.50, 0.42)
    camera_target: tuple = (0.28, 0.08, -0.03)
    camera_fovy: float = 50.0
    object_friction: float = 1.2


SIM_STYLE = SceneStyle()

# A "software simulator" standing in for SIMPLER: other textures, colours, light, camera and
# friction, with the objects still recognisable (purple eggplant, blue sink, yellow basket).
GAP_STYLE = replace(
    SIM_STYLE,
    table_rgba=(0.55, 0.55, 0.60, 1),
    table_texture="checker",
    table_rgb2=(0.42, 0.42, 0.48),
    wall_rgba=(0.55, 0.62, 0.55, 1),
    floor_rgba=(0.20, 0.18, 0.16, 1),
    arm_rgba=(0.25, 0.25, 0.30, 1),
    eggplant_rgba=(0.38, 0.05, 0.45, 1),
    sink_rgba=(0.25, 0.50, 0.95, 1),
    basket_rgba=(0.95, 0.70, 0.10, 1),
    cabinet_rgba=(0.70, 0.55, 0.40, 1),
    drawer_rgba=(0.80, 0.30, 0.15, 1),
    light_dir=(-0.5, 0.4, -0.8),
    light_diffuse=0.85,
    ambient=0.20,
    camera_pos=(0.19, -0.47, 0.45),
    camera_target=(0.29, 0.07, -0.04),
    camera_fovy=47.0,
    object_friction=0.7,
)


def _fmt(v) -> str:
    return " ".join(f"{x:.4g}" for x in v)


def _camera_xyaxes(pos: tuple, target: tuple) -> str:
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return _fmt(np.concatenate([right, up]))


def _box_container(name: str, inner: float, wall_h: float, rgba: tuple) -> str:
    """An open square container: a floor and four walls, ``inner`` half-width inside."""
    t = 0.006  # wall half-thickness
    o = inner + t
    h = wall_h / 2
    c = _fmt(rgba)
    return f"""
    <body name="{name}" pos="0 0 {TABLE_Z}">
      <site name="{name}_center" pos="0 0 0.004" size="0.005" rgba="0 0 0 0"/>
      <geom type="box" size="{o:.4f} {o:.4f} 0.004" pos="0 0 0.004" rgba="{c}"/>
      <geom type="box" size="{t} {o:.4f} {h}" pos="{o:.4f} 0 {h}" rgba="{c}"/>
      <geom type="box" size="{t} {o:.4f} {h}" pos="{-o:.4f} 0 {h}" rgba="{c}"/>
      <geom type="box" size="{inner:.4f} {t} {h}" pos="0 {o:.4f} {h}" rgba="{c}"/>
      <geom type="box" size="{inner:.4f} {t} {h}" pos="0 {-o:.4f} {h}" rgba="{c}"/>
    </body>"""


SINK_INNER = 0.065  # inner half-width (m)
SINK_WALL = 0.055
BASKET_INNER = 0.058
BASKET_WALL = 0.045
SINK_POS = np.array([0.34, -0.075])
BASKET_POS = np.array([0.16, -0.085])
EGGPLANT_POS = np.array([0.215, 0.05])
EGGPLANT_RADIUS = 0.021
EGGPLANT_HALF_LEN = 0.035
CABINET_POS = np.array([0.40, 0.165])  # drawer front face x, cabinet centre y
HANDLE_Z = TABLE_Z + 0.06


def _arm_xml(s: SceneStyle) -> str:
    arm, acc, fin = _fmt(s.arm_rgba), _fmt(s.arm_accent_rgba), _fmt(s.finger_rgba)
    # WX250s offsets from the Interbotix URDF: waist 0.072, shoulder 0.03865, elbow
    # (0.04975, 0.25), forearm_roll 0.175, wrist_angle 0.075, wrist_rotate 0.065; joint
    # limits in radians from the same file.
    return f"""
    <body name="base_link" pos="0 0 0">
      <geom type="cylinder" size="0.07 0.05" pos="0 0 -0.05" rgba="{acc}"/>
      <geom type="box" size="0.06 0.06 0.018" pos="0 0 0.018" rgba="{arm}"/>
      <body name="shoulder_link" pos="0 0 0.072" gravcomp="1">
        <joint name="waist" axis="0 0 1" range="-3.14158 3.14158"/>
        <geom type="cylinder" size="0.045 0.02" pos="0 0 0.01" rgba="{arm}"/>
        <body name="upper_arm_link" pos="0 0 0.03865" gravcomp="1">
          <joint name="shoulder" axis="0 1 0" range="-1.8850 1.9897"/>
          <geom type="capsule" fromto="0 0 0 0 0 0.25" size="0.026" rgba="{arm}"/>
          <geom type="capsule" fromto="0 0 0.25 0.04975 0 0.25" size="0.024" rgba="{arm}"/>
          <body name="upper_forearm_link" pos="0.04975 0 0.25" gravcomp="1">
            <joint name="elbow" axis="0 1 0" range="-2.1468 1.6057"/>
            <geom type="capsule" fromto="0 0 0 0.175 0 0" size="0.022" rgba="{arm}"/>
            <body name="lower_forearm_link" pos="0.175 0 0" gravcomp="1">
              <joint name="forearm_roll" axis="1 0 0" range="-3.14158 3.14158"/>
              <geom type="capsule" fromto="0 0 0 0.075 0 0" size="0.02" rgba="{acc}"/>
              <body name="wrist_link" pos="0.075 0 0" gravcomp="1">
                <joint name="wrist_angle" axis="0 1 0" range="-1.7453 2.1468"/>
                <geom type="capsule" fromto="0 0 0 0.04 0 0" size="0.019" rgba="{arm}"/>
                <body name="gripper_link" pos="0.065 0 0" gravcomp="1">
                  <joint name="wrist_rotate" axis="1 0 0" range="-3.14158 3.14158"/>
                  <geom type="box" size="0.028 0.048 0.02" pos="0.03 0 0" rgba="{arm}"/>
                  <geom type="box" size="0.004 0.044 0.014" pos="0.062 0 0" rgba="{acc}"/>
                  <site name="ee" pos="0.093 0 0" size="0.006" rgba="1 0 0 0"/>
                  <body name="left_finger_link" gravcomp="1">
                    <joint name="left_finger" type="slide" axis="0 1 0" range="{FINGER_STOP} {FINGER_OPEN}"/>
                    <geom name="left_pad" class="pad" type="box" size="0.022 0.005 0.012" pos="0.088 0.005 0" rgba="{fin}"/>
                  </body>
                  <body name="right_finger_link" gravcomp="1">
                    <joint name="right_finger" type="slide" axis="0 -1 0" range="{FINGER_STOP} {FINGER_OPEN}"/>
                    <geom name="right_pad" class="pad" type="box" size="0.022 0.005 0.012" pos="0.088 -0.005 0" rgba="{fin}"/>
                  </body>
                </body>
              </body>
            </body>
          </body>
        </body>
      </body>
    </body>"""


def _drawer_xml(s: SceneStyle) -> str:
    cab, drw, hdl = _fmt(s.cabinet_rgba), _fmt(s.drawer_rgba), _fmt(s.handle_rgba)
    w, d = 0.07, 0.08  # cabinet half-width (y) and half-depth (x)
    z0 = TABLE_Z
    # The drawer box: front panel facing the robot, a floor, two sides and a back; the handle
    # is a vertical tab the gripper can pinch from above.
    return f"""
    <body name="cabinet" pos="{CABINET_POS[0]:.4f} {CABINET_POS[1]:.4f} 0">
      <geom type="box" size="{d} {w} 0.006" pos="{d} 0 {z0 + 0.006:.4f}" rgba="{cab}"/>
      <geom type="box" size="{d} {w} 0.008" pos="{d} 0 {z0 + 0.108:.4f}" rgba="{cab}"/>
      <geom type="box" size="{d} 0.006 0.05" pos="{d} {w - 0.006:.4f} {z0 + 0.05:.4f}" rgba="{cab}"/>
      <geom type="box" size="{d} 0.006 0.05" pos="{d} {-w + 0.006:.4f} {z0 + 0.05:.4f}" rgba="{cab}"/>
      <geom type="box" size="0.006 {w} 0.05" pos="{2 * d - 0.006:.4f} 0 {z0 + 0.05:.4f}" rgba="{cab}"/>
      <body name="drawer" pos="0 0 0">
        <joint name="drawer_slide" type="slide" axis="-1 0 0" range="0 {DRAWER_TRAVEL}" damping="4" frictionloss="0.3" armature="0.05"/>
        <geom type="box" size="0.006 {w - 0.004:.4f} 0.044" pos="0.006 0 {z0 + 0.058:.4f}" rgba="{drw}" mass="0.3"/>
        <geom type="box" size="{d - 0.01:.4f} {w - 0.016:.4f} 0.004" pos="{d:.4f} 0 {z0 + 0.018:.4f}" rgba="{drw}" mass="0.1"/>
        <geom type="box" size="{d - 0.01:.4f} 0.004 0.025" pos="{d:.4f} {w - 0.016:.4f} {z0 + 0.04:.4f}" rgba="{drw}" mass="0.05"/>
        <geom type="box" size="{d - 0.01:.4f} 0.004 0.025" pos="{d:.4f} {-w + 0.016:.4f} {z0 + 0.04:.4f}" rgba="{drw}" mass="0.05"/>
        <geom name="handle" class="pad" type="box" size="0.024 0.006 0.014" pos="-0.024 0 {HANDLE_Z:.4f}" rgba="{hdl}" mass="0.02"/>
        <site name="handle_grasp" pos="-0.022 0 {HANDLE_Z:.4f}" size="0.004" rgba="0 0 0 0"/>
        <site name="handle_tip" pos="-0.048 0 {HANDLE_Z:.4f}" size="0.004" rgba="0 0 0 0"/>
      </body>
    </body>"""


def _eggplant_xml(s: SceneStyle) -> str:
    r, h = EGGPLANT_RADIUS, EGGPLANT_HALF_LEN
    return f"""
    <body name="eggplant" pos="{EGGPLANT_POS[0]} {EGGPLANT_POS[1]} {TABLE_Z + r:.4f}">
      <freejoint name="eggplant_free"/>
      <geom name="eggplant_body" class="object" type="capsule" size="{r} {h}" euler="0 1.5708 0" rgba="{_fmt(s.eggplant_rgba)}" mass="0.06"/>
      <geom name="eggplant_cap" class="object" type="cylinder" size="0.011 0.012" pos="{h + r + 0.006:.4f} 0 0" euler="0 1.5708 0" rgba="{_fmt(s.eggplant_cap_rgba)}" mass="0.005"/>
    </body>"""


def build_scene_xml(style: SceneStyle, image_size: int) -> str:
    """The full MJCF of the station for one style."""
    f = style.object_friction
    table_mat = (
        f'<texture name="table_tex" type="2d" builtin="checker" width="256" height="256" '
        f'rgb1="{_fmt(style.table_rgba[:3])}" rgb2="{_fmt(style.table_rgb2)}"/>'
        f'<material name="table_mat" texture="table_tex" texrepeat="6 6"/>'
        if style.table_texture == "checker"
        else f'<material name="table_mat" rgba="{_fmt(style.table_rgba)}"/>'
    )
    amb, dif = style.ambient, style.light_diffuse
    light_dir = np.asarray(style.light_dir, float)
    light_pos = -light_dir / np.linalg.norm(light_dir) * 1.5 + np.array([0.3, 0.05, 0.0])
    return f"""
<mujoco model="widowx_station">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.004" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <global offwidth="{image_size}" offheight="{image_size}"/>
    <headlight ambient="{amb} {amb} {amb}" diffuse="0.25 0.25 0.25" specular="0 0 0"/>
    <quality shadowsize="0"/>
  </visual>
  <asset>
    {table_mat}
  </asset>
  <default>
    <joint damping="1.0" armature="0.02"/>
    <geom friction="0.8 0.01 0.001" solref="0.004 1"/>
    <default class="pad">
      <geom friction="{max(f, 1.0) * 1.5:.3f} 0.02 0.002" condim="4"/>
    </default>
    <default class="object">
      <geom friction="{f:.3f} 0.01 0.004" condim="6"/>
    </default>
    <position kp="400" kv="30" forcerange="-60 60"/>
  </default>
  <worldbody>
    <light directional="true" pos="{_fmt(light_pos)}" dir="{_fmt(light_dir)}" diffuse="{dif} {dif} {dif}" specular="0.1 0.1 0.1" castshadow="false"/>
    <camera name="primary" pos="{_fmt(style.camera_pos)}" xyaxes="{_camera_xyaxes(style.camera_pos, style.camera_target)}" fovy="{style.camera_fovy}"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.8" rgba="{_fmt(style.floor_rgba)}"/>
    <geom name="wall" type="box" size="0.02 1.5 1.0" pos="0.95 0 0" rgba="{_fmt(style.wall_rgba)}"/>
    <geom name="side_wall" type="box" size="1.5 0.02 1.0" pos="0 0.75 0" rgba="{_fmt(style.wall_rgba)}"/>
    <geom name="table" type="box" size="0.45 0.55 0.02" pos="0.35 0.05 {TABLE_Z - 0.02}" material="table_mat" friction="{f:.3f} 0.01 0.001"/>
    {_arm_xml(style)}
    {_drawer_xml(style)}
    {_eggplant_xml(style)}
    {_box_container("sink", SINK_INNER, SINK_WALL, style.sink_rgba).replace('pos="0 0', f'pos="{SINK_POS[0]} {SINK_POS[1]}', 1)}
    {_box_container("basket", BASKET_INNER, BASKET_WALL, style.basket_rgba).replace('pos="0 0', f'pos="{BASKET_POS[0]} {BASKET_POS[1]}', 1)}
  </worldbody>
  <contact>
    <exclude body1="cabinet" body2="drawer"/>
    <exclude body1="base_link" body2="shoulder_link"/>
    <exclude body1="left_finger_link" body2="right_finger_link"/>
  </contact>
  <actuator>
    <position name="waist" joint="waist" ctrlrange="-3.14158 3.14158"/>
    <position name="shoulder" joint="shoulder" ctrlrange="-1.8850 1.9897"/>
    <position name="elbow" joint="elbow" ctrlrange="-2.1468 1.6057"/>
    <position name="forearm_roll" joint="forearm_roll" ctrlrange="-3.14158 3.14158" kp="150" kv="8"/>
    <position name="wrist_angle" joint="wrist_angle" ctrlrange="-1.7453 2.1468" kp="150" kv="8"/>
    <position name="wrist_rotate" joint="wrist_rotate" ctrlrange="-3.14158 3.14158" kp="100" kv="5"/>
    <position name="left_finger" joint="left_finger" ctrlrange="{FINGER_CLOSED_SETPOINT} {FINGER_OPEN}" kp="300" kv="4" forcerange="-8 8"/>
    <position name="right_finger" joint="right_finger" ctrlrange="{FINGER_CLOSED_SETPOINT} {FINGER_OPEN}" kp="300" kv="4" forcerange="-8 8"/>
  </actuator>
</mujoco>
"""


# --------------------------------------------------------------------------- backend


@dataclass(frozen=True)
class SimConfig:
    """Physics and rendering settings of the simulated station."""

    image_size: int = 256
    render: bool = True  # False: observations carry a black frame (fast expert-only runs)
    control_dt: float = 1.0 / CONTROL_HZ
    ik_iterations: int = 30
    ik_damping: float = 0.03
    settle_time: float = 0.3  # physics seconds to let objects come to rest at reset
    # Pace steps at the real arm's control rate (one step per control_dt of wall time), so a
    # benchmark of a fleet of simulated stations measures what arms would take, not CPU speed.
    realtime: bool = False

    def __post_init__(self) -> None:
        if not 16 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in [16, 1024], got {self.image_size}")
        if self.control_dt <= 0:
            raise ValueError(f"control_dt must be positive, got {self.control_dt}")
        if self.ik_iterations < 1:
            raise ValueError(f"ik_iterations must be >= 1, got {self.ik_iterations}")


@dataclass
class _Layout:
    """Seeded per-episode placements (robot-base frame)."""

    arm_pos: np.ndarray
    arm_yaw: float
    eggplant_xy: np.ndarray
    eggplant_yaw: float
    drawer_q: float
    sink_xy: np.ndarray
    basket_xy: np.ndarray
    cabinet_y: float


class SimBackend(RobotBackend):
    """The simulated WidowX station (registered as ``"sim"``)."""

    name = "sim"
    style: SceneStyle = SIM_STYLE

    def __init__(self, image_size: int = 256, render: bool = True, **kwargs) -> None:
        self.config = SimConfig(image_size=image_size, render=render, **kwargs)
        self.info = BackendInfo(
            name=self.name,
            camera_shape=(image_size, image_size, 3),
            has_ground_truth_success=True,
            extra={"simulator": f"mujoco {mujoco.__version__}", "control_hz": CONTROL_HZ},
        )
        self.model = mujoco.MjModel.from_xml_string(build_scene_xml(self.style, image_size))
        self.data = mujoco.MjData(self.model)
        self._ik_data = mujoco.MjData(self.model)
        self._n_substeps = max(1, round(self.config.control_dt / self.model.opt.timestep))
        self._index_model()
        # An EGL/OSMesa context belongs to the thread that made it, and the station renders from
        # its socket thread and from job threads: one renderer per thread.
        self._render_enabled = render
        self._image_size = image_size
        self._renderers: dict[int, mujoco.Renderer] = {}
        self._renderers_lock = threading.Lock()
        self._blank = np.zeros((image_size, image_size, 3), dtype=np.uint8)
        self._seq = SequenceCounter()
        self._task: str | None = None
        self._target_pos = np.zeros(3)
        self._target_rpy = np.zeros(3)
        self._gripper_cmd = 1.0
        self._layout: _Layout | None = None
        self._next_step_at = 0.0  # monotonic time the next paced step may start

    # ------------------------------------------------------------------ model lookups

    def _index_model(self) -> None:
        m = self.model
        jid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ARM_JOINTS]
        self._arm_qpos = np.array([m.jnt_qposadr[j] for j in jid])
        self._arm_dof = np.array([m.jnt_dofadr[j] for j in jid])
        self._arm_lo, self._arm_hi = m.jnt_range[jid, 0].copy(), m.jnt_range[jid, 1].copy()
        fid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in FINGER_JOINTS]
        self._finger_qpos = np.array([m.jnt_qposadr[j] for j in fid])
        self._finger_dof = np.array([m.jnt_dofadr[j] for j in fid])
        act = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, n)  # noqa: E731
        self._arm_act = np.array([act(n) for n in ARM_JOINTS])
        self._finger_act = np.array([act(n) for n in FINGER_JOINTS])
        self._ee_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "ee")
        self._handle_grasp = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "handle_grasp")
        self._handle_tip = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "handle_tip")
        drawer_j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "drawer_slide")
        self._drawer_qpos = m.jnt_qposadr[drawer_j]
        self._drawer_dof = m.jnt_dofadr[drawer_j]
        egg_j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "eggplant_free")
        self._egg_qpos = m.jnt_qposadr[egg_j]
        self._egg_dof = m.jnt_dofadr[egg_j]
        body = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, n)  # noqa: E731
        self._egg_body = body("eggplant")
        self._sink_body, self._basket_body, self._cabinet_body = (
            body("sink"),
            body("basket"),
            body("cabinet"),
        )
        geom = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, n)  # noqa: E731
        self._pad_geoms = {geom("left_pad"), geom("right_pad")}
        self._egg_geoms = {geom("eggplant_body"), geom("eggplant_cap")}
        self._default_body_pos = m.body_pos.copy()

    # ------------------------------------------------------------------ episode

    def _sample_layout(self, task: str, rng: np.random.Generator) -> _Layout:
        u = lambda lo, hi: rng.uniform(lo, hi)  # noqa: E731
        drawer_q = u(0.08, 0.11) if task == "close_drawer" else u(0.0, 0.01)
        return _Layout(
            arm_pos=np.array([0.22 + u(-0.02, 0.02), 0.03 + u(-0.03, 0.03), 0.09 + u(-0.02, 0.02)]),
            arm_yaw=u(-0.15, 0.15),
            eggplant_xy=EGGPLANT_POS + rng.uniform(-0.02, 0.02, size=2),
            eggplant_yaw=u(-0.4, 0.4),
            drawer_q=drawer_q,
            sink_xy=SINK_POS + rng.uniform(-0.012, 0.012, size=2),
            basket_xy=BASKET_POS + rng.uniform(-0.012, 0.012, size=2),
            cabinet_y=float(CABINET_POS[1] + u(-0.012, 0.012)),
        )

    def reset(self, task: str, seed: int | None = None) -> Observation:
        get_task(task)
        rng = np.random.default_rng(seed)
        layout = self._sample_layout(task, rng)
        self._task, self._layout = task, layout
        m, d = self.model, self.data
        m.body_pos[:] = self._default_body_pos
        m.body_pos[self._sink_body, :2] = layout.sink_xy
        m.body_pos[self._basket_body, :2] = layout.basket_xy
        m.body_pos[self._cabinet_body, 1] = layout.cabinet_y
        mujoco.mj_resetData(m, d)
        d.qpos[self._drawer_qpos] = layout.drawer_q
        half = layout.eggplant_yaw / 2
        d.qpos[self._egg_qpos : self._egg_qpos + 7] = [
            *layout.eggplant_xy,
            TABLE_Z + EGGPLANT_RADIUS + 0.001,
            math.cos(half),
            0.0,
            0.0,
            math.sin(half),
        ]
        self._target_pos = layout.arm_pos.copy()
        self._target_rpy = np.array([0.0, 0.0, layout.arm_yaw])
        q0 = np.array([0.0, -0.3, 0.6, 0.0, 1.2, 0.0])
        d.qpos[self._arm_qpos] = self._solve_ik(self._target_pos, self._target_rpy, q0)
        self._gripper_cmd = 1.0
        d.qpos[self._finger_qpos] = FINGER_OPEN
        d.ctrl[self._arm_act] = d.qpos[self._arm_qpos]
        d.ctrl[self._finger_act] = FINGER_OPEN
        mujoco.mj_forward(m, d)
        for _ in range(max(1, round(self.config.settle_time / m.opt.timestep))):
            mujoco.mj_step(m, d)
        return self.observe()

    def _require_reset(self) -> None:
        if self._task is None:
            raise RuntimeError("SimBackend.reset(task, seed) must be called before stepping")

    def step(self, action: np.ndarray) -> StepOutcome:
        self._require_reset()
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (ACTION_DIM,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be a finite ({ACTION_DIM},) array, got {a!r}")
        if self.config.realtime:
            self._pace()
        target, clipped = clip_target_position(self._target_pos + a[:3])
        self._target_pos = target.astype(np.float64)
        self._target_rpy = wrap_angle(self._target_rpy + a[3:6])
        self._gripper_cmd = float(np.clip(a[6], 0.0, 1.0))
        q_start = self.data.ctrl[self._arm_act].copy()
        q_goal = self._solve_ik(self._target_pos, self._target_rpy, q_start)
        self.data.ctrl[self._finger_act] = FINGER_CLOSED_SETPOINT + self._gripper_cmd * (
            FINGER_OPEN - FINGER_CLOSED_SETPOINT
        )
        # Ramp the joint set-points over the first half of the period so a 5 cm jump does not
        # slam the arm into whatever it touches.
        ramp = max(1, self._n_substeps // 2)
        for i in range(self._n_substeps):
            frac = min(1.0, (i + 1) / ramp)
            self.data.ctrl[self._arm_act] = q_start + frac * (q_goal - q_start)
            mujoco.mj_step(self.model, self.data)
        return StepOutcome(self.observe(), workspace_clipped=clipped)

    def _pace(self) -> None:
        """Wait until one control period has passed since the previous step started (a real arm
        takes that long to move; time the policy spent thinking counts towards it)."""
        now = time.monotonic()
        if now < self._next_step_at:
            time.sleep(self._next_step_at - now)
            now = self._next_step_at
        self._next_step_at = now + self.config.control_dt

    def observe(self) -> Observation:
        self._require_reset()
        return self._seq.stamp(self._render(), self._state())

    def _renderer(self) -> mujoco.Renderer:
        key = threading.get_ident()
        with self._renderers_lock:
            if key not in self._renderers:
                self._renderers[key] = mujoco.Renderer(
                    self.model, self._image_size, self._image_size
                )
            return self._renderers[key]

    def _render(self) -> np.ndarray:
        if not self._render_enabled:
            return self._blank.copy()
        renderer = self._renderer()
        renderer.update_scene(self.data, camera="primary")
        return renderer.render().copy()

    def _state(self) -> np.ndarray:
        pos = self.data.site_xpos[self._ee_site]
        rot = self.data.site_xmat[self._ee_site].reshape(3, 3)
        rpy = matrix_to_euler(rot @ R_DOWN.T)
        return np.concatenate([pos, rpy, [self._gripper_opening()]]).astype(np.float32)

    def _gripper_opening(self) -> float:
        half_gap = float(np.mean(self.data.qpos[self._finger_qpos]))
        return float(np.clip((half_gap - FINGER_STOP) / (FINGER_OPEN - FINGER_STOP), 0.0, 1.0))

    def hold_safe(self) -> None:
        """Freeze the target at the measured pose and stop every joint.

        The gripper command is kept: opening it here would drop whatever the arm holds.
        """
        if self._task is None:
            return
        d = self.data
        state = self._state()
        self._target_pos = state[:3].astype(np.float64)
        self._target_rpy = state[3:6].astype(np.float64)
        d.qvel[self._arm_dof] = 0.0
        d.qvel[self._finger_dof] = 0.0
        d.qacc_warmstart[:] = 0.0
        d.ctrl[self._arm_act] = d.qpos[self._arm_qpos]
        mujoco.mj_forward(self.model, d)

    def close(self) -> None:
        # a context can only be released from its own thread; others die with their threads
        with self._renderers_lock:
            own = self._renderers.pop(threading.get_ident(), None)
            self._renderers.clear()
        if own is not None:
            own.close()

    # ------------------------------------------------------------------ IK

    def _solve_ik(self, pos: np.ndarray, rpy: np.ndarray, q_init: np.ndarray) -> np.ndarray:
        """Damped-least-squares IK for the ``ee`` site; joint limits clamp every iterate."""
        m, d = self.model, self._ik_data
        rot_target = euler_to_matrix(rpy) @ R_DOWN
        q = np.clip(np.asarray(q_init, dtype=np.float64), self._arm_lo, self._arm_hi)
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        lam2 = self.config.ik_damping**2
        rot_weight = 0.3  # metres per radian: trades orientation against position error
        for _ in range(self.config.ik_iterations):
            d.qpos[self._arm_qpos] = q
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err = np.concatenate(
                [
                    pos - d.site_xpos[self._ee_site],
                    rot_weight
                    * _rotation_error(rot_target, d.site_xmat[self._ee_site].reshape(3, 3)),
                ]
            )
            if np.linalg.norm(err) < 1e-4:
                break
            mujoco.mj_jacSite(m, d, jacp, jacr, self._ee_site)
            jac = np.vstack([jacp[:, self._arm_dof], rot_weight * jacr[:, self._arm_dof]])  # (6, 6)
            dq = jac.T @ np.linalg.solve(jac @ jac.T + lam2 * np.eye(6), err)
            q = np.clip(q + dq, self._arm_lo, self._arm_hi)
        return q

    # ------------------------------------------------------------------ ground truth

    def privileged_state(self) -> dict:
        """Simulator ground truth for the scripted expert (never for learning code)."""
        self._require_reset()
        d = self.data
        egg_rot = d.xmat[self._egg_body].reshape(3, 3)
        axis = egg_rot[:, 0]  # the capsule lies along the body x axis
        state = self._state()
        return {
            "task": self._task,
            "ee_pos": state[:3].astype(np.float64),
            "ee_rpy": state[3:6].astype(np.float64),
            "gripper": float(state[6]),
            "target_pos": self._target_pos.copy(),
            "target_rpy": self._target_rpy.copy(),
            "drawer_q": float(d.qpos[self._drawer_qpos]),
            "drawer_travel": DRAWER_TRAVEL,
            "handle_grasp_pos": d.site_xpos[self._handle_grasp].copy(),
            "handle_tip_pos": d.site_xpos[self._handle_tip].copy(),
            "eggplant_pos": d.xpos[self._egg_body].copy(),
            "eggplant_yaw": float(math.atan2(axis[1], axis[0])),
            "eggplant_radius": EGGPLANT_RADIUS,
            "sink_center": d.xpos[self._sink_body].copy(),
            "sink_inner_half": SINK_INNER,
            "sink_wall_height": SINK_WALL,
            "basket_center": d.xpos[self._basket_body].copy(),
            "basket_inner_half": BASKET_INNER,
            "basket_wall_height": BASKET_WALL,
            "table_z": TABLE_Z,
        }

    def _eggplant_in(self, body: int, inner_half: float, wall_h: float) -> bool:
        d = self.data
        egg = d.xpos[self._egg_body]
        center = d.xpos[body]
        inside = bool(np.all(np.abs(egg[:2] - center[:2]) < inner_half))
        low = bool(egg[2] < center[2] + wall_h)
        return inside and low and not self._eggplant_held()

    def _eggplant_held(self) -> bool:
        for c in self.data.contact[: self.data.ncon]:
            pair = {c.geom1, c.geom2}
            if pair & self._pad_geoms and pair & self._egg_geoms:
                return True
        return False

    def success(self) -> bool:
        self._require_reset()
        q = float(self.data.qpos[self._drawer_qpos])
        if self._task == "open_drawer":
            return q >= DRAWER_OPEN_SUCCESS
        if self._task == "close_drawer":
            return q <= DRAWER_CLOSED_SUCCESS
        if self._task == "eggplant_in_sink":
            return self._eggplant_in(self._sink_body, SINK_INNER, SINK_WALL)
        if self._task == "eggplant_in_basket":
            return self._eggplant_in(self._basket_body, BASKET_INNER, BASKET_WALL)
        raise AssertionError(f"task {self._task!r} has no success rule")


class GapSimBackend(SimBackend):
    """The same station in another "simulator": textures, colours, light, camera, friction."""

    name = "sim_gap"
    style = GAP_STYLE
