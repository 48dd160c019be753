"""The loop's failure paths on the arm, through real Dagster materializations, a real MLflow server
and a real station subprocess: an unreachable station, an e-stop mid-collection and a station killed
mid-collection each fail the step with one clear message, keep every recorded episode, and a re-run
resumes without driving the arm again for finished work. Also ``gymnast dispatch
models:/policy@champion``: the registry path.

The ``loop`` fixture seeds round 1's champion as a record (a scripted-expert checkpoint), so round
2 collects at once instead of bootstrapping an SFT policy first; everything after that is the real
code path. The station-killed test (slow) starts from nothing on the ``stack`` fixture.
"""

import json
import os
import subprocess
import sys
import threading
import time

import dagster as dg
import pytest

from pipeline.resources import ChampionRecord, RoundStore
from pipeline.round.config import SMOKE_ROUND
from pipeline.round.records import ModelArtifact, PromotionDecision
from pipeline.round.stages import checkpoint_sha256
from robot_bridge.episodes import list_episodes, read_episode
from robot_bridge.launch import StationProcess
from robot_bridge.policies import write_policy_config


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One MLflow server for the module's tests (its start-up is most of a test's set-up): each
    test has its own Dagster home and round store, which decide what a round does; MLflow only
    records."""
    from pipeline.tracking import TrackingServer

    with TrackingServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server.uri


@pytest.fixture
def loop(tmp_path, monkeypatch, tracking):
    """A Dagster home and an MLflow server, round 1's champion recorded, round 2 to collect."""
    from pipeline.demo import last_rounds, local_stack

    monkeypatch.setenv("GYMNAST_PROGRESS", "0")
    overrides = {**SMOKE_ROUND, "tasks": ["open_drawer"], "collect_episodes_per_task": 6}
    monkeypatch.setenv("GYMNAST_ROUND_OVERRIDES", json.dumps(overrides))
    home = tmp_path / "home"
    # the station is chosen per test; local_stack must not start its own
    with local_stack(home, station="tcp://127.0.0.1:1", tracking_uri=tracking) as env:
        r1, r2 = last_rounds(2)
        expert = write_policy_config(tmp_path / "expert", "scripted_expert", noise=0.0)
        sha = checkpoint_sha256(expert)
        decision = PromotionDecision(True, "seeded", 0.0, 0.0, 1.0, {}, {}, "seeded by the test")
        RoundStore(home).save(
            "champion", r1, ChampionRecord(ModelArtifact(expert, sha, {}), True, decision, "")
        )
        yield home, env, r2, sha


def _collect(round_key: str, env_station: str, monkeypatch) -> dg.ExecuteInProcessResult:
    """The round job's real_episodes step, resources read from the environment now."""
    from pipeline.assets import ROUND_ASSETS
    from pipeline.checks import ROUND_CHECKS
    from pipeline.definitions import resources

    monkeypatch.setenv("GYMNAST_STATION", env_station)
    return dg.materialize(
        [*ROUND_ASSETS, *ROUND_CHECKS],
        selection=["real_episodes"],
        partition_key=round_key,
        instance=dg.DagsterInstance.get(),
        resources=resources(),
        raise_on_error=False,
    )


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1  # one attempt: steps that move the arm are never retried
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    return failures[0].step_failure_data.error.message


@pytest.mark.timeout(300)
def test_unreachable_station_fails_the_collection_clearly_and_records_nothing(loop, monkeypatch):
    from pipeline.tracking import free_port

    home, _, r2, _ = loop
    monkeypatch.setenv("GYMNAST_STATION_TIMEOUT", "1")
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    result = _collect(r2, endpoint, monkeypatch)
    assert not result.success
    message = _failure_message(result)
    assert endpoint in message and "re-run the round to resume" in message.lower()
    assert not RoundStore(home).has("real_episodes", r2)
    assert not list_episodes(home / "rounds" / r2 / "episodes" / "champion")


@pytest.mark.timeout(600)
def test_estop_mid_collection_fails_keeps_episodes_and_rerun_skips_them(
    loop, tmp_path, monkeypatch
):
    from robot_bridge.client import StationClient

    home, _, r2, sha = loop
    dest = home / "rounds" / r2 / "episodes" / "champion"
    with StationProcess("sim", episodes_dir=tmp_path / "station", lease_timeout_s=5.0) as station:

        def estop_after_first_episode():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if dest.exists() and list_episodes(dest):
                    with StationClient(station.endpoint) as operator:
                        operator.estop("operator pressed the e-stop")
                    return
                time.sleep(0.02)

        presser = threading.Thread(target=estop_after_first_episode, daemon=True)
        presser.start()
        result = _collect(r2, station.endpoint, monkeypatch)
        presser.join(timeout=10)
        assert not result.success
        message = _failure_message(result).lower()
        assert "e-stop" in message and "re-run the round to resume" in message
        kept = list_episodes(dest)
        finished_before = {read_episode(p).seed for p in kept if _ran_to_the_end(p)}
        assert 1 <= len(finished_before) < 6
        on_arm_before = list_episodes(tmp_path / "station")

        # while the e-stop is engaged a re-run fails the same way and drives nothing
        again = _collect(r2, station.endpoint, monkeypatch)
        assert not again.success and "e-stop" in _failure_message(again).lower()
        assert list_episodes(tmp_path / "station") == on_arm_before

        with StationClient(station.endpoint) as operator:
            operator.estop_clear()
        resumed = _collect(r2, station.endpoint, monkeypatch)
        assert resumed.success
        ran_after = [read_episode(p) for p in list_episodes(tmp_path / "station")]
        ran_after = [e for e in ran_after if e.episode_id not in {_id(p) for p in on_arm_before}]

    episodes = list_episodes(dest)
    assert set(kept) <= set(episodes)  # nothing recorded was lost, the cut-short episode included
    finished = [read_episode(p) for p in episodes if _ran_to_the_end(p)]
    assert sorted(e.seed for e in finished) == sorted({e.seed for e in finished})  # each once
    assert len(finished) == 6 and {e.policy_sha256 for e in finished} == {sha}
    # after the resume the arm ran exactly the seeds that had not run to their end
    assert sorted(e.seed for e in ran_after) == sorted({e.seed for e in finished} - finished_before)
    record = RoundStore(home).load("real_episodes", r2)
    assert record.evaluation.per_task["open_drawer"].episodes == 6


@pytest.mark.timeout(300)
def test_exploration_episodes_are_collected_and_feed_this_rounds_training(
    loop, tmp_path, monkeypatch
):
    from pipeline.assets import training_dirs
    from policy.config import VLAConfig
    from policy.vla import VLAPolicy

    home, _, r2, _ = loop
    r1 = RoundStore(home).rounds()[0]
    vla = VLAPolicy.build(VLAConfig.from_preset("tiny")).save_pretrained(tmp_path / "vla")
    sha = checkpoint_sha256(vla)
    decision = PromotionDecision(True, "seeded", 0.0, 0.0, 1.0, {}, {}, "seeded by the test")
    RoundStore(home).save(
        "champion", r1, ChampionRecord(ModelArtifact(vla, sha, {}), True, decision, "")
    )
    overrides = {**SMOKE_ROUND, "tasks": ["open_drawer"], "collect_episodes_per_task": 2}
    monkeypatch.setenv(
        "GYMNAST_ROUND_OVERRIDES", json.dumps({**overrides, "explore_episodes_per_task": 3})
    )
    with StationProcess("sim", episodes_dir=tmp_path / "station") as station:
        assert _collect(r2, station.endpoint, monkeypatch).success
    here = home / "rounds" / r2 / "episodes"
    champion = [read_episode(p) for p in list_episodes(here / "champion")]
    explored = [read_episode(p) for p in list_episodes(here / "explore")]
    assert len(champion) == 2 and {e.policy_sha256 for e in champion} == {sha}
    assert len(explored) == 3 and sha not in {e.policy_sha256 for e in explored}
    assert not {e.seed for e in explored} & {e.seed for e in champion}
    assert here / "explore" in training_dirs(RoundStore(home), r2)
    # the champion's evaluation this round is its greedy runs alone
    record = RoundStore(home).load("real_episodes", r2)
    assert record.evaluation.per_task["open_drawer"].episodes == 2


def _ran_to_the_end(path) -> bool:
    from robot_bridge.dispatch import RAN_TO_THE_END

    return read_episode(path).termination in RAN_TO_THE_END


def _id(path) -> str:
    from robot_bridge.episodes import episode_id_of

    return episode_id_of(path)


@pytest.mark.timeout(300)
def test_dispatch_fetches_a_registered_model_by_alias(tmp_path, monkeypatch):
    from pipeline.tracking import RoundTracker, TrackingServer

    expert = write_policy_config(tmp_path / "expert", "scripted_expert", noise=0.0)
    with TrackingServer(tmp_path / "mlflow") as server:
        tracker = RoundTracker(server.uri)
        parent = tracker.round_run("2026-11-20")
        with tracker.stage("2026-11-20", "champion", parent_run_id=parent) as run:
            run.log_artifacts(expert, "policy")
            version = tracker.register("policy", run, "policy", aliases=("champion",))
        out = tmp_path / "episodes"
        with StationProcess("sim", episodes_dir=tmp_path / "station") as station:
            cmd = [
                sys.executable,
                "-m",
                "pipeline.cli",
                "dispatch",
                "models:/policy@champion",
                "--station",
                station.endpoint,
                "--tasks",
                "close_drawer",
                "-n",
                "2",
                "--out",
                str(out),
            ]
            env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
            assert done.returncode == 0, done.stderr
    # without a tracking server named, the same command refuses before it reaches the station (in
    # this process: a second interpreter's start-up tests nothing more)
    from pipeline import cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit, match="set MLFLOW_TRACKING_URI to the tracking server"):
        cli.main(cmd[3:])
    assert version == "1"
    assert "| close_drawer | 2 |" in done.stdout
    episodes = [read_episode(p) for p in list_episodes(out)]
    assert len(episodes) == 2
    assert {e.policy_sha256 for e in episodes} == {checkpoint_sha256(expert)}


# --- a station killed mid-collection (slow) -------------------------------------------------------


@pytest.fixture
def stack(tmp_path, monkeypatch):
    from pipeline.demo import local_stack

    # two GRPO steps, two candidates: the real evaluation first picks one on check seeds
    snapshots = {"grpo_steps": 2, "challenger_snapshots": 2, "snapshot_check_episodes_per_task": 1}
    monkeypatch.setenv("GYMNAST_ROUND_OVERRIDES", json.dumps(SMOKE_ROUND | snapshots))
    monkeypatch.setenv("GYMNAST_JUDGE_F1_FLOOR", "0.0")
    monkeypatch.setenv("GYMNAST_PROGRESS", "0")
    with local_stack(tmp_path / "home") as env:
        yield tmp_path / "home", env


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_station_killed_mid_collection_loses_nothing_and_resume_skips_finished_episodes(
    stack, tmp_path, monkeypatch
):
    from pipeline.assets import ROUND_ASSETS
    from pipeline.checks import ROUND_CHECKS
    from pipeline.definitions import resources
    from pipeline.demo import last_rounds
    from robot_bridge.episodes import list_episodes
    from robot_bridge.launch import StationProcess

    home, env = stack
    monkeypatch.setenv("GYMNAST_STATION_TIMEOUT", "5")  # a dead station is noticed after 3 x 5 s
    overrides = {**SMOKE_ROUND, "tasks": ["open_drawer"], "collect_episodes_per_task": 6}
    monkeypatch.setenv("GYMNAST_ROUND_OVERRIDES", json.dumps(overrides))
    instance = dg.DagsterInstance.get()
    (r,) = last_rounds(1)

    def collect():  # the round job's real_episodes step, resources read from the environment now
        return dg.materialize(
            [*ROUND_ASSETS, *ROUND_CHECKS],
            selection=["real_episodes"],
            partition_key=r,
            instance=instance,
            resources=resources(),
            raise_on_error=False,
        )

    dest = home / "rounds" / r / "episodes" / "champion"

    station_a = StationProcess("sim", episodes_dir=tmp_path / "station_a", lease_timeout_s=5.0)
    monkeypatch.setenv("GYMNAST_STATION", station_a.endpoint)

    def kill_after_first_episode():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if dest.exists() and list_episodes(dest):
                station_a.kill()  # the station drops mid-job
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_episode, daemon=True)
    killer.start()
    result = collect()
    killer.join(timeout=5)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "re-run the round to resume" in failure.step_failure_data.error.message.lower()
    kept = list_episodes(dest)
    assert 1 <= len(kept) < 6
    assert not list(dest.glob(".*.download"))

    with StationProcess(
        "sim", episodes_dir=tmp_path / "station_b", lease_timeout_s=5.0
    ) as station_b:
        monkeypatch.setenv("GYMNAST_STATION", station_b.endpoint)
        result = collect()
        assert result.success
        run_on_b = list_episodes(tmp_path / "station_b")
    assert len(list_episodes(dest)) == 6
    assert set(kept) <= set(list_episodes(dest))  # nothing recorded before the drop was lost
    assert len(run_on_b) == 6 - len(kept)  # the arm ran only what was missing
