"""Scene variants of the simulated station: scenes a policy trained on the base scene never saw.

A variant adds to the base scene's MJCF (assets, bodies) once, when its model is compiled, and
then draws its per-episode parameters from the episode's seed: which distractor objects stand
where and in what colour, which table and backdrop, how far the camera moved. The draw uses a
random stream of its own, so an episode of a variant has the same task layout (arm, eggplant,
sink, basket, drawer) as the base scene's episode with that seed: base and variant results pair
seed by seed. No variant touches what the success rules read (the eggplant, the containers, the
drawer), so ground truth is the base scene's.

- ``distractors``: two to four extra objects on the table (an eggplant-like capsule in another
  colour, a cube, a cup, a flat block, a lemon-like ellipsoid; colours include the target's
  purple), placed in the camera's view outside keep-out zones around the eggplant, the
  containers, the drawer's travel and the arm's base, so they never block the task. They stand
  fixed to the table (static bodies: free ones tripled the physics cost of a step).
- ``background``: another table surface and backdrop (one of four tables, four walls), a tint and
  another floor colour.
- ``camera``: the camera moved as a remounted lab camera would be: up to 4 cm along each axis, its
  aim point up to 3 cm, roll and field of view up to 3 degrees.

This module needs numpy only: it writes MJCF text and edits a compiled model through the
model's own named accessors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BASE_SCENE = "base"

# The variant draws come from a stream of their own: the episode's layout keeps the base draws.
_VARIANT_STREAM = 0x5CE7E


class UnknownSceneError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def variant_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(None if seed is None else [seed, _VARIANT_STREAM])


@dataclass(frozen=True)
class Keepout:
    """A table region no distractor may overlap: a circle (``r``) or an axis-aligned rectangle
    (half sizes ``hx``, ``hy``), robot-base frame."""

    x: float
    y: float
    r: float = 0.0
    hx: float = 0.0
    hy: float = 0.0

    def hits(self, x: float, y: float, radius: float) -> bool:
        if self.r > 0:
            return math.hypot(x - self.x, y - self.y) < self.r + radius
        return abs(x - self.x) < self.hx + radius and abs(y - self.y) < self.hy + radius


def _fmt(v) -> str:
    return " ".join(f"{x:.4g}" for x in v)


class SceneVariant:
    """One named variant: what it adds to the MJCF, and its seeded per-episode parameters."""

    name: str = ""
    description: str = ""

    def assets_xml(self) -> str:
        return ""

    def bodies_xml(self, table_z: float) -> str:
        return ""

    def sample(
        self,
        rng: np.random.Generator,
        style,
        keepouts: list[Keepout],
        table_z: float,
        avoid: tuple[tuple[str, str], ...] = (),
    ) -> dict:
        """The episode's parameters (JSON types: they are recorded with the episode).
        ``avoid``: (object kind, colour) pairs no distractor may take (the language tasks' target
        cups); the draw is the same as without it where it avoids nothing."""
        raise NotImplementedError

    def apply(self, model, data, params: dict, table_z: float) -> None:
        """Put ``params`` into the model and state; runs after ``mj_resetData``, before settling."""
        raise NotImplementedError


# --------------------------------------------------------------------------- distractors


@dataclass(frozen=True)
class _Object:
    kind: str
    geoms: str  # MJCF geoms in the body frame; the coloured one is named distractor_<kind>
    radius: float  # footprint on the table (m)
    half_height: float  # body origin above the table top (m)
    colours: tuple[str, ...]


_COLOURS = {
    "red": (0.80, 0.12, 0.10),
    "green": (0.22, 0.58, 0.18),
    "blue": (0.15, 0.35, 0.85),
    "yellow": (0.92, 0.80, 0.12),
    "orange": (0.95, 0.50, 0.08),
    "white": (0.92, 0.92, 0.90),
    "purple": (0.50, 0.10, 0.62),  # the eggplant's own colour
    "magenta": (0.78, 0.18, 0.55),
    "pink": (0.95, 0.55, 0.70),
    "cyan": (0.10, 0.70, 0.75),
    "dark_blue": (0.15, 0.17, 0.55),
}

_TWIN_R, _TWIN_H = 0.021, 0.035  # the eggplant's capsule radius and half length
_OBJECTS = (
    _Object(
        "eggplant_twin",
        f'<geom name="distractor_eggplant_twin" class="object" type="capsule" size="{_TWIN_R} {_TWIN_H}" '
        f'euler="0 1.5708 0" mass="0.06"/>'
        f'<geom class="object" type="cylinder" size="0.011 0.012" pos="{_TWIN_H + _TWIN_R + 0.006:.4f} 0 0" '
        f'euler="0 1.5708 0" rgba="0.15 0.6 0.15 1" mass="0.005"/>',
        radius=_TWIN_H + _TWIN_R + 0.018,
        half_height=_TWIN_R,
        # never the target's purple: the twin differs from the eggplant by colour only
        colours=("green", "red", "orange", "yellow", "magenta", "dark_blue"),
    ),
    _Object(
        "cube",
        '<geom name="distractor_cube" class="object" type="box" size="0.02 0.02 0.02" mass="0.05"/>',
        radius=0.029,
        half_height=0.02,
        colours=("red", "green", "blue", "yellow", "purple", "white", "cyan"),
    ),
    _Object(
        "cup",
        '<geom name="distractor_cup" class="object" type="cylinder" size="0.026 0.035" mass="0.05"/>',
        radius=0.027,
        half_height=0.035,
        colours=("red", "green", "blue", "white", "pink", "orange", "purple"),
    ),
    _Object(
        "block",
        '<geom name="distractor_block" class="object" type="box" size="0.04 0.018 0.012" mass="0.05"/>',
        radius=0.044,
        half_height=0.012,
        colours=("red", "blue", "yellow", "green", "orange", "purple", "cyan"),
    ),
    _Object(
        "lemon",
        '<geom name="distractor_lemon" class="object" type="ellipsoid" size="0.03 0.024 0.018" mass="0.04"/>',
        radius=0.031,
        half_height=0.018,
        colours=("yellow", "green", "orange", "magenta", "purple"),
    ),
)

# The table area to draw distractor positions from (robot-base frame); a draw must also be in the
# camera's view, away from the image border.
_PLACE_LOW, _PLACE_HIGH = np.array([0.0, -0.25]), np.array([0.55, 0.35])
_VIEW_MARGIN = 0.12  # fraction of the half image kept free at each border
_SPACING = 0.015  # between two distractors' footprints (m)
_PLACE_TRIES = 200


def in_view(style, point) -> bool:
    """Whether ``point`` projects into the base camera's image, ``_VIEW_MARGIN`` from its border."""
    pos = np.asarray(style.camera_pos, float)
    forward = np.asarray(style.camera_target, float) - pos
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rel = np.asarray(point, float) - pos
    depth = float(rel @ forward)
    if depth <= 0:
        return False
    half = math.tan(math.radians(style.camera_fovy) / 2) * (1 - _VIEW_MARGIN)  # square image
    return abs(rel @ right) / depth < half and abs(rel @ up) / depth < half


def _park_xy(i: int) -> tuple[float, float]:
    """Off the table, behind the camera: where an object this episode does not use waits."""
    return (-0.6 - 0.2 * i, -1.6)


class DistractorScene(SceneVariant):
    name = "distractors"
    description = (
        "2-4 extra objects on the table (an eggplant-like capsule in another colour, cube, cup, "
        "block, lemon; colours include the target's purple), never in the task's way"
    )

    def bodies_xml(self, table_z: float) -> str:
        out = []
        for i, o in enumerate(_OBJECTS):
            x, y = _park_xy(i)
            out.append(
                f'\n    <body name="distractor_{o.kind}" pos="{x} {y} {-0.8 + o.half_height:.4f}">'
                f"{o.geoms}</body>"
            )
        return "".join(out)

    def sample(
        self,
        rng: np.random.Generator,
        style,
        keepouts: list[Keepout],
        table_z: float,
        avoid: tuple[tuple[str, str], ...] = (),
    ) -> dict:
        n = int(rng.integers(2, 5))
        twin = bool(rng.random() < 0.75)  # most scenes hold an object much like the target
        others = rng.permutation(np.arange(1, len(_OBJECTS)))
        chosen = ([0] if twin else []) + [int(k) for k in others[: n - int(twin)]]
        placed: list[Keepout] = []
        objects = []
        for k in chosen:
            o = _OBJECTS[k]
            allowed = [c for c in o.colours if (o.kind, c) not in avoid]
            colour = allowed[int(rng.integers(len(allowed)))]
            yaw = float(rng.uniform(-math.pi, math.pi))
            for _ in range(_PLACE_TRIES):
                x, y = (float(v) for v in rng.uniform(_PLACE_LOW, _PLACE_HIGH))
                free = not any(z.hits(x, y, o.radius) for z in (*keepouts, *placed))
                if free and in_view(style, (x, y, table_z + o.half_height)):
                    placed.append(Keepout(x, y, r=o.radius + _SPACING))
                    objects.append({"kind": o.kind, "colour": colour, "xy": [x, y], "yaw": yaw})
                    break
        return {"objects": objects}

    def apply(self, model, data, params: dict, table_z: float) -> None:
        used = {o["kind"]: o for o in params["objects"]}
        for i, o in enumerate(_OBJECTS):
            body = model.body(f"distractor_{o.kind}")
            if o.kind in used:
                p = used[o.kind]
                x, y, z, yaw = *p["xy"], table_z + o.half_height, p["yaw"]
                rgb = _COLOURS[p["colour"]]
                model.geom(f"distractor_{o.kind}").rgba[:] = (*rgb, 1.0)
            else:
                (x, y), z, yaw = _park_xy(i), -0.8 + o.half_height, 0.0
            body.pos[:] = (x, y, z)
            body.quat[:] = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))


# --------------------------------------------------------------------------- background

_TABLES = {
    "grey_checker": '<texture name="bg_table_grey_checker" type="2d" builtin="checker" width="256" '
    'height="256" rgb1="0.58 0.58 0.58" rgb2="0.38 0.38 0.40"/>',
    "speckled_white": '<texture name="bg_table_speckled_white" type="2d" builtin="flat" width="256" '
    'height="256" rgb1="0.90 0.90 0.88" mark="random" random="0.08" markrgb="0.45 0.45 0.45"/>',
    "green_mat": '<texture name="bg_table_green_mat" type="2d" builtin="checker" width="256" '
    'height="256" rgb1="0.16 0.40 0.26" rgb2="0.19 0.46 0.30" mark="edge" markrgb="0.8 0.85 0.8"/>',
    "dark_wood": '<texture name="bg_table_dark_wood" type="2d" builtin="gradient" width="256" '
    'height="256" rgb1="0.46 0.29 0.16" rgb2="0.30 0.18 0.10" mark="random" random="0.04" '
    'markrgb="0.22 0.12 0.06"/>',
}
_WALLS = {
    "blue": '<texture name="bg_wall_blue" type="2d" builtin="flat" width="64" height="64" '
    'rgb1="0.25 0.35 0.55"/>',
    "tiles": '<texture name="bg_wall_tiles" type="2d" builtin="checker" width="256" height="256" '
    'rgb1="0.92 0.92 0.92" rgb2="0.74 0.74 0.78" mark="edge" markrgb="0.5 0.5 0.5"/>',
    "dark": '<texture name="bg_wall_dark" type="2d" builtin="flat" width="128" height="128" '
    'rgb1="0.16 0.16 0.18" mark="random" random="0.05" markrgb="0.35 0.35 0.35"/>',
    "warm": '<texture name="bg_wall_warm" type="2d" builtin="gradient" width="128" height="128" '
    'rgb1="0.88 0.72 0.55" rgb2="0.62 0.46 0.34"/>',
}
_TABLE_REPEAT = {"grey_checker": 10, "speckled_white": 3, "green_mat": 16, "dark_wood": 2}
_BACKDROP_GEOMS = ("wall", "side_wall")
_DEFAULT_RGBA = (0.5, 0.5, 0.5, 1.0)  # a geom with this rgba shows its material's colour


class BackgroundScene(SceneVariant):
    name = "background"
    description = "another table surface (4 kinds) and backdrop (4 kinds), a tint, a floor colour"

    def assets_xml(self) -> str:
        out = []
        for name, tex in _TABLES.items():
            r = _TABLE_REPEAT[name]
            out.append(
                f'{tex}<material name="bg_table_{name}" texture="bg_table_{name}" texrepeat="{r} {r}"/>'
            )
        for name, tex in _WALLS.items():
            out.append(
                f'{tex}<material name="bg_wall_{name}" texture="bg_wall_{name}" texrepeat="3 3"/>'
            )
        return "".join(out)

    def sample(
        self,
        rng: np.random.Generator,
        style,
        keepouts: list[Keepout],
        table_z: float,
        avoid: tuple[tuple[str, str], ...] = (),
    ) -> dict:
        tables, walls = sorted(_TABLES), sorted(_WALLS)
        return {
            "table": tables[int(rng.integers(len(tables)))],
            "wall": walls[int(rng.integers(len(walls)))],
            "tint": float(rng.uniform(0.85, 1.1)),
            "floor_rgb": [float(v) for v in rng.uniform(0.1, 0.6, size=3)],
        }

    def apply(self, model, data, params: dict, table_z: float) -> None:
        table = model.material(f"bg_table_{params['table']}")
        t = params["tint"]
        table.rgba[:] = (t, t, t, 1.0)
        model.geom("table").matid[0] = table.id
        wall = model.material(f"bg_wall_{params['wall']}")
        for name in _BACKDROP_GEOMS:
            g = model.geom(name)
            g.matid[0] = wall.id
            g.rgba[:] = _DEFAULT_RGBA
        model.geom("floor").rgba[:] = (*params["floor_rgb"], 1.0)


# --------------------------------------------------------------------------- camera


def camera_quat(pos, target, roll: float = 0.0) -> np.ndarray:
    """MuJoCo camera quaternion (w, x, y, z) looking from ``pos`` at ``target``, rolled about the
    view axis by ``roll`` radians; the camera looks along its -z, its y is up in the image."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c, s = math.cos(roll), math.sin(roll)
    right, up = c * right + s * up, -s * right + c * up
    return _matrix_to_quat(np.stack([right, up, -forward], axis=1))  # columns: camera x, y, z


def _matrix_to_quat(r: np.ndarray) -> np.ndarray:
    w = math.sqrt(max(0.0, 1.0 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1.0 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1.0 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


CAMERA_SHIFT = 0.04  # m, each axis
CAMERA_AIM_SHIFT = 0.03  # m, each axis of the aim point
CAMERA_ROLL = math.radians(3.0)
CAMERA_FOVY = 3.0  # degrees


class CameraScene(SceneVariant):
    name = "camera"
    description = (
        f"the camera moved up to {CAMERA_SHIFT * 100:.0f} cm per axis, its aim point up to "
        f"{CAMERA_AIM_SHIFT * 100:.0f} cm, roll and field of view up to 3 degrees"
    )

    def sample(
        self,
        rng: np.random.Generator,
        style,
        keepouts: list[Keepout],
        table_z: float,
        avoid: tuple[tuple[str, str], ...] = (),
    ) -> dict:
        pos = np.asarray(style.camera_pos) + rng.uniform(-CAMERA_SHIFT, CAMERA_SHIFT, size=3)
        target = np.asarray(style.camera_target) + rng.uniform(
            -CAMERA_AIM_SHIFT, CAMERA_AIM_SHIFT, size=3
        )
        return {
            "pos": [float(v) for v in pos],
            "target": [float(v) for v in target],
            "roll": float(rng.uniform(-CAMERA_ROLL, CAMERA_ROLL)),
            "fovy": float(style.camera_fovy + rng.uniform(-CAMERA_FOVY, CAMERA_FOVY)),
        }

    def apply(self, model, data, params: dict, table_z: float) -> None:
        cam = model.camera("primary")
        cam.pos[:] = params["pos"]
        cam.quat[:] = camera_quat(params["pos"], params["target"], params["roll"])
        cam.fovy[0] = params["fovy"]


SCENE_VARIANTS: dict[str, SceneVariant] = {
    v.name: v for v in (DistractorScene(), BackgroundScene(), CameraScene())
}


def get_variant(name: str) -> SceneVariant:
    """A variant by name; an unknown name lists the valid ones."""
    try:
        return SCENE_VARIANTS[name]
    except KeyError:
        valid = ", ".join([BASE_SCENE, *SCENE_VARIANTS])
        raise UnknownSceneError(f"unknown scene {name!r}; valid scenes: {valid}") from None
