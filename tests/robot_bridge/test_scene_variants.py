"""Scene variants and instruction paraphrases of the simulated station (issue 21, items 1-2).

A real MuJoCo scene throughout, and a real station process for the wire fields.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import pytest

from robot_bridge.backends.instant import InstantBackend
from robot_bridge.backends.scenes import (
    _OBJECTS,
    BASE_SCENE,
    SCENE_VARIANTS,
    UnknownSceneError,
    in_view,
)
from robot_bridge.backends.sim import (
    GAP_STYLE,
    SIM_STYLE,
    TABLE_Z,
    SimBackend,
    build_scene_xml,
)
from robot_bridge.backends.sim_layout import keepouts
from robot_bridge.client import StationClient, StationError
from robot_bridge.dispatch import run_on_station
from robot_bridge.episodes import read_episode
from robot_bridge.jobs import JobSpec, check_scene
from robot_bridge.launch import StationProcess
from robot_bridge.policies import write_policy_config
from robot_bridge.policies.scripted import ScriptedExpertConfig, ScriptedExpertPolicy
from robot_bridge.protocol import ProtocolError
from robot_bridge.spec import (
    PARAPHRASES,
    TASKS,
    pick_instruction,
    training_instructions,
)

REPO = Path(__file__).resolve().parents[2]
VARIANTS = sorted(SCENE_VARIANTS)
HALF_HEIGHT = {o.kind: o.half_height for o in _OBJECTS}
SIZE = 64


# --------------------------------------------------------------------------- the base scene

# Recorded from the code before scene variants existed: the base scene's MJCF, and the first
# observation of open_drawer, seed 0, at 64 px.
BASE_XML_SHA256 = {
    "sim": "1327130194e742cdb7667f2cd43df3876d10b29ad955bee6832f61820be0e0f1",
    "sim_gap": "e314adb30759c1672d4faf657a1f9a9ba72ffdcbf34f7301027cd61eee24e4d9",
}
BASE_STATE = [
    2.107845992e-01,
    2.457950497e-03,
    7.066082209e-02,
    7.131022812e-07,
    -1.325997346e-05,
    9.398182482e-02,
    1.0,
]
BASE_QPOS = [
    1.165908091e-02,
    -1.901460597e-01,
    7.695733807e-01,
    2.152388301e-06,
    9.913558494e-01,
    -8.232392516e-02,
    3.700000000e-02,
    3.700000000e-02,
    6.369616873e-03,
    2.315129182e-01,
    5.426593148e-02,
    -7.903492188e-02,
    9.957894622e-01,
    -6.045131173e-06,
    6.566700664e-05,
    9.166974753e-02,
]
BASE_FRAME_MEAN_RGB = [161.753, 147.772, 124.862]


def test_base_scene_is_what_it_was_before_variants():
    for name, style in (("sim", SIM_STYLE), ("sim_gap", GAP_STYLE)):
        xml = build_scene_xml(style, SIZE)
        assert hashlib.sha256(xml.encode()).hexdigest() == BASE_XML_SHA256[name], name
    backend = SimBackend(image_size=SIZE)
    try:
        obs = backend.reset("open_drawer", 0)
        np.testing.assert_allclose(obs.state, BASE_STATE, atol=1e-6)
        np.testing.assert_allclose(backend.data.qpos, BASE_QPOS, atol=1e-6)
        mean = obs.image.reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, BASE_FRAME_MEAN_RGB, atol=0.5)
        assert backend.scene == BASE_SCENE and backend.scene_params is None
        # a visit to every variant leaves the base scene exactly as it was
        for v in VARIANTS:
            backend.reset("open_drawer", 0, scene=v)
        again = backend.reset("open_drawer", 0)
        assert np.array_equal(again.image, obs.image)
        assert np.array_equal(again.state, obs.state)
        assert backend.scene == BASE_SCENE and backend.scene_params is None
    finally:
        backend.close()


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_is_seeded_and_keeps_the_base_layout(variant, sim):
    base = sim.reset("eggplant_in_sink", 5)
    base_truth = sim.privileged_state()
    a = sim.reset("eggplant_in_sink", 5, scene=variant)
    params_a = sim.scene_params
    truth = sim.privileged_state()
    b = sim.reset("eggplant_in_sink", 5, scene=variant)
    assert sim.scene == variant
    assert sim.scene_params == params_a
    assert np.array_equal(a.image, b.image) and np.array_equal(a.state, b.state)
    c = sim.reset("eggplant_in_sink", 6, scene=variant)
    assert sim.scene_params != params_a
    assert not np.array_equal(a.image, c.image)
    # the variant changes the look, never the task's layout: seeds pair with the base scene
    assert not np.array_equal(a.image, base.image)
    np.testing.assert_allclose(a.state, base.state, atol=1e-6)
    for key in ("eggplant_pos", "sink_center", "basket_center", "handle_grasp_pos"):
        np.testing.assert_allclose(truth[key], base_truth[key], atol=1e-6, err_msg=key)


def test_distractors_stand_in_view_and_out_of_the_tasks_way(blind):
    kinds, colours = set(), set()
    for seed in range(60):
        task = list(TASKS)[seed % len(TASKS)]
        blind.reset(task, seed, scene="distractors")
        objects = blind.scene_params["objects"]
        assert 2 <= len(objects) <= 4
        zones = keepouts(blind._layout)
        for o in objects:
            x, y = o["xy"]
            assert not any(z.hits(x, y, 0.0) for z in zones), (seed, o)
            assert in_view(SIM_STYLE, (x, y, TABLE_Z + HALF_HEIGHT[o["kind"]]))
            kinds.add(o["kind"])
            colours.add((o["kind"], o["colour"]))
        # the eggplant-like distractor is never the target's own colour
        assert ("eggplant_twin", "purple") not in colours
    assert kinds == {"eggplant_twin", "cube", "cup", "block", "lemon"}
    assert len(colours) > 15


def _expert_successes(backend: SimBackend, scene: str | None, seeds: range) -> dict[str, int]:
    expert = ScriptedExpertPolicy(ScriptedExpertConfig(noise=0.3, seed=1), backend)
    out = {}
    for task in TASKS:
        wins = 0
        for seed in seeds:
            obs = backend.reset(task, seed, scene=scene)
            expert.reset(task, TASKS[task].instruction, seed)
            for _ in range(TASKS[task].max_steps):
                obs = backend.step(expert.act(obs, TASKS[task].instruction)[0]).observation
                if backend.success():
                    break
            wins += int(backend.success())
        out[task] = wins
    return out


def test_ground_truth_is_unchanged_by_distractors(blind):
    """The noisy expert succeeds on as many seeds among distractors as in the base scene."""
    seeds = range(8)
    base = _expert_successes(blind, None, seeds)
    among = _expert_successes(blind, "distractors", seeds)
    assert sum(base.values()) >= 16  # the comparison means something
    for task in TASKS:
        assert abs(base[task] - among[task]) <= 1, (task, base, among)


def test_an_unknown_scene_lists_the_valid_ones(blind):
    with pytest.raises(
        UnknownSceneError, match="valid scenes: base, distractors, background, camera"
    ):
        blind.reset("open_drawer", 0, scene="underwater")


# --------------------------------------------------------------------------- wire fields


def _job_args(**extra) -> dict:
    return {"checkpoint": "a" * 64, "tasks": ["open_drawer"], "episodes_per_task": 2, **extra}


def test_job_fields_are_checked():
    spec = JobSpec.from_wire(_job_args())
    assert spec.scene is None and spec.instruction_set == "default"
    assert JobSpec.from_wire(_job_args(scene="base")).scene is None
    spec = JobSpec.from_wire(_job_args(scene="distractors", instruction_set="heldout"))
    assert spec.scene == "distractors" and spec.instruction_set == "heldout"
    assert spec.instruction("open_drawer", 4) in PARAPHRASES["open_drawer"]["heldout"]
    with pytest.raises(ProtocolError, match="field 'scene' must be str"):
        JobSpec.from_wire(_job_args(scene=3))
    with pytest.raises(ProtocolError, match="field 'scene' must be 1..64 chars"):
        JobSpec.from_wire(_job_args(scene=""))
    with pytest.raises(ProtocolError, match="must be one of default, train, heldout"):
        JobSpec.from_wire(_job_args(instruction_set="test"))
    with pytest.raises(ProtocolError, match="exclude each other"):
        JobSpec.from_wire(
            _job_args(instruction_set="train", instructions={"open_drawer": "open it"})
        )


def test_a_backend_without_variants_refuses_any_other_scene(blind):
    instant = InstantBackend(height=16, width=16)
    check_scene(instant, None)
    with pytest.raises(ProtocolError, match="backend 'instant' has no scene variants") as e:
        check_scene(instant, "distractors")
    assert e.value.code == "unknown_scene"
    check_scene(blind, "camera")
    with pytest.raises(ProtocolError, match="valid scenes: base, distractors") as e:
        check_scene(blind, "underwater")
    assert e.value.code == "unknown_scene"


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene_station")
    with StationProcess(
        "sim",
        episodes_dir=root / "episodes",
        lease_timeout_s=5.0,
        backend_args={"image_size": 32, "render": "false"},
    ) as s:
        yield s


@pytest.fixture
def client(station):
    c = StationClient(station.endpoint, timeout_s=10.0, name="scenes")
    yield c
    if c.lease:
        with contextlib.suppress(StationError):
            c.release_lease()
    c.close()


def test_a_job_records_its_scene_and_paraphrases(client, tmp_path):
    ckpt = write_policy_config(tmp_path / "expert", "scripted_expert")
    result = run_on_station(
        client,
        ckpt,
        ["close_drawer"],
        3,
        tmp_path / "eps",
        seed=10,
        poll_s=0.05,
        scene="distractors",
        instruction_set="heldout",
    )
    assert result.per_task["close_drawer"].episodes == 3
    eps = sorted((read_episode(p) for p in result.episodes), key=lambda e: e.seed)
    heldout = PARAPHRASES["close_drawer"]["heldout"]
    assert [e.instruction for e in eps] == [
        pick_instruction("close_drawer", "heldout", s) for s in (10, 11, 12)
    ]
    assert len({e.instruction for e in eps}) == 3 and all(e.instruction in heldout for e in eps)
    for e in eps:
        assert e.extra["scene"] == "distractors" and e.extra["instruction_set"] == "heldout"
        assert 2 <= len(e.extra["scene_params"]["objects"]) <= 4
    # the same seeds in the base scene are other episodes: nothing is skipped as collected
    base = run_on_station(client, ckpt, ["close_drawer"], 1, tmp_path / "eps", seed=10, poll_s=0.05)
    assert base.skipped == 0 and base.per_task["close_drawer"].episodes == 1
    ep = read_episode(base.episodes[0])
    assert ep.extra == {} and ep.instruction == TASKS["close_drawer"].instruction
    # and a rerun of the variant job drives nothing again
    again = run_on_station(
        client,
        ckpt,
        ["close_drawer"],
        3,
        tmp_path / "eps",
        seed=10,
        poll_s=0.05,
        scene="distractors",
        instruction_set="heldout",
    )
    assert again.skipped == 3 and again.per_task["close_drawer"].episodes == 3


def test_a_job_in_an_unknown_scene_is_refused(client, tmp_path):
    sha = client.upload_checkpoint(write_policy_config(tmp_path / "r", "random"))
    with pytest.raises(
        StationError, match="valid scenes: base, distractors, background, camera"
    ) as e:
        client.job_submit(sha, ["open_drawer"], 1, scene="underwater")
    assert e.value.code == "unknown_scene"


def test_step_control_resets_into_a_scene_with_a_paraphrase(client):
    client.acquire_lease()
    _, info = client.reset("open_drawer", seed=4, scene="camera", instruction_set="train")
    assert info["scene"] == "camera" and set(info["scene_params"]) >= {"pos", "fovy"}
    assert info["instruction"] == pick_instruction("open_drawer", "train", 4)
    path = client.end_episode()
    ep = read_episode(path)
    assert ep.instruction == info["instruction"]
    assert ep.extra["scene"] == "camera" and ep.extra["instruction_set"] == "train"
    with pytest.raises(StationError, match="exclude each other"):
        client.reset("open_drawer", seed=4, instruction="open it", instruction_set="heldout")
    with pytest.raises(StationError, match="unknown scene 'fog'") as e:
        client.reset("open_drawer", seed=4, scene="fog")
    assert e.value.code == "unknown_scene"


# --------------------------------------------------------------------------- paraphrases


def test_paraphrase_splits_are_disjoint_and_cover_every_task():
    assert set(PARAPHRASES) == set(TASKS)
    every = []
    for task, split in PARAPHRASES.items():
        train, heldout = set(split["train"]), set(split["heldout"])
        assert len(train) >= 3 and len(heldout) >= 3, task
        assert not train & heldout, task
        assert TASKS[task].instruction not in train | heldout, task
        every += [*train, *heldout, TASKS[task].instruction]
    assert len(every) == len(set(every))  # no paraphrase names two tasks
    # consecutive seeds cycle through a set evenly; the default set is the task's instruction
    picks = [pick_instruction("eggplant_in_sink", "heldout", s) for s in range(6)]
    assert sorted(set(picks)) == sorted(PARAPHRASES["eggplant_in_sink"]["heldout"])
    assert pick_instruction("open_drawer", "default", 9) == TASKS["open_drawer"].instruction


def test_held_out_paraphrases_never_reach_training():
    from policy import augment

    heldout = {p for split in PARAPHRASES.values() for p in split["heldout"]}
    rng = np.random.default_rng(0)
    drawn = {augment.paraphrase_instruction(t, rng) for t in TASKS for _ in range(200)}
    assert not drawn & heldout
    assert drawn == {i for t in TASKS for i in training_instructions(t)}
    # training code reaches paraphrases only through training_instructions: no module of the
    # training packages names the paraphrase table or the held-out split
    for package in ("policy", "world_model", "reward", "gymnast_common"):
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text()
            assert "PARAPHRASES" not in text and "heldout" not in text, path
