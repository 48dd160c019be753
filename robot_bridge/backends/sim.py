"""A MuJoCo-simulated WidowX 250s station: the four AutoEval tasks and the two language tasks,
with ground-truth success.

The arm follows the public Interbotix WX250s kinematics (link offsets and joint limits of
``wx250s.urdf.xacro``) built from primitive geoms; the scene is a table with a drawer cabinet, a
purple eggplant, a blue sink and a yellow basket, seen by one over-the-shoulder RGB camera.

The language tasks (``robot_bridge.spec.LANGUAGE_TASKS``: put the blue / the red cup on the
plate) run in a model of their own: the base scene (or variant) plus a plate and two cups, with
the eggplant parked off the table. Both cups stand on the table in both tasks, at the same
seeded places for a seed, so only the instruction tells which one to move. The AutoEval tasks'
model never holds these bodies: their observations are what they were before the cups existed.

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
from dataclasses import dataclass

import mujoco
import numpy as np

from robot_bridge.backends.base import (
    BackendInfo,
    Observation,
    RobotBackend,
    SequenceCounter,
    StepOutcome,
)
from robot_bridge.backends.scene_xml import (  # noqa: F401 (the scene's constants, used here and by tests)
    ARM_JOINTS,
    BASKET_INNER,
    BASKET_POS,
    BASKET_WALL,
    CABINET_POS,
    CUP_COLOURS,
    CUP_HALF_HEIGHT,
    CUP_RADIUS,
    DRAWER_CLOSED_SUCCESS,
    DRAWER_OPEN_SUCCESS,
    DRAWER_TRAVEL,
    EGGPLANT_HALF_LEN,
    EGGPLANT_POS,
    EGGPLANT_RADIUS,
    FINGER_CLOSED_SETPOINT,
    FINGER_JOINTS,
    FINGER_OPEN,
    FINGER_STOP,
    GAP_STYLE,
    HANDLE_Z,
    PLATE_INNER,
    PLATE_RADIUS,
    PLATE_TOP,
    SIM_STYLE,
    SINK_INNER,
    SINK_POS,
    SINK_WALL,
    TABLE_Z,
    SceneStyle,
    build_scene_xml,
    language_bodies_xml,
)
from robot_bridge.backends.scenes import (
    BASE_SCENE,
    SCENE_VARIANTS,
    get_variant,
    variant_rng,
)
from robot_bridge.backends.sim_layout import (
    EGGPLANT_PARK,
    Layout,
    keepouts,
    place_language_objects,
)
from robot_bridge.rotations import euler_to_matrix, matrix_to_euler
from robot_bridge.spec import (
    ACTION_DIM,
    CONTROL_HZ,
    LANGUAGE_TASKS,
    TASKS,
    clip_target_position,
    get_task,
)

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
class _CompiledScene:
    model: mujoco.MjModel
    data: mujoco.MjData
    ik_data: mujoco.MjData
    default_body_pos: np.ndarray


class SimBackend(RobotBackend):
    """The simulated WidowX station (registered as ``"sim"``)."""

    name = "sim"
    style: SceneStyle = SIM_STYLE
    tasks: tuple[str, ...] = tuple(TASKS)  # the AutoEval tasks and the language tasks
    # Named scenes besides the base one, selectable per reset (robot_bridge.backends.scenes).
    scene_variants: tuple[str, ...] = tuple(SCENE_VARIANTS)

    def __init__(self, image_size: int = 256, render: bool = True, **kwargs) -> None:
        self.config = SimConfig(image_size=image_size, render=render, **kwargs)
        self.info = BackendInfo(
            name=self.name,
            camera_shape=(image_size, image_size, 3),
            has_ground_truth_success=True,
            extra={"simulator": f"mujoco {mujoco.__version__}", "control_hz": CONTROL_HZ},
        )
        # One compiled model per scene variant, and per variant with the language tasks' cups and
        # plate (True), made on first use and kept.
        self._scenes: dict[tuple[str, bool], _CompiledScene] = {}
        self._scene = BASE_SCENE
        self._language = False  # whether the current model holds the cups and the plate
        self.scene_params: dict | None = None  # the current episode's variant draw, if any
        self._use_scene(BASE_SCENE)
        self._n_substeps = max(1, round(self.config.control_dt / self.model.opt.timestep))
        # An EGL/OSMesa context belongs to the thread that made it, and the station renders from
        # its socket thread and from job threads: one renderer per thread and scene model.
        self._render_enabled = render
        self._image_size = image_size
        self._renderers: dict[tuple[int, str, bool], mujoco.Renderer] = {}
        self._renderers_lock = threading.Lock()
        self._blank = np.zeros((image_size, image_size, 3), dtype=np.uint8)
        self._seq = SequenceCounter()
        self._task: str | None = None
        self._target_pos = np.zeros(3)
        self._target_rpy = np.zeros(3)
        self._gripper_cmd = 1.0
        self._layout: Layout | None = None
        self._next_step_at = 0.0  # monotonic time the next paced step may start

    # ------------------------------------------------------------------ model lookups

    @property
    def scene(self) -> str:
        """The scene variant of the current episode (``"base"``: the default scene)."""
        return self._scene

    def _use_scene(self, name: str, language: bool = False) -> None:
        compiled = self._scenes.get((name, language))
        if compiled is None:
            extra = language_bodies_xml(self.style) if language else ""
            if name == BASE_SCENE and not language:
                xml = build_scene_xml(self.style, self.config.image_size)
            elif name == BASE_SCENE:
                xml = build_scene_xml(self.style, self.config.image_size, "", extra)
            else:
                v = get_variant(name)
                xml = build_scene_xml(
                    self.style,
                    self.config.image_size,
                    v.assets_xml(),
                    v.bodies_xml(TABLE_Z) + extra,
                )
            model = mujoco.MjModel.from_xml_string(xml)
            compiled = _CompiledScene(
                model, mujoco.MjData(model), mujoco.MjData(model), model.body_pos.copy()
            )
            self._scenes[(name, language)] = compiled
        self._scene, self._language = name, language
        self.model, self.data, self._ik_data = compiled.model, compiled.data, compiled.ik_data
        self._default_body_pos = compiled.default_body_pos
        self._index_model()

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
        if self._language:
            self._plate_body = body("plate")
            self._cup_body = {c: body(f"{c}_cup") for c in CUP_COLOURS}
            self._cup_geom = {c: geom(f"{c}_cup_body") for c in CUP_COLOURS}
            self._cup_qpos = {
                c: m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"{c}_cup_free")]
                for c in CUP_COLOURS
            }

    # ------------------------------------------------------------------ episode

    def _sample_layout(self, task: str, rng: np.random.Generator) -> Layout:
        u = lambda lo, hi: rng.uniform(lo, hi)  # noqa: E731
        drawer_q = u(0.08, 0.11) if task == "close_drawer" else u(0.0, 0.01)
        layout = Layout(
            arm_pos=np.array([0.22 + u(-0.02, 0.02), 0.03 + u(-0.03, 0.03), 0.09 + u(-0.02, 0.02)]),
            arm_yaw=u(-0.15, 0.15),
            eggplant_xy=EGGPLANT_POS + rng.uniform(-0.02, 0.02, size=2),
            eggplant_yaw=u(-0.4, 0.4),
            drawer_q=drawer_q,
            sink_xy=SINK_POS + rng.uniform(-0.012, 0.012, size=2),
            basket_xy=BASKET_POS + rng.uniform(-0.012, 0.012, size=2),
            cabinet_y=float(CABINET_POS[1] + u(-0.012, 0.012)),
        )
        if task in LANGUAGE_TASKS:  # drawn after the rest: the other draws stay as they were
            layout.plate_xy, layout.cup_xy = place_language_objects(
                rng, layout.sink_xy, layout.basket_xy
            )
        return layout

    def reset(self, task: str, seed: int | None = None, scene: str | None = None) -> Observation:
        """``scene``: a name of ``scene_variants`` (``None`` or ``"base"``: the default scene);
        the variant's own draw (``scene_params``) comes from ``seed`` too."""
        get_task(task)
        scene = BASE_SCENE if scene is None else scene
        variant = None if scene == BASE_SCENE else get_variant(scene)
        language = task in LANGUAGE_TASKS
        rng = np.random.default_rng(seed)
        layout = self._sample_layout(task, rng)
        if (self._scene, self._language) != (scene, language):
            self._use_scene(scene, language)
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
        if language:
            m.body_pos[self._plate_body, :2] = layout.plate_xy
            # the eggplant waits on the floor, out of the camera's view and the arm's reach
            d.qpos[self._egg_qpos : self._egg_qpos + 3] = [*EGGPLANT_PARK, -0.8 + EGGPLANT_RADIUS]
            for colour, xy in layout.cup_xy.items():
                q = self._cup_qpos[colour]
                d.qpos[q : q + 7] = [*xy, TABLE_Z + CUP_HALF_HEIGHT + 0.001, 1.0, 0.0, 0.0, 0.0]
        self._target_pos = layout.arm_pos.copy()
        self._target_rpy = np.array([0.0, 0.0, layout.arm_yaw])
        q0 = np.array([0.0, -0.3, 0.6, 0.0, 1.2, 0.0])
        d.qpos[self._arm_qpos] = self._solve_ik(self._target_pos, self._target_rpy, q0)
        self._gripper_cmd = 1.0
        d.qpos[self._finger_qpos] = FINGER_OPEN
        d.ctrl[self._arm_act] = d.qpos[self._arm_qpos]
        d.ctrl[self._finger_act] = FINGER_OPEN
        self.scene_params = None
        if variant is not None:
            self.scene_params = variant.sample(
                variant_rng(seed),
                self.style,
                keepouts(layout),
                TABLE_Z,
                # a distractor cup in a target cup's colour would make the instruction ambiguous
                avoid=tuple(("cup", c) for c in CUP_COLOURS) if language else (),
            )
            variant.apply(m, d, self.scene_params, TABLE_Z)
        mujoco.mj_forward(m, d)
        for _ in range(max(1, round(self.config.settle_time / m.opt.timestep))):
            mujoco.mj_step(m, d)
        return self.observe()

    def _require_reset(self) -> None:
        if self._task is None:
            raise RuntimeError("SimBackend.reset(task, seed) must be called before stepping")

    def step(self, action: np.ndarray) -> StepOutcome:
        clipped = self.advance(action)
        return StepOutcome(self.observe(), workspace_clipped=clipped)

    def advance(self, action: np.ndarray) -> bool:
        """``step`` without the observation (whether the workspace clipped the target): the
        physics of one control period. Rendering is about 90% of a step's time on the CPU, so
        in-process rollouts that look only at chunk boundaries render those frames alone
        (``observe``); the frames they see are the ones ``step`` would have rendered."""
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
        return clipped

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
        key = (threading.get_ident(), self._scene, self._language)
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
        me = threading.get_ident()
        with self._renderers_lock:
            own = [r for (thread, *_), r in self._renderers.items() if thread == me]
            self._renderers.clear()
        for renderer in own:
            renderer.close()

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
        truth = {
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
        if self._language:
            for colour in CUP_COLOURS:
                truth[f"{colour}_cup_pos"] = d.xpos[self._cup_body[colour]].copy()
            truth.update(
                cup_radius=CUP_RADIUS,
                cup_half_height=CUP_HALF_HEIGHT,
                plate_center=d.xpos[self._plate_body].copy(),
                plate_radius=PLATE_RADIUS,
                plate_inner_radius=PLATE_INNER,
                plate_top_z=PLATE_TOP,
            )
        return truth

    def _eggplant_in(self, body: int, inner_half: float, wall_h: float) -> bool:
        d = self.data
        egg = d.xpos[self._egg_body]
        center = d.xpos[body]
        inside = bool(np.all(np.abs(egg[:2] - center[:2]) < inner_half))
        low = bool(egg[2] < center[2] + wall_h)
        return inside and low and not self._eggplant_held()

    def _eggplant_held(self) -> bool:
        return self._held(self._egg_geoms)

    def _held(self, geoms: set[int]) -> bool:
        for c in self.data.contact[: self.data.ncon]:
            pair = {c.geom1, c.geom2}
            if pair & self._pad_geoms and pair & geoms:
                return True
        return False

    def _cup_on_plate(self, colour: str) -> bool:
        """The cup stands upright on the plate's surface, its centre inside the rim, and no
        finger touches it."""
        d = self.data
        cup, plate = d.xpos[self._cup_body[colour]], d.xpos[self._plate_body]
        inside = bool(np.hypot(*(cup[:2] - plate[:2])) < PLATE_INNER)
        resting = abs(float(cup[2]) - (PLATE_TOP + CUP_HALF_HEIGHT)) < 0.006
        upright = float(d.xmat[self._cup_body[colour]][8]) > 0.95  # its axis against world z
        return inside and resting and upright and not self._held({self._cup_geom[colour]})

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
        if self._task in LANGUAGE_TASKS:
            return self._cup_on_plate(self._task.split("_", 1)[0])
        raise AssertionError(f"task {self._task!r} has no success rule")


class GapSimBackend(SimBackend):
    """The same station in another "simulator": textures, colours, light, camera, friction."""

    name = "sim_gap"
    style = GAP_STYLE
