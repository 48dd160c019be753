"""Two real rounds through Dagster, every step in its own process (slow): a module fixture runs
them once, with a station and an MLflow server; each test below checks one thing they left behind
(Dagster's records, the round store, the episodes on disk, MLflow runs and the model registry)."""

import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from pipeline.resources import RoundStore
from pipeline.round.config import SMOKE_ROUND
from pipeline.tracking import RoundTracker

TINY = SMOKE_ROUND

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]  # the first test waits for the fixture


@dataclass
class TwoRounds:
    home: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    r1: str
    r2: str
    missing: dict[str, list[str]]  # each round's missing stages, right after it ran
    rerun: str | None  # what running round 2 again started
    store: RoundStore
    tracker: RoundTracker


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    from pipeline import demo
    from pipeline.demo import local_stack

    home = tmp_path_factory.mktemp("two_rounds") / "home"
    # two GRPO steps, two candidates: the real evaluation first picks one on check seeds
    snapshots = {"grpo_steps": 2, "challenger_snapshots": 2, "snapshot_check_episodes_per_task": 1}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GYMNAST_ROUND_OVERRIDES", json.dumps(TINY | snapshots))
        mp.setenv("GYMNAST_JUDGE_F1_FLOOR", "0.0")
        mp.setenv("GYMNAST_PROGRESS", "0")
        with local_stack(home) as env:
            instance = dg.DagsterInstance.get()
            r1, r2 = demo.last_rounds(2)
            missing = {}
            for r in (r1, r2):
                demo.run_round(instance, r)  # multiprocess executor: every step in its own process
                missing[r] = demo.missing_stages(instance, r)
            rerun = demo.run_round(instance, r2)
            yield TwoRounds(
                home,
                env,
                instance,
                r1,
                r2,
                missing,
                rerun,
                RoundStore(home),
                RoundTracker(env["MLFLOW_TRACKING_URI"]),
            )


def _check_history(instance, asset: str, check: str):
    return instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(asset), check), limit=10
    )


def _keys(folder) -> set[tuple[str, int]]:
    from robot_bridge.episodes import list_episodes, read_episode_header

    return {(h.task, h.seed) for h in map(read_episode_header, list_episodes(folder))}


def _grpo_runs(tracker: RoundTracker):
    return tracker.client.search_runs(
        [tracker.experiment_id], filter_string="tags.`gymnast.stage` = 'challenger'"
    )


# --- Dagster and the round store ----------------------------------------------------------------


def test_each_round_materializes_every_stage(rounds):
    for r in (rounds.r1, rounds.r2):
        assert rounds.missing[r] == []


def test_rerunning_a_finished_round_does_nothing(rounds):
    assert rounds.rerun is None  # nothing left: a re-run does not redo the round


def test_round_two_warm_starts_the_world_model_from_round_one(rounds):
    from pipeline import demo

    s1 = demo.summarize_round(rounds.instance, rounds.r1)
    s2 = demo.summarize_round(rounds.instance, rounds.r2)
    assert (
        s1.world_model_warm_start.startswith("scratch") and s2.world_model_warm_start == rounds.r1
    )


def test_round_two_collects_with_round_ones_champion(rounds):
    from pipeline import demo

    assert demo.summarize_round(rounds.instance, rounds.r2).champion_from == rounds.r1
    store = rounds.store
    assert (
        store.load("real_episodes", rounds.r2).champion == store.load("champion", rounds.r1).policy
    )


def test_the_integrity_checks_and_the_gate_ran_once_per_round(rounds):
    for asset, check in (
        ("real_episodes", "champion_episode_integrity"),
        ("real_evaluation", "challenger_episode_integrity"),
        ("real_evaluation", "promotion_gate"),
    ):
        assert len(_check_history(rounds.instance, asset, check)) == 2, check  # once per round


def test_episode_integrity_passed_in_both_rounds(rounds):
    # the gate may pass or warn; integrity must pass
    for asset, check in (
        ("real_episodes", "champion_episode_integrity"),
        ("real_evaluation", "challenger_episode_integrity"),
    ):
        history = _check_history(rounds.instance, asset, check)
        assert all(h.event.dagster_event.event_specific_data.passed for h in history), check


# --- the gate's episodes: the same fresh states for both policies ---------------------------------


def test_the_gate_judged_champion_and_challenger_on_the_same_states(rounds):
    for r in (rounds.r1, rounds.r2):
        episodes = rounds.store.round_dir(r) / "episodes"
        gate = _keys(episodes / "gate_champion")
        assert gate and gate == _keys(episodes / "challenger")


def test_no_gate_state_was_collected_explored_or_checked_in_either_round(rounds):
    gate_dirs = {"gate_champion", "challenger"}
    trained = set()
    for folder in rounds.store.episode_dirs(upto=rounds.r2):
        if folder.name not in gate_dirs:
            trained |= _keys(folder)
    for r in (rounds.r1, rounds.r2):
        gate = _keys(rounds.store.round_dir(r) / "episodes" / "gate_champion")
        assert not gate & trained


def test_the_gate_seeds_are_within_the_range_on_record_in_mlflow(rounds):
    tracker = rounds.tracker
    for r in (rounds.r1, rounds.r2):
        gate = _keys(rounds.store.round_dir(r) / "episodes" / "gate_champion")
        params = tracker.client.get_run(tracker.find_round_run(r)).data.params
        first, last = map(int, params["seeds.gate"].split("-"))
        assert {seed for _, seed in gate} <= set(range(first, last + 1))


# --- MLflow runs -----------------------------------------------------------------------------------


def test_every_stage_has_a_nested_run_under_its_rounds_run(rounds):
    from pipeline import demo

    tracker = rounds.tracker
    for r in (rounds.r1, rounds.r2):
        parent = tracker.find_round_run(r)
        nested = tracker.client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
        )
        assert {run.data.tags["gymnast.stage"] for run in nested} >= set(demo.STAGES)


def test_each_rounds_run_finished(rounds):
    tracker = rounds.tracker
    for r in (rounds.r1, rounds.r2):
        assert tracker.client.get_run(tracker.find_round_run(r)).info.status == "FINISHED"


def test_grpo_logs_its_success_rate_overall_and_per_task(rounds):
    tracker = rounds.tracker
    grpo = _grpo_runs(tracker)
    assert tracker.client.get_metric_history(grpo[0].info.run_id, "success_rate")
    per_task = [
        tracker.client.get_metric_history(grpo[0].info.run_id, f"success/{t}")
        for t in TINY["tasks"]
    ]
    assert sum(len(h) for h in per_task) >= 2  # each of the 2 steps drew at least one task


# --- the snapshot check and the registry -----------------------------------------------------------


def test_the_real_evaluation_evaluated_the_candidate_the_snapshot_check_chose(rounds):
    for r in (rounds.r1, rounds.r2):
        evaluated = rounds.store.load("real_evaluation", r)
        assert evaluated.evaluation.checkpoint_sha256 == evaluated.challenger.sha256
        assert evaluated.challenger.path.name in (r, "step_0001")


def test_the_snapshot_check_ran_every_candidate_on_the_arm_in_each_round(rounds):
    # the snapshot check ran on the arm before each real evaluation
    for r in (rounds.r1, rounds.r2):
        for name in ("check_step_0001", "check_final"):
            episodes = rounds.store.round_dir(r) / "episodes" / name
            assert len(list(episodes.glob("*.h5"))) == 2, name


def test_the_registry_names_a_challenger_for_every_model_and_a_champion_policy(rounds):
    for name in ("world_model", "judge", "policy"):
        assert rounds.tracker.alias_version(name, "challenger") is not None
    assert rounds.tracker.alias_version("policy", "champion") is not None


def test_the_registrys_challenger_alias_names_round_twos_evaluated_policy(rounds):
    tracker = rounds.tracker
    evaluated = rounds.store.load("real_evaluation", rounds.r2)
    assert tracker.alias_version("policy", "challenger") == tracker.version_for_sha(
        "policy", evaluated.challenger.sha256
    )


# --- the strip of GRPO's imagined rollouts, scored by the judge ----------------------------------


def test_every_grpo_run_logs_the_rollout_strip_to_mlflow(rounds):
    for run in _grpo_runs(rounds.tracker):
        logged = rounds.tracker.client.list_artifacts(run.info.run_id, "previews")
        assert "previews/grpo_rollouts.png" in {a.path for a in logged}


def test_round_two_challenger_metadata_inlines_the_rollout_strip(rounds):
    event = rounds.instance.get_latest_materialization_event(dg.AssetKey("challenger"))
    meta = event.asset_materialization.metadata
    assert "data:image/png;base64," in meta["imagined_rollouts"].value
    assert meta["imagined_rollouts_file"].value == str(
        rounds.store.round_dir(rounds.r2) / "previews" / "grpo_rollouts.png"
    )
