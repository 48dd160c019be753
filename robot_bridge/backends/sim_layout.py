"""Where a simulated episode's objects go: the seeded layout of one episode, the language
tasks' plate and cups, and the zones a distractor must keep clear of (``robot_bridge.backends.
sim`` draws and applies them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_bridge.backends.scene_xml import (
    BASKET_INNER,
    CABINET_POS,
    CUP_COLOURS,
    CUP_RADIUS,
    DRAWER_TRAVEL,
    EGGPLANT_HALF_LEN,
    EGGPLANT_RADIUS,
    PLATE_RADIUS,
    SINK_INNER,
)
from robot_bridge.backends.scenes import Keepout


@dataclass
class Layout:
    """Seeded per-episode placements (robot-base frame)."""

    arm_pos: np.ndarray
    arm_yaw: float
    eggplant_xy: np.ndarray
    eggplant_yaw: float
    drawer_q: float
    sink_xy: np.ndarray
    basket_xy: np.ndarray
    cabinet_y: float
    # language tasks only: the plate and each cup (by colour); the eggplant is then parked
    plate_xy: np.ndarray | None = None
    cup_xy: dict[str, np.ndarray] | None = None


# Language-task placements (robot-base frame): a box of the table in the camera's view and the
# arm's reach, in front of the cabinet and beside the containers. A cup keeps room for the open
# fingers around it (they reach 5 cm to either side) clear of the other objects.
_LANG_LOW, _LANG_HIGH = np.array([0.12, 0.0]), np.array([0.33, 0.23])
_LANG_MAX_X, _LANG_MAX_Y = 0.34, 0.24  # no footprint beyond (the drawer handle; the workspace)
_FINGER_ROOM = 0.05
_ARM_BASE_CLEAR = 0.15
_PLACE_TRIES = 500
EGGPLANT_PARK = (-0.3, -1.6)  # off the table, behind the camera, on the floor


def place_language_objects(
    rng: np.random.Generator, sink_xy: np.ndarray, basket_xy: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The plate's and the cups' seeded places: every footprint on the free table, the cups
    apart from each other and from the plate with room for the fingers. Blue is drawn first,
    then red, whatever the task: a seed sets the same scene for both language tasks."""
    m = 0.01
    zones = [
        Keepout(*sink_xy, hx=SINK_INNER + 0.006 + m, hy=SINK_INNER + 0.006 + m),
        Keepout(*basket_xy, hx=BASKET_INNER + 0.006 + m, hy=BASKET_INNER + 0.006 + m),
        Keepout(0.0, 0.0, r=_ARM_BASE_CLEAR),
    ]

    def free(xy: np.ndarray, radius: float, others: list[Keepout]) -> bool:
        x, y = float(xy[0]), float(xy[1])
        inside = x + radius <= _LANG_MAX_X and y + radius <= _LANG_MAX_Y
        return inside and not any(z.hits(x, y, radius) for z in (*zones, *others))

    for _ in range(_PLACE_TRIES):
        plate = rng.uniform(_LANG_LOW, _LANG_HIGH)
        if not free(plate, PLATE_RADIUS, []):
            continue
        placed = [Keepout(*plate, r=PLATE_RADIUS + 0.015 + CUP_RADIUS - _FINGER_ROOM)]
        cups: dict[str, np.ndarray] = {}
        for colour in CUP_COLOURS:
            for _ in range(100):
                xy = rng.uniform(_LANG_LOW, _LANG_HIGH)
                if free(xy, _FINGER_ROOM, placed):
                    cups[colour] = xy
                    placed.append(Keepout(*xy, r=CUP_RADIUS + 0.01))
                    break
        if len(cups) == len(CUP_COLOURS):
            return plate, cups
    # never reached in practice (measured: at most ~100 tries over 2000 seeds); a fixed layout
    # keeps the episode valid all the same
    return np.array([0.17, 0.15]), {"blue": np.array([0.29, 0.17]), "red": np.array([0.29, 0.06])}


def keepouts(layout: Layout) -> list[Keepout]:
    """Where a distractor would be in the task's way: the eggplant and room for the open fingers
    around it (in a language task: the plate and the cups with that room instead), the
    containers and a margin, the drawer's travel with the gripper in front of its handle (the
    shut cabinet in a language task), and the arm's base."""
    m = 0.035
    if layout.plate_xy is None:
        targets = [Keepout(*layout.eggplant_xy, r=EGGPLANT_HALF_LEN + EGGPLANT_RADIUS + 0.045)]
    else:
        # the fingers' room is margin enough around a cup: a wider one leaves the distractors
        # too little free table
        targets = [Keepout(*layout.plate_xy, r=PLATE_RADIUS + 0.02)]
        targets += [Keepout(*xy, r=_FINGER_ROOM + 0.01) for xy in layout.cup_xy.values()]
    # the drawer's travel; in a language task the drawer stays shut: the cabinet and its handle
    front = CABINET_POS[0] - (DRAWER_TRAVEL + 0.11 if layout.plate_xy is None else 0.05 + m)
    return [
        *targets,
        Keepout(*layout.sink_xy, hx=SINK_INNER + 0.006 + m, hy=SINK_INNER + 0.006 + m),
        Keepout(*layout.basket_xy, hx=BASKET_INNER + 0.006 + m, hy=BASKET_INNER + 0.006 + m),
        Keepout((front + 0.80) / 2, layout.cabinet_y, hx=(0.80 - front) / 2, hy=0.07 + 0.05),
        Keepout(0.0, 0.0, r=0.12),
    ]
