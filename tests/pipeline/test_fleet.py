"""A fleet of stations: the seed plan, the fleet file, and three real simulated stations on
loopback, one killed mid-collection."""

import json
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.fleet import Arm, Fleet, FleetRunner, plan_shards
from robot_bridge.dispatch import DispatchError
from robot_bridge.episodes import list_episodes, read_episode, read_episode_header
from robot_bridge.launch import StationProcess
from robot_bridge.policies import write_policy_config

TASKS = ["open_drawer", "close_drawer"]


def fleet_of(*arms: tuple) -> Fleet:
    return Fleet(tuple(Arm(*a) for a in arms), timeout_s=5.0)


def test_plan_covers_each_seed_once_on_an_arm_that_supports_the_task():
    fleet = fleet_of(
        ("a", "tcp://127.0.0.1:1"),
        ("b", "tcp://127.0.0.1:2"),
        ("c", "tcp://127.0.0.1:3", None, ("open_drawer",)),
    )
    for n in (1, 2, 7, 10):
        shards = plan_shards(fleet, TASKS, n, seed=100)
        ran = Counter(
            (t, s.seed + i) for s in shards for t in s.tasks for i in range(s.episodes_per_task)
        )
        assert set(ran) == {(t, 100 + i) for t in TASKS for i in range(n)}
        assert set(ran.values()) == {1}
        assert all(s.arm != "c" or s.tasks == ("open_drawer",) for s in shards)
        assert plan_shards(fleet, TASKS, n, seed=100) == shards  # deterministic: pairs stay paired
    loads = Counter()
    for s in plan_shards(fleet, ["open_drawer"], 9, seed=0):
        loads[s.arm] += s.episodes_per_task
    assert loads == {"a": 3, "b": 3, "c": 3}
    with pytest.raises(ValueError, match="no station of the fleet supports task 'put_eggplant"):
        plan_shards(Fleet(fleet.arms[2:]), ["open_drawer", "put_eggplant_in_sink"], 2, seed=0)


def test_fleet_file_toml_and_json_round_trip_and_clear_errors(tmp_path):
    toml = tmp_path / "fleet.toml"
    toml.write_text(
        'timeout_s = 12\n[[station]]\nname = "arm-a"\nendpoint = "tcp://10.0.0.5:5555"\n'
        'keys = "/secrets/a"\ntasks = ["open_drawer"]\n'
        '[[station]]\nname = "arm-b"\nendpoint = "tcp://10.0.0.6:5555"\n'
    )
    fleet = Fleet.from_file(toml)
    assert [a.name for a in fleet.arms] == ["arm-a", "arm-b"] and fleet.timeout_s == 12
    assert fleet.arms[0].tasks == ("open_drawer",) and fleet.arms[1].tasks is None
    assert fleet.arms[0].pool == "robot/arm-a"
    as_json = tmp_path / "fleet.json"
    as_json.write_text(json.dumps(fleet.to_dict()))
    assert Fleet.from_file(as_json) == fleet
    bad = {
        '{"station": []}': "at least one station",
        '{"station": [{"name": "a"}]}': "needs name and endpoint",
        '{"stations": []}': "unknown keys",
        '{"station": [{"name": "a b", "endpoint": "tcp://x:1"}]}': "station name 'a b'",
        '{"station": [{"name": "a", "endpoint": "http://x:1"}]}': "endpoint must be tcp://",
        '{"station": [{"name": "a", "endpoint": "tcp://x:1"}, {"name": "a", "endpoint": "tcp://y:1"}]}': "unique",
    }
    for text, message in bad.items():
        as_json.write_text(text)
        with pytest.raises(ValueError, match=message):
            Fleet.from_file(as_json)


def test_sim_realtime_paces_steps_at_the_control_rate():
    from robot_bridge.backends.sim import SimBackend
    from robot_bridge.spec import CONTROL_HZ

    sim = SimBackend(image_size=32, render=False, realtime=True)
    try:
        sim.reset("open_drawer", seed=0)
        t0 = time.monotonic()
        for _ in range(4):
            sim.step(np.zeros(7))
        # the first step may start at once; each later one waits for its control period
        assert time.monotonic() - t0 >= 3 / CONTROL_HZ - 0.01
    finally:
        sim.close()


def _station(tmp_path, name: str, realtime: bool = False) -> StationProcess:
    return StationProcess(
        "sim",
        episodes_dir=tmp_path / f"station_{name}",
        station_id=name,
        backend_args={"image_size": 64, "realtime": realtime},
        station_args=["--checkpoints-dir", str(tmp_path / f"checkpoints_{name}")],
    )


def test_two_stations_cannot_share_an_episode_folder_or_a_checkpoint_store(tmp_path):
    with StationProcess("instant", episodes_dir=tmp_path / "episodes"):
        # same folders: the second would "recover" the first's live episodes, evict its uploads
        with pytest.raises(RuntimeError, match="is in use by another station .pid"):
            StationProcess("instant", episodes_dir=tmp_path / "episodes", startup_timeout_s=20)
        other = tmp_path / "other_episodes"
        with pytest.raises(RuntimeError, match="station_checkpoints is in use by another station"):
            StationProcess("instant", episodes_dir=other, startup_timeout_s=20)
        ok = ["--checkpoints-dir", str(tmp_path / "own_checkpoints")]
        with StationProcess("instant", episodes_dir=other, station_args=ok) as second:
            assert second.alive()


def _arms(stations: dict[str, StationProcess]) -> Fleet:
    supports = {"c": ("open_drawer",)}  # one arm's scene has only the drawer open task
    return fleet_of(*((n, s.endpoint, None, supports.get(n)) for n, s in stations.items()))


def _placement(dest) -> dict[tuple[str, int], str]:
    """(task, seed) -> the station that recorded it (each episode names its station)."""
    out = {}
    for p in list_episodes(dest):
        h = read_episode_header(p)
        assert (h.task, h.seed) not in out, "a (task, seed) ran twice"
        out[(h.task, h.seed)] = read_episode(p).station_id
    return out


@pytest.mark.timeout(600)
def test_three_stations_one_killed_mid_collection_loses_nothing_and_resumes_its_share(tmp_path):
    # c moves at the real arm's pace, so it is surely mid-share when it is killed
    stations = {n: _station(tmp_path, n, realtime=n == "c") for n in "abc"}
    policy = write_policy_config(tmp_path / "expert", "scripted_expert", noise=0.0)
    dest, n, seed = tmp_path / "round" / "champion", 6, 1000
    try:
        runner = FleetRunner(_arms(stations), log=lambda m: None)

        def kill_c_after_its_first_episode():
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if (dest / "c").exists() and list_episodes(dest / "c"):
                    stations["c"].kill()
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_c_after_its_first_episode, daemon=True)
        killer.start()
        with pytest.raises(DispatchError, match=r"1 of 3 station\(s\) failed \(station c:") as e:
            runner.run(policy, TASKS, n, dest, seed=seed)
        killer.join(timeout=5)
        kept = set(list_episodes(dest))
        assert set(e.value.episodes) == kept  # the error lists everything recorded
        plan = plan_shards(runner.fleet, TASKS, n, seed)
        share = {
            a: sum(s.episodes_per_task * len(s.tasks) for s in plan if s.arm == a) for a in "abc"
        }
        assert share == {"a": 5, "b": 5, "c": 2}
        # the surviving arms finished their whole shares; the killed one kept what it recorded
        assert len(list_episodes(dest / "a")) == 5 and len(list_episodes(dest / "b")) == 5
        kept_c = len(list_episodes(dest / "c"))
        assert kept_c == 1
        ran_before = {a: len(list_episodes(tmp_path / f"station_{a}")) for a in "ab"}

        stations["c"] = _station(tmp_path, "c2")  # the arm back, as a fresh station process
        runner = FleetRunner(_arms(stations), log=lambda m: None)
        result = runner.run(policy, TASKS, n, dest, seed=seed)
        assert {t: r.episodes for t, r in result.per_task.items()} == {t: n for t in TASKS}
        assert set(kept) <= set(list_episodes(dest))  # nothing recorded before the drop was lost
        # the re-run drove only the failed arm, and only for what it had not finished
        assert {a: len(list_episodes(tmp_path / f"station_{a}")) for a in "ab"} == ran_before
        assert len(list_episodes(tmp_path / "station_c2")) == 2 - kept_c

        # a second policy on the same seed block runs each (task, seed) on the same arm: paired
        placed = _placement(dest)
        other = write_policy_config(tmp_path / "noisy", "scripted_expert", noise=0.01)
        runner.run(other, TASKS, n, tmp_path / "round" / "challenger", seed=seed)
        again = _placement(tmp_path / "round" / "challenger")
        assert set(again) == set(placed) == {(t, seed + i) for t in TASKS for i in range(n)}
        arm_of = {"a": "a", "b": "b", "c": "c", "c2": "c"}
        assert {k: arm_of[v] for k, v in again.items()} == {k: arm_of[v] for k, v in placed.items()}
    finally:
        for s in stations.values():
            s.stop()


def _drive_arm(instance_dir: str, arm: str, run: str, spans_dir: str) -> None:
    """One Dagster run (its own process, as the daemon launches them) that drives ``arm`` for 1 s."""
    import dagster as dg

    from pipeline.resources import arm_slot

    @dg.asset(config_schema={"arm": str})
    def drive(context: dg.AssetExecutionContext) -> None:
        with arm_slot(context, Arm(context.op_execution_context.op_config["arm"], "tcp://x:1")):
            t0 = time.monotonic()
            time.sleep(1.0)
            (Path(spans_dir) / run).write_text(json.dumps([t0, time.monotonic()]))

    instance = dg.DagsterInstance.from_config(instance_dir)
    config = {"ops": {"drive": {"config": {"arm": arm}}}}
    assert dg.materialize([drive], instance=instance, run_config=config).success


def test_arm_pools_let_one_run_drive_an_arm_and_different_arms_work_in_parallel(tmp_path):
    """Three real Dagster runs on one instance: each holds the arm's pool (robot/<name>, one slot
    by the instance's default) while it drives the arm."""
    import multiprocessing

    import dagster as dg

    home, spans_dir = tmp_path / "dagster", tmp_path / "spans"
    home.mkdir()
    spans_dir.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\n")
    instance = dg.DagsterInstance.from_config(str(home))  # its databases made once, here
    instance.event_log_storage.initialize_concurrency_limit_to_default("robot/a")
    ctx = multiprocessing.get_context("spawn")
    runs = [("first", "a"), ("second", "a"), ("other_arm", "b")]
    procs = [
        ctx.Process(target=_drive_arm, args=(str(home), arm, run, str(spans_dir)))
        for run, arm in runs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    spans = {run: json.loads((spans_dir / run).read_text()) for run, _ in runs}
    first, second = sorted([spans["first"], spans["second"]])
    assert second[0] >= first[1] - 0.05, "two runs drove arm a at once"
    other = spans["other_arm"]
    # arm b does not wait for arm a: its run overlaps one of arm a's runs
    assert any(other[0] < s[1] and s[0] < other[1] for s in (first, second))
    assert not instance.event_log_storage.get_concurrency_info("robot/a").claimed_slots


def test_the_local_arm_lock_serialises_holders_even_if_the_pool_says_both_hold_the_slot(tmp_path):
    """Dagster's SQLite storage can grant one slot twice in a race; the file lock beside it does
    not: two holders of arm a (each with its own open file, as two processes have) never overlap,
    and a holder of arm b does not wait for them."""
    import threading

    import dagster as dg

    from pipeline.resources import _local_arm_lock

    (tmp_path / "dagster.yaml").write_text("")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    spans: dict[str, list[float]] = {}
    waits: list[str] = []

    def hold(name: str, arm: str) -> None:
        with _local_arm_lock(instance, Arm(arm, "tcp://x:1"), waits.append):
            t0 = time.monotonic()
            time.sleep(0.5)
            spans[name] = [t0, time.monotonic()]

    threads = [threading.Thread(target=hold, args=a) for a in (("1", "a"), ("2", "a"), ("3", "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    first, second = sorted([spans["1"], spans["2"]])
    assert second[0] >= first[1], "two holders of arm a at once"
    assert any(spans["3"][0] < s[1] and s[0] < spans["3"][1] for s in (first, second))
    assert waits == ["waiting for the lock on a: another process is driving it"]


@pytest.mark.timeout(600)
def test_the_learning_bench_on_two_stations_records_the_episodes_one_station_would(tmp_path):
    """``gymnast bench learning --stations 2``: each episode seeds its own reset and noise, so
    the same (task, seed) gives the same episode whichever station runs it, and every episode
    lands in the stage's own folder, as with one station."""
    from pipeline.bench.learning import simulated_stations
    from pipeline.fleet import run_policy

    noisy = write_policy_config(tmp_path / "noisy", "scripted_expert", noise=0.02, seed=7)
    tasks, n, seed = ("open_drawer", "close_drawer"), 3, 40_000
    runs = {}
    for stations in (1, 2):
        dest = tmp_path / f"dest{stations}"
        with simulated_stations(tmp_path / f"bench{stations}", stations) as station:
            assert isinstance(station, FleetRunner) == (stations == 2)
            result = run_policy(station, noisy, tasks, n, dest, seed=seed)
        assert sorted(result.episodes) == list_episodes(dest)
        assert all(p.parent == dest for p in result.episodes)  # no per-station subfolders
        runs[stations] = {(e.task, e.seed): e for e in map(read_episode, list_episodes(dest))}
    assert set(runs[1]) == set(runs[2]) == {(t, seed + i) for t in tasks for i in range(n)}
    assert {e.station_id for e in runs[2].values()} == {"station-0", "station-1"}  # both ran
    for key, one in runs[1].items():
        two = runs[2][key]
        assert one.success == two.success, key
        np.testing.assert_array_equal(one.actions, two.actions)
        np.testing.assert_array_equal(one.frames[0], two.frames[0])
