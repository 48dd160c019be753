"""The simulated WidowX scene as MJCF: geometry constants, the scene styles (the base scene and
the gapped simulator's) and ``build_scene_xml``. ``robot_bridge.backends.sim`` compiles and steps it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

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
    # the language tasks' objects (in their scenes only: ``language_bodies_xml``)
    blue_cup_rgba: tuple = (0.12, 0.30, 0.88, 1)
    red_cup_rgba: tuple = (0.85, 0.12, 0.10, 1)
    cup_inside_rgba: tuple = (0.18, 0.16, 0.15, 1)
    plate_rgba: tuple = (0.96, 0.96, 0.93, 1)
    plate_rim_rgba: tuple = (0.70, 0.74, 0.78, 1)
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
    blue_cup_rgba=(0.20, 0.42, 0.95, 1),
    red_cup_rgba=(0.92, 0.22, 0.15, 1),
    plate_rgba=(0.90, 0.88, 0.80, 1),
    plate_rim_rgba=(0.55, 0.55, 0.62, 1),
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

# The language tasks' cups and plate (robot_bridge.spec.LANGUAGE_TASKS): two cups alike but for
# their colour, so only the instruction says which one goes on the plate.
CUP_COLOURS = ("blue", "red")
CUP_RADIUS = 0.021
CUP_HALF_HEIGHT = 0.03
PLATE_RADIUS = 0.07  # outer radius; the rim is the outer 15 mm
PLATE_INNER = 0.055
PLATE_TOP = TABLE_Z + 0.008  # the plate's surface
PLATE_POS = np.array([0.24, 0.12])  # where the plate stands in the model, before the layout


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


def language_bodies_xml(s: SceneStyle) -> str:
    """The plate (fixed to the table, like the containers) and the two cups (free bodies), added
    to the MJCF of the language tasks' scenes only: the AutoEval tasks' model stays the base
    scene's, byte for byte."""
    r, h = CUP_RADIUS, CUP_HALF_HEIGHT
    cups = []
    for i, colour in enumerate(CUP_COLOURS):
        rgba = getattr(s, f"{colour}_cup_rgba")
        # the dark disc on top reads as the cup's opening; it has no contact
        cups.append(f"""
    <body name="{colour}_cup" pos="{PLATE_POS[0]} {PLATE_POS[1] - 0.1 + 0.2 * i:.4f} {TABLE_Z + h:.4f}">
      <freejoint name="{colour}_cup_free"/>
      <geom name="{colour}_cup_body" class="object" type="cylinder" size="{r} {h}" rgba="{_fmt(rgba)}" mass="0.02"/>
      <geom type="cylinder" size="{r - 0.004:.4f} 0.004" pos="0 0 {0.004 - h:.4f}" rgba="{_fmt(rgba)}" contype="0" conaffinity="0" mass="0.05"/>
      <geom type="cylinder" size="{r - 0.004:.4f} 0.0008" pos="0 0 {h:.4f}" rgba="{_fmt(s.cup_inside_rgba)}" contype="0" conaffinity="0" mass="0"/>
    </body>""")
    rim_h = (PLATE_TOP - TABLE_Z) / 2
    return f"""
    <body name="plate" pos="{PLATE_POS[0]} {PLATE_POS[1]} {TABLE_Z}">
      <geom name="plate_rim" type="cylinder" size="{PLATE_RADIUS} {rim_h - 0.001:.4f}" pos="0 0 {rim_h - 0.001:.4f}" rgba="{_fmt(s.plate_rim_rgba)}"/>
      <geom name="plate_surface" type="cylinder" size="{PLATE_INNER} {rim_h:.4f}" pos="0 0 {rim_h:.4f}" rgba="{_fmt(s.plate_rgba)}"/>
    </body>{"".join(cups)}"""


def build_scene_xml(
    style: SceneStyle, image_size: int, extra_assets: str = "", extra_bodies: str = ""
) -> str:
    """The full MJCF of the station for one style; a scene variant adds assets and bodies."""
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
    {table_mat}{extra_assets}
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
    {_box_container("basket", BASKET_INNER, BASKET_WALL, style.basket_rgba).replace('pos="0 0', f'pos="{BASKET_POS[0]} {BASKET_POS[1]}', 1)}{extra_bodies}
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
