"""The simulator's language tasks: put the blue / the red cup on the plate, with both cups on the
table in both tasks, so only the instruction tells which one to move.

A real MuJoCo scene throughout; the expert runs without rendering.
"""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from robot_bridge.backends.base import RobotBackend
from robot_bridge.backends.instant import InstantBackend
from robot_bridge.backends.scene_xml import (
    CUP_HALF_HEIGHT,
    CUP_RADIUS,
    PLATE_INNER,
    PLATE_RADIUS,
    PLATE_TOP,
)
from robot_bridge.backends.scenes import SCENE_VARIANTS, in_view
from robot_bridge.backends.sim import (
    SIM_STYLE,
    TABLE_Z,
    GapSimBackend,
    SimBackend,
    build_scene_xml,
)
from robot_bridge.backends.sim_layout import keepouts
from robot_bridge.policies.scripted import ScriptedExpertConfig, ScriptedExpertPolicy
from robot_bridge.spec import (
    AUTOEVAL_TASKS,
    LANGUAGE_TASKS,
    PARAPHRASES,
    TASKS,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    get_task,
    pick_instruction,
    training_instructions,
)

SIZE = 64
OTHER = {"blue_cup_on_plate": "red_cup_on_plate", "red_cup_on_plate": "blue_cup_on_plate"}
COLOUR = {"blue_cup_on_plate": "blue", "red_cup_on_plate": "red"}


def _objects(backend: SimBackend) -> dict[str, np.ndarray]:
    s = backend.privileged_state()
    return {"blue": s["blue_cup_pos"], "red": s["red_cup_pos"], "plate": s["plate_center"]}


def _run(backend: SimBackend, task: str, seed: int, drive: str | None = None) -> list[bool]:
    """One episode of ``task`` driven by the expert of ``drive`` (default: the task's own);
    the success label after each step."""
    expert = ScriptedExpertPolicy(ScriptedExpertConfig(), backend)
    obs = backend.reset(task, seed)
    expert.reset(drive or task, TASKS[task].instruction, seed)
    labels = []
    for _ in range(TASKS[task].max_steps):
        obs = backend.step(expert.act(obs, TASKS[task].instruction)[0]).observation
        labels.append(backend.success())
        if expert.phase == "retreat" and backend.privileged_state()["ee_pos"][2] > 0.0:
            break  # released and lifted away: nothing more happens
    return labels


# --------------------------------------------------------------------------- the tasks


def test_the_task_sets():
    assert AUTOEVAL_TASKS == (
        "open_drawer",
        "close_drawer",
        "eggplant_in_sink",
        "eggplant_in_basket",
    )
    assert set(AUTOEVAL_TASKS) | set(LANGUAGE_TASKS) == set(TASKS)
    assert not set(AUTOEVAL_TASKS) & set(LANGUAGE_TASKS)
    for task in LANGUAGE_TASKS:
        assert get_task(task).max_steps == 100
        assert COLOUR[task] in get_task(task).instruction
    # a station's hello lists what its backend's scene has: the real arm has no cups
    assert SimBackend.tasks == tuple(TASKS) and GapSimBackend.tasks == tuple(TASKS)
    assert InstantBackend.tasks == AUTOEVAL_TASKS == RobotBackend.tasks


def test_paraphrases_name_their_cup_and_held_out_ones_never_train():
    for task in LANGUAGE_TASKS:
        split = PARAPHRASES[task]
        assert len(split["train"]) >= 3 and len(split["heldout"]) >= 3
        train = training_instructions(task)
        assert set(split["train"]) < set(train) and TASKS[task].instruction in train
        assert not set(split["heldout"]) & set(train)
        # the other task's instructions never reach this task's training either
        assert not set(train) & {
            *training_instructions(OTHER[task]),
            *PARAPHRASES[OTHER[task]]["heldout"],
        }
        # every phrasing names this cup's colour and never the other's: language disambiguates
        for text in (*split["train"], *split["heldout"], TASKS[task].instruction):
            assert COLOUR[task] in text and COLOUR[OTHER[task]] not in text, text
        assert pick_instruction(task, "heldout", 1) in split["heldout"]


# --------------------------------------------------------------------------- the layout


def test_a_seed_sets_the_same_layout_in_both_tasks_and_another_seed_another(sim):
    a = sim.reset("blue_cup_on_plate", 3)
    where = _objects(sim)
    b = sim.reset("blue_cup_on_plate", 3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.state, b.state)
    for k, v in _objects(sim).items():
        np.testing.assert_array_equal(v, where[k], err_msg=k)
    # the red task with that seed is the very same scene: only the instruction differs
    c = sim.reset("red_cup_on_plate", 3)
    np.testing.assert_array_equal(a.image, c.image)
    for k, v in _objects(sim).items():
        np.testing.assert_array_equal(v, where[k], err_msg=k)
    sim.reset("blue_cup_on_plate", 4)
    assert all(np.linalg.norm(v[:2] - where[k][:2]) > 1e-3 for k, v in _objects(sim).items())


@pytest.mark.parametrize("task", LANGUAGE_TASKS)
def test_both_cups_stand_apart_on_the_table_in_reach_and_view(task, blind):
    for seed in range(12):
        blind.reset(task, seed)
        assert blind.success() is False
        s = blind.privileged_state()
        cups = [s["blue_cup_pos"], s["red_cup_pos"]]
        plate = s["plate_center"]
        for cup in cups:
            assert cup[2] == pytest.approx(TABLE_Z + CUP_HALF_HEIGHT, abs=2e-3), (seed, cup)
            assert np.linalg.norm(cup[:2] - plate[:2]) > PLATE_RADIUS + CUP_RADIUS, seed
            assert np.all(cup[:2] >= WORKSPACE_LOW[:2]) and np.all(cup[:2] <= WORKSPACE_HIGH[:2])
            assert in_view(SIM_STYLE, cup)
        assert np.linalg.norm(cups[0][:2] - cups[1][:2]) > 2 * CUP_RADIUS + 0.04, seed
        assert in_view(SIM_STYLE, plate)
        # the eggplant waits off the table, far from everything
        assert s["eggplant_pos"][2] < TABLE_Z - 0.5


@pytest.mark.parametrize("variant", sorted(SCENE_VARIANTS))
def test_the_language_tasks_run_in_every_scene_variant(variant, blind):
    for seed in range(3):
        blind.reset("red_cup_on_plate", seed)
        base = _objects(blind)
        blind.reset("red_cup_on_plate", seed, scene=variant)
        assert blind.scene == variant
        for k, v in _objects(blind).items():  # the variant keeps the task's layout
            np.testing.assert_allclose(v, base[k], atol=1e-6, err_msg=k)


def test_distractors_keep_off_the_cups_and_never_copy_a_target_cup(blind):
    for seed in range(30):
        task = LANGUAGE_TASKS[seed % 2]
        blind.reset(task, seed, scene="distractors")
        objects = blind.scene_params["objects"]
        assert 2 <= len(objects) <= 4
        zones = keepouts(blind._layout)
        for o in objects:
            assert not any(z.hits(*o["xy"], 0.0) for z in zones), (seed, o)
            assert (o["kind"], o["colour"]) not in {("cup", "blue"), ("cup", "red")}, seed


# --------------------------------------------------------------------------- ground truth


def _put(backend: SimBackend, colour: str, xy, z: float, tilt: bool = False) -> None:
    q = backend._cup_qpos[colour]
    quat = [np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0] if tilt else [1.0, 0.0, 0.0, 0.0]
    backend.data.qpos[q : q + 7] = [*xy, z, *quat]
    backend.data.qvel[:] = 0.0
    mujoco.mj_forward(backend.model, backend.data)


def test_success_is_the_named_cup_resting_on_the_plate(blind):
    blind.reset("blue_cup_on_plate", 2)
    plate = blind.privileged_state()["plate_center"][:2]
    on_plate = PLATE_TOP + CUP_HALF_HEIGHT
    _put(blind, "red", plate, on_plate)  # the wrong cup on the plate
    assert blind.success() is False
    _put(blind, "red", plate + [0.0, 0.3], TABLE_Z + CUP_HALF_HEIGHT)
    _put(blind, "blue", plate, on_plate)
    assert blind.success() is True
    _put(blind, "blue", plate + [PLATE_INNER - 0.01, 0.0], on_plate)  # off centre, inside
    assert blind.success() is True
    _put(blind, "blue", plate + [PLATE_RADIUS + 0.02, 0.0], TABLE_Z + CUP_HALF_HEIGHT)  # beside
    assert blind.success() is False
    _put(blind, "blue", plate, on_plate + 0.1)  # held above it
    assert blind.success() is False
    _put(blind, "blue", plate, PLATE_TOP + CUP_RADIUS, tilt=True)  # lying on it
    assert blind.success() is False
    blind.reset("red_cup_on_plate", 2)
    _put(blind, "red", plate, on_plate)
    assert blind.success() is True


@pytest.mark.parametrize("task", LANGUAGE_TASKS)
def test_the_expert_puts_the_named_cup_on_the_plate(task, blind):
    # measured: 20 of 20 seeds per task at the default noise (0)
    wins = 0
    for seed in range(5):
        blind.reset(task, seed)
        other_start = _objects(blind)[COLOUR[OTHER[task]]]
        labels = _run(blind, task, seed)
        wins += int(labels[-1])
        # the other cup stayed where it stood
        np.testing.assert_allclose(_objects(blind)[COLOUR[OTHER[task]]], other_start, atol=5e-3)
    assert wins >= 4, wins


@pytest.mark.parametrize("task", LANGUAGE_TASKS)
def test_the_other_cup_on_the_plate_is_no_success(task, blind):
    placed = 0
    for seed in range(3):
        labels = _run(blind, task, seed, drive=OTHER[task])
        assert not any(labels), seed
        placed += int(blind._cup_on_plate(COLOUR[OTHER[task]]))  # the wrong cup went there
    assert placed >= 2, placed


def test_expert_mistakes_fail_the_cup_tasks(blind):
    expert = ScriptedExpertPolicy(ScriptedExpertConfig(mistake_prob=1.0), blind)
    for seed in (0, 1):
        obs = blind.reset("blue_cup_on_plate", seed)
        expert.reset("blue_cup_on_plate", "", seed)
        for _ in range(40):
            obs = blind.step(expert.act(obs, "")[0]).observation
            assert blind.success() is False


# --------------------------------------------------------------------------- the AutoEval tasks


def test_the_autoeval_tasks_never_see_the_cups(sim):
    """Their model is the base scene's (whose MJCF hash test_scene_variants pins) without a cup
    or a plate, and a language episode in between leaves their observations exactly as a fresh
    station's."""
    xml = build_scene_xml(SIM_STYLE, SIZE)
    assert "cup" not in xml and "plate" not in xml
    fresh = SimBackend(image_size=SIZE)
    try:
        for task in AUTOEVAL_TASKS:
            for scene in (None, "distractors"):
                first = fresh.reset(task, 1, scene=scene)
                sim.reset("blue_cup_on_plate", 1, scene=scene)
                obs = sim.reset(task, 1, scene=scene)
                np.testing.assert_array_equal(obs.image, first.image, err_msg=task)
                np.testing.assert_array_equal(obs.state, first.state, err_msg=task)
                np.testing.assert_array_equal(sim.data.qpos, fresh.data.qpos, err_msg=task)
                assert sim.scene_params == fresh.scene_params
                for name in ("blue_cup", "red_cup", "plate"):
                    assert mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_BODY, name) == -1
                assert "blue_cup_pos" not in sim.privileged_state()
    finally:
        fresh.close()
