"""The simulated WidowX station and the weight-free policies, on a real MuJoCo scene."""

from __future__ import annotations

import numpy as np
import pytest

from robot_bridge.backends.base import make_backend
from robot_bridge.backends.instant import InstantBackend
from robot_bridge.backends.sim import GapSimBackend, SimBackend
from robot_bridge.policies.base import PolicyLoadError, load_policy, write_policy_config
from robot_bridge.policies.scripted import (
    RandomPolicy,
    ScriptedExpertConfig,
    ScriptedExpertPolicy,
)
from robot_bridge.spec import (
    ACTION_HIGH,
    ACTION_LOW,
    IMAGE_SHAPE,
    STATE_DIM,
    TASKS,
    WORKSPACE_HIGH,
    UnknownTaskError,
)

OPEN = np.array([0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32)


@pytest.fixture(scope="module")
def sim() -> SimBackend:
    backend = make_backend("sim")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def gap() -> GapSimBackend:
    backend = make_backend("sim_gap")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def blind() -> SimBackend:
    """No rendering: expert episodes only need the physics."""
    backend = SimBackend(render=False)
    yield backend
    backend.close()


def _check_observation(obs, previous_seq: int | None) -> None:
    assert obs.image.shape == IMAGE_SHAPE and obs.image.dtype == np.uint8
    assert obs.state.shape == (STATE_DIM,) and obs.state.dtype == np.float32
    assert np.all(np.isfinite(obs.state))
    assert 0.0 <= obs.state[6] <= 1.0
    if previous_seq is not None:
        assert obs.seq == previous_seq + 1


@pytest.mark.parametrize("backend_name", ["sim", "sim_gap"])
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_creates_and_steps(backend_name, task, sim, gap):
    backend = sim if backend_name == "sim" else gap
    assert isinstance(backend, GapSimBackend) == (backend_name == "sim_gap")
    assert backend.info.has_ground_truth_success
    rng = np.random.default_rng(0)
    obs = backend.reset(task, seed=3)
    _check_observation(obs, None)
    assert backend.success() is False
    for _ in range(4):
        action = rng.uniform(ACTION_LOW, ACTION_HIGH).astype(np.float32)
        out = backend.step(action)
        _check_observation(out.observation, obs.seq)
        assert out.observation.timestamp >= obs.timestamp
        assert isinstance(out.workspace_clipped, bool)
        obs = out.observation
    assert np.all(np.isfinite(backend.data.qpos)) and np.all(np.isfinite(backend.data.qvel))
    # The observed state is the simulator's own end-effector pose.
    assert np.linalg.norm(obs.state[:3] - backend.privileged_state()["ee_pos"]) < 1e-5


def test_start_state_is_gripper_down_and_open(sim):
    state = sim.reset("eggplant_in_sink", seed=0).state
    assert np.all(np.abs(state[3:5]) < 0.02), state  # roll and pitch relative to gripper-down
    assert abs(state[5]) < 0.2 and state[6] > 0.95


def test_same_seed_same_first_frame_other_seed_differs(sim):
    first = sim.reset("eggplant_in_basket", seed=7)
    sim.step(np.array([0.05, 0.05, -0.05, 0, 0, 0.2, 0.0], dtype=np.float32))
    again = sim.reset("eggplant_in_basket", seed=7)
    other = sim.reset("eggplant_in_basket", seed=8)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.state, again.state)
    assert not np.array_equal(first.image, other.image)
    assert again.seq > first.seq


def test_close_drawer_starts_open_and_open_drawer_closed(blind):
    blind.reset("close_drawer", seed=1)
    assert blind.privileged_state()["drawer_q"] > 0.07
    blind.reset("open_drawer", seed=1)
    assert blind.privileged_state()["drawer_q"] < 0.02


@pytest.mark.parametrize("height", [0.0, 0.3])
@pytest.mark.parametrize("task", ["eggplant_in_sink", "eggplant_in_basket"])
def test_success_is_a_plain_bool_with_the_eggplant_over_its_target(task, height, blind):
    # labels are JSON: a numpy bool here once failed a whole job at the first failed episode
    import mujoco

    blind.reset(task, seed=1)
    target = blind._sink_body if task == "eggplant_in_sink" else blind._basket_body
    q = blind._egg_qpos
    blind.data.qpos[q : q + 2] = blind.data.xpos[target][:2]
    blind.data.qpos[q + 2] += height  # in the container, or held high above it
    mujoco.mj_forward(blind.model, blind.data)
    assert type(blind.success()) is bool
    assert blind.success() is (height == 0.0)


def test_workspace_clipping_is_reported(sim):
    sim.reset("open_drawer", seed=0)
    assert sim.step(OPEN).workspace_clipped is False
    push = np.array([0.05, 0, 0, 0, 0, 0, 1.0], dtype=np.float32)
    reports = [sim.step(push).workspace_clipped for _ in range(8)]
    assert reports[0] is False and reports[-1] is True
    target = sim.privileged_state()["target_pos"]
    assert target[0] == pytest.approx(WORKSPACE_HIGH[0])
    assert sim.observe().state[0] < WORKSPACE_HIGH[0] + 0.01


def test_advancing_without_rendering_then_observing_gives_the_frame_step_renders(sim, gap):
    """In-process rollouts render only the frames the policy sees: the physics is the same, so
    the frame after five unrendered periods is the one five rendered steps end on."""
    push = np.array([0.02, -0.01, -0.02, 0, 0, 0.1, 0.5], dtype=np.float32)
    for backend in (sim, gap):
        backend.reset("eggplant_in_sink", seed=3)
        for _ in range(5):
            stepped = backend.step(push).observation
        backend.reset("eggplant_in_sink", seed=3)
        assert [backend.advance(push) for _ in range(5)] == [False] * 5
        advanced = backend.observe()
        np.testing.assert_array_equal(advanced.image, stepped.image)
        np.testing.assert_array_equal(advanced.state, stepped.state)
        assert (
            np.abs(
                advanced.image.astype(np.int16) - backend.reset("eggplant_in_sink", seed=3).image
            ).mean()
            > 0.5
        )


def test_hold_safe_keeps_the_arm_still(sim):
    sim.reset("eggplant_in_sink", seed=2)
    sim.step(np.array([0.05, -0.05, -0.05, 0, 0, 0.25, 1.0], dtype=np.float32))
    sim.hold_safe()
    held = sim.observe().state
    assert np.all(sim.data.qvel[sim._arm_dof] == 0.0)
    for _ in range(3):
        state = sim.step(OPEN).observation.state
    assert np.linalg.norm(state[:3] - held[:3]) < 0.002, (state, held)
    assert np.all(np.abs(state[3:6] - held[3:6]) < 0.01)


def test_gap_variant_renders_a_different_scene(sim, gap):
    a = sim.reset("open_drawer", seed=4).image.astype(np.int16)
    b = gap.reset("open_drawer", seed=4).image.astype(np.int16)
    assert np.abs(a - b).mean() > 20.0
    # Same seed, same physical layout: only the look (and friction) differs.
    np.testing.assert_allclose(
        sim.privileged_state()["eggplant_pos"], gap.privileged_state()["eggplant_pos"], atol=1e-3
    )


def test_unknown_task_lists_valid_tasks(blind):
    with pytest.raises(UnknownTaskError, match="open_drawer"):
        blind.reset("fold_laundry", seed=0)


def _run_episode(backend, policy, task: str, seed: int, policy_first: bool = False) -> bool:
    if policy_first:
        policy.reset(task, TASKS[task].instruction, seed=seed)
    obs = backend.reset(task, seed=seed)
    if not policy_first:
        policy.reset(task, TASKS[task].instruction, seed=seed)
    for _ in range(TASKS[task].max_steps):
        chunk = policy.act(obs, TASKS[task].instruction)
        assert chunk.shape[1:] == (7,) and chunk.dtype == np.float32
        for action in chunk:
            obs = backend.step(action).observation
        if backend.success():
            return True
    return False


@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_solves_each_task(task, blind):
    expert = ScriptedExpertPolicy(ScriptedExpertConfig(), blind)
    for seed in (0, 1):
        assert _run_episode(blind, expert, task, seed), f"expert failed {task} seed {seed}"


def test_expert_solves_the_gap_variant(gap):
    expert = ScriptedExpertPolicy(ScriptedExpertConfig(), gap)
    gap.reset("eggplant_in_sink", seed=9)  # a stale scene must not leak into the plan
    assert _run_episode(gap, expert, "eggplant_in_basket", seed=3, policy_first=True)


@pytest.mark.parametrize("task", ["open_drawer", "eggplant_in_sink"])
def test_expert_mistakes_fail_the_task(task, blind):
    expert = ScriptedExpertPolicy(ScriptedExpertConfig(mistake_prob=1.0), blind)
    for seed in (0, 1):
        assert not _run_episode(blind, expert, task, seed=seed)


def test_expert_refuses_a_backend_without_ground_truth(tmp_path):
    write_policy_config(tmp_path, "scripted_expert", noise=0.1)
    with pytest.raises(TypeError, match="SimBackend"):
        load_policy(tmp_path, InstantBackend())


def test_policies_load_from_config_checkpoints(tmp_path, blind):
    expert = load_policy(write_policy_config(tmp_path / "e", "scripted_expert", noise=0.2), blind)
    assert isinstance(expert, ScriptedExpertPolicy) and expert.config.noise == 0.2
    rand = load_policy(write_policy_config(tmp_path / "r", "random", seed=5, chunk_size=3))
    assert isinstance(rand, RandomPolicy)
    obs = blind.reset("close_drawer", seed=0)
    rand.reset("close_drawer", "close the drawer", seed=11)
    chunk = rand.act(obs, "close the drawer")
    assert chunk.shape == (3, 7) and chunk.dtype == np.float32
    assert np.all(chunk >= ACTION_LOW) and np.all(chunk <= ACTION_HIGH)
    rand.reset("close_drawer", "close the drawer", seed=11)
    np.testing.assert_array_equal(rand.act(obs, "close the drawer"), chunk)
    with pytest.raises(PolicyLoadError, match="valid keys"):
        load_policy(write_policy_config(tmp_path / "bad", "random", sed=1))


def test_expert_config_checks_ranges():
    with pytest.raises(ValueError, match="mistake_prob"):
        ScriptedExpertConfig(mistake_prob=1.5)
    with pytest.raises(ValueError, match="noise"):
        ScriptedExpertConfig(noise=-0.1)
