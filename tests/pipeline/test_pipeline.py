"""The Dagster loop: definitions, graph shape, the round store, checks, and real rounds (slow)."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from pipeline.resources import ChallengerEvaluation, LoopSettings, RoundEpisodes, RoundStore
from pipeline.round.config import SMOKE_ROUND
from pipeline.round.records import Evaluation, ModelArtifact, PromotionDecision
from robot_bridge.dispatch import TaskResult

REPO = Path(__file__).resolve().parents[2]
TINY = SMOKE_ROUND


# --- definitions and graph (fast) ----------------------------------------------------------------------


def test_dagster_definitions_validate():
    env = {**os.environ, "DAGSTER_HOME": ""}
    env.pop("DAGSTER_HOME")
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful for code location gymnast" in out.stdout + out.stderr


def test_round_graph_shows_previous_round_and_guards_the_arm():
    from pipeline.definitions import defs
    from pipeline.schedules import ROUND_JOB

    graph = defs.resolve_asset_graph()
    prev = {}
    for key in graph.get_all_asset_keys():
        for dep in graph.get(key).assets_def.specs_by_key[key].deps:
            if dep.asset_key == key:
                prev[key.to_user_string()] = dep.partition_mapping
    assert set(prev) == {"world_model", "judge", "champion"}
    for mapping in prev.values():
        assert isinstance(mapping, dg.TimeWindowPartitionMapping)
        assert (mapping.start_offset, mapping.end_offset) == (-1, -1)

    node = {k.to_user_string(): graph.get(k) for k in graph.get_all_asset_keys()}
    # arms are held per station inside the step (pool robot/<name>), not by an asset-level pool
    assert {
        n for n, a in node.items() if a.assets_def.op.tags.get("gymnast/moves_arm") == "true"
    } >= {
        "real_episodes",
        "real_evaluation",
    }
    assert {n for n, a in node.items() if a.pools == {"gpu"}} == {
        "world_model",
        "judge",
        "challenger",
    }
    for name in node:
        assert node[name].assets_def.op.retry_policy is None  # the arm is never driven by a retry
    assert node["champion"].parent_keys >= {
        dg.AssetKey("real_evaluation"),
        dg.AssetKey("real_episodes"),
    }
    assert node["challenger"].parent_keys >= {dg.AssetKey("world_model"), dg.AssetKey("judge")}

    from pipeline.checks import ROUND_CHECKS

    checks = {spec.key.name: spec for c in ROUND_CHECKS for spec in c.check_specs}
    blocking = {name for name, c in checks.items() if c.blocking}
    assert blocking == {
        "champion_episode_integrity",
        "challenger_episode_integrity",
        "judge_f1_floor",
        "promotion_gate",
    }
    assert checks["promotion_gate"].asset_key == dg.AssetKey("real_evaluation")
    exploit = checks["world_model_exploitation"]  # warns, never blocks: the gate guards the arm
    assert exploit.asset_key == dg.AssetKey("real_evaluation") and not exploit.blocking
    assert {d.asset_key for d in exploit.additional_deps} == {
        dg.AssetKey("world_model"),
        dg.AssetKey("judge"),
    }
    job = defs.resolve_job_def(ROUND_JOB)
    assert job.partitions_def is not None
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == set(node)


def test_schedule_cron_and_timezone_come_from_the_environment():
    code = (
        "from pipeline.definitions import defs; s = defs.resolve_schedule_def('nightly_round'); "
        "print(s.cron_schedule, s.execution_timezone, s.job_name)"
    )
    env = {**os.environ, "GYMNAST_ROUND_CRON": "30 3 * * *", "GYMNAST_TIMEZONE": "Europe/Berlin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "30 3 * * * Europe/Berlin improvement_round"


def test_instance_config_pools_monitoring_and_no_retries(tmp_path):
    from pipeline.demo import prepare_dagster_home

    instance = dg.DagsterInstance.from_config(str(prepare_dagster_home(tmp_path)))
    pools = instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "op"
    assert instance.run_monitoring_enabled and not instance.run_retries_enabled
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert "sqlite" in type(instance.run_storage).__name__.lower()
    assert str(instance.root_directory) == str(tmp_path / "dagster")


# --- the round store and the gate (fast, real records) -------------------------------------------------


def _evaluation(outcomes: dict[tuple[str, int], bool], sha: str) -> Evaluation:
    per_task = {}
    for (task, _), ok in outcomes.items():
        r = per_task.setdefault(task, TaskResult(task, 0, 0, 0))
        r.episodes += 1
        r.labelled += 1
        r.successes += int(ok)
    return Evaluation(sha, [Path(f"/x/{t}-{s}.h5") for t, s in outcomes], per_task, outcomes)


def test_round_config_follows_the_config_convention():
    from config_convention import assert_follows_the_config_convention

    from pipeline.round.config import RoundConfig

    assert_follows_the_config_convention(
        RoundConfig,
        "bench",
        tasks=("open_drawer",),
        grpo_overrides={"lr": 1e-3, "train_tasks": ["open_drawer"]},
        external_datasets=({"path": "/data/bridge", "success": None},),
    )
    assert RoundConfig.from_preset("smoke").tasks == ("open_drawer", "close_drawer")


def test_round_records_round_trip_and_current_champion(tmp_path):
    store = RoundStore(tmp_path)
    art = ModelArtifact(tmp_path / "p1", "a" * 64, {"loss": 0.5}, [tmp_path / "v.mp4"])
    ev = _evaluation({("open_drawer", 7): True, ("open_drawer", 8): False}, "a" * 64)
    eps = RoundEpisodes(art, None, ev, 7)
    store.save("real_episodes", "2026-01-02_0200", eps)
    back = store.load("real_episodes", "2026-01-02_0200")
    assert back == eps and isinstance(back.evaluation.per_task["open_drawer"], TaskResult)
    assert back.evaluation.outcomes[("open_drawer", 7)] is True

    assert store.current_champion("2026-01-02_0200") is None  # nothing before the first round
    # round 1 stopped before promotion: round 2 collects with the champion round 1 collected with
    assert store.current_champion("2026-01-03_0200") == ("2026-01-02_0200", art)
    new = ModelArtifact(tmp_path / "p2", "b" * 64, {})
    decision = PromotionDecision(True, "mcnemar", 0.01, 0.1, 0.9, {}, {}, "better")
    from pipeline.resources import ChampionRecord

    store.save("champion", "2026-01-02_0200", ChampionRecord(new, True, decision, art.sha256))
    assert store.current_champion("2026-01-03_0200") == ("2026-01-02_0200", new)
    assert store.current_champion("2026-01-10_0200")[1] == new  # skipped nights fall back further
    with pytest.raises(FileNotFoundError, match="materialize it first"):
        store.load("dataset", "2026-01-02_0200")


def test_promotion_gate_passes_only_with_confidence_and_blocks_unpaired_or_seen_evidence(tmp_path):
    from pipeline.checks import promotion_gate

    settings = LoopSettings(home=str(tmp_path), overrides_json=json.dumps(TINY))
    art = ModelArtifact(tmp_path, "c" * 64, {})
    gate = range(1000, 1012)
    collected = RoundEpisodes(
        art, None, _evaluation({("open_drawer", s): True for s in range(12)}, "c" * 64), 0
    )
    champ_on_gate = _evaluation({("open_drawer", s): False for s in gate}, "c" * 64)

    def check(challenger_outcomes, champion=champ_on_gate):
        ev = ChallengerEvaluation(art, _evaluation(challenger_outcomes, "d" * 64), 1000, champion)
        return promotion_gate(
            dg.build_asset_check_context(),
            settings=settings,
            real_evaluation=ev,
            real_episodes=collected,
        )

    r = check({("open_drawer", s): True for s in gate})
    assert r.passed and r.metadata["test"].value.startswith("one-sided exact McNemar")
    assert r.metadata["p_value"].value < 0.05

    r = check({("open_drawer", s): s < 1002 for s in gate})
    assert not r.passed and r.severity == dg.AssetCheckSeverity.WARN  # the champion stays
    assert r.metadata["decision"].value == "champion stays"

    r = check({("open_drawer", 100 + s): True for s in gate})
    assert not r.passed and r.severity == dg.AssetCheckSeverity.ERROR  # blocks promotion
    assert "not paired" in r.metadata["error"].value

    # the gate judged on states the round trained on (its collection seeds) is refused too
    seen = {("open_drawer", s): True for s in range(12)}
    r = check(seen, champion=_evaluation({k: False for k in seen}, "c" * 64))
    assert not r.passed and r.severity == dg.AssetCheckSeverity.ERROR
    assert "collected for training" in r.metadata["error"].value


def test_gymnast_dispatch_evaluates_on_a_station_and_resumes(tmp_path):
    from robot_bridge.episodes import list_episodes
    from robot_bridge.launch import StationProcess
    from robot_bridge.policies import write_policy_config

    ckpt = write_policy_config(tmp_path / "expert", "scripted_expert", noise=0.0)
    out_dir = tmp_path / "episodes"
    with StationProcess("sim", episodes_dir=tmp_path / "station") as station:
        cmd = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "dispatch",
            str(ckpt),
            "--station",
            station.endpoint,
            "--tasks",
            "open_drawer",
            "-n",
            "2",
            "--out",
            str(out_dir),
        ]
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        assert "| open_drawer | 2 |" in first.stdout and "95% CI" in first.stdout
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "(2 already there, not run again)" in again.stdout
    assert len(list_episodes(out_dir)) == 2
    assert len(list_episodes(tmp_path / "station")) == 2  # the arm ran each episode once


# --- real rounds (slow) -----------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path, monkeypatch):
    from pipeline.demo import local_stack

    # two GRPO steps, two candidates: the real evaluation first picks one on check seeds
    snapshots = {"grpo_steps": 2, "challenger_snapshots": 2, "snapshot_check_episodes_per_task": 1}
    monkeypatch.setenv("GYMNAST_ROUND_OVERRIDES", json.dumps(TINY | snapshots))
    monkeypatch.setenv("GYMNAST_JUDGE_F1_FLOOR", "0.0")
    monkeypatch.setenv("GYMNAST_PROGRESS", "0")
    with local_stack(tmp_path / "home") as env:
        yield tmp_path / "home", env


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_two_rounds_through_dagster_in_separate_processes(stack):
    from pipeline import demo
    from pipeline.tracking import RoundTracker

    home, env = stack
    instance = dg.DagsterInstance.get()
    r1, r2 = demo.last_rounds(2)
    for r in (r1, r2):
        demo.run_round(instance, r)  # multiprocess executor: every step in its own process
        assert demo.missing_stages(instance, r) == []
    assert demo.run_round(instance, r2) is None  # nothing left: a re-run does not redo the round

    s1, s2 = demo.summarize_round(instance, r1), demo.summarize_round(instance, r2)
    assert s1.world_model_warm_start.startswith("scratch") and s2.world_model_warm_start == r1
    assert s2.champion_from == r1
    store = RoundStore(home)
    assert store.load("real_episodes", r2).champion == store.load("champion", r1).policy
    for asset, check in (
        ("real_episodes", "champion_episode_integrity"),
        ("real_evaluation", "challenger_episode_integrity"),
        ("real_evaluation", "promotion_gate"),
    ):
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(asset), check), limit=10
        )
        assert len(history) == 2, check  # once per round
        if check != "promotion_gate":  # the gate may pass or warn; integrity must pass
            assert all(h.event.dagster_event.event_specific_data.passed for h in history), check

    # the gate judged both policies on the same fresh states: none of them was collected,
    # explored or checked in either round, and the blocks are on record in MLflow
    from robot_bridge.episodes import list_episodes, read_episode_header

    def keys(folder):
        return {(h.task, h.seed) for h in map(read_episode_header, list_episodes(folder))}

    gate_dirs = {"gate_champion", "challenger"}
    trained = set()
    for folder in store.episode_dirs(upto=r2):
        if folder.name not in gate_dirs:
            trained |= keys(folder)
    tracker = RoundTracker(env["MLFLOW_TRACKING_URI"])
    for r in (r1, r2):
        episodes = store.round_dir(r) / "episodes"
        gate = keys(episodes / "gate_champion")
        assert gate and gate == keys(episodes / "challenger")
        assert not gate & trained
        params = tracker.client.get_run(tracker.find_round_run(r)).data.params
        first, last = map(int, params["seeds.gate"].split("-"))
        assert {seed for _, seed in gate} <= set(range(first, last + 1))
    for r in (r1, r2):
        parent = tracker.find_round_run(r)
        nested = tracker.client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
        )
        assert {run.data.tags["gymnast.stage"] for run in nested} >= set(demo.STAGES)
        assert tracker.client.get_run(parent).info.status == "FINISHED"
    for name in ("world_model", "judge", "policy"):
        assert tracker.alias_version(name, "challenger") is not None
    # the snapshot check ran on the arm before each real evaluation; what was evaluated is the
    # chosen candidate, and the registry's challenger alias names it
    for r in (r1, r2):
        evaluated = store.load("real_evaluation", r)
        assert evaluated.evaluation.checkpoint_sha256 == evaluated.challenger.sha256
        assert evaluated.challenger.path.name in (r, "step_0001")
        for name in ("check_step_0001", "check_final"):
            assert len(list((store.round_dir(r) / "episodes" / name).glob("*.h5"))) == 2, name
    assert tracker.alias_version("policy", "challenger") == tracker.version_for_sha(
        "policy", evaluated.challenger.sha256
    )
    assert tracker.alias_version("policy", "champion") is not None
    grpo = tracker.client.search_runs(
        [tracker.experiment_id], filter_string="tags.`gymnast.stage` = 'challenger'"
    )
    assert tracker.client.get_metric_history(grpo[0].info.run_id, "success_rate")
    per_task = [
        tracker.client.get_metric_history(grpo[0].info.run_id, f"success/{t}")
        for t in TINY["tasks"]
    ]
    assert sum(len(h) for h in per_task) >= 2  # each of the 2 steps drew at least one task
    # the strip of GRPO's imagined rollouts, scored by the judge: in MLflow and on the asset's page
    for run in grpo:
        logged = tracker.client.list_artifacts(run.info.run_id, "previews")
        assert "previews/grpo_rollouts.png" in {a.path for a in logged}
    event = instance.get_latest_materialization_event(dg.AssetKey("challenger"))
    meta = event.asset_materialization.metadata
    assert "data:image/png;base64," in meta["imagined_rollouts"].value
    assert meta["imagined_rollouts_file"].value == str(
        store.round_dir(r2) / "previews" / "grpo_rollouts.png"
    )


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
    overrides = {**TINY, "tasks": ["open_drawer"], "collect_episodes_per_task": 6}
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


def test_every_benchmark_is_reachable_from_the_cli():
    from pipeline.cli import build_parser

    parser = build_parser()
    for argv in (
        ["bench", "bridge"],
        ["bench", "learning"],
        ["bench", "loop", "--rounds", "1"],
        ["bench", "safety", "--upload-gb", "1"],
        ["bench", "gpu", "--quick"],
    ):
        args = parser.parse_args(argv)
        assert args.func.__name__ == "cmd_bench" and args.bench_command == argv[1]
    args = parser.parse_args(["bench", "learning", "--dyna", "2", "--dyna-from", "rl"])
    assert (args.dyna, args.dyna_from, args.dyna_seed) == (2, "rl", None)
    args = parser.parse_args(["bench", "learning", "--dyna", "1", "--dyna-seed", "7"])
    assert args.dyna_seed == 7
    # a Dyna seed with no Dyna iteration, or a negative one, fails before anything runs
    from pipeline.bench.learning import run
    from pipeline.round.config import RoundConfig

    for iterations, seed in ((0, 7), (1, -1)):
        with pytest.raises(ValueError, match="dyna_seed must be >= 0 and needs Dyna iterations"):
            run(
                Path("/nonexistent/bench"),
                RoundConfig(),
                1,
                dyna_iterations=iterations,
                dyna_seed=seed,
            )


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_learning_bench_end_to_end_at_smoke_size_with_a_dyna_iteration(tmp_path):
    """The whole bench through the CLI, one replicate: SFT, exploration, world model, judge, GRPO
    (WG), one Dyna iteration (WG's runs on training seeds -> finetuned world model and judge ->
    GRPO again: WG+Dyna1), the baselines with WG+Dyna1's real budget (SFT+select, Iter-SFT,
    Sim-RL), then the real and imagined evaluation of every arm on the same seeds. Every GRPO
    and every baseline keeps snapshots and a real check on the station picks one, each time."""
    from pipeline.round.stages import checkpoint_sha256
    from robot_bridge.episodes import list_episodes, read_episode, read_episode_header

    work = tmp_path / "bench"
    rep = work / "rep0"
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", "learning", "--workdir", str(work)]
    cmd += ["--preset", "smoke", "--eval-episodes", "1", "--dyna", "1", "--dyna-seed", "3"]
    cmd += ["--replicates", "1", "--eval-task-episodes", f"{TINY['tasks'][0]}=2"]
    cmd += ["--set", "explore_episodes_per_task=1", "--set", "grpo_steps=2"]
    cmd += ["--set", "challenger_snapshots=2", "--set", "snapshot_check_episodes_per_task=1"]
    overrides = {**TINY["grpo_overrides"], "task_sampling": "signal"}
    cmd += ["--set", f"grpo_overrides={json.dumps(overrides)}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1400, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((rep / "bench_learning.json").read_text())
    arms = ["SFT", "SFT+select", "Iter-SFT", "Sim-RL", "WG", "WG+Dyna1"]
    assert list(report["real"]) == arms and report["main_arm"] == "WG+Dyna1"
    assert list(report["imagined"]) == arms and report["replicate"] == 0
    assert report["reused_stages"] == []
    assert "| WG+Dyna1 - SFT | beyond 95% CIs | episodes |" in done.stdout
    assert "WG+Dyna1 beats SFT beyond the 95% intervals on " in done.stdout
    # the summary over the replicates beside them: JSON, markdown and the figure
    summary = json.loads((work / "bench_learning.json").read_text())
    assert summary["arms"] == arms and summary["main_arm"] == "WG+Dyna1"
    assert len(summary["replicates"]) == 1 and summary["settings"]["replicates"] == 1
    assert summary["budget"] == [report["budget"]]
    markdown = (work / "bench_learning.md").read_text()  # a row per task, one of the budget
    assert markdown.count("| WG+Dyna1 |") == len(TINY["tasks"]) + 1
    assert (work / "bench_learning.png").stat().st_size > 0
    # every arm on the same evaluation seeds, as many episodes per task
    first = TINY["tasks"][0]  # 2 episodes there for every arm, 1 on the others
    counts = {t: 2 if t == first else 1 for t in TINY["tasks"]}
    assert report["eval_episodes_per_task"] == counts
    for n in arms:
        per_task = report["real"][n]["per_task"]
        assert {t: r["labelled"] for t, r in per_task.items()} == counts, n
    sft_sha = checkpoint_sha256(rep / "bootstrap" / "policy")
    assert report["real"]["SFT"]["checkpoint_sha256"] == sft_sha
    dyna = [read_episode(p) for p in list_episodes(rep / "dyna1" / "episodes")]
    assert len(dyna) == len(TINY["tasks"]) * TINY["collect_episodes_per_task"]
    assert all(30_000 <= e.seed < 40_000 for e in dyna)  # training seeds, not the evaluation's
    assert {e.policy_sha256 for e in dyna} == {report["real"]["WG"]["checkpoint_sha256"]}
    assert report["dyna1_world_model"]["steps"] == 3  # warm start: the finetune step count
    assert report["dyna_seed"] == 3 and report["grpo"]["grpo_seed"] == 3  # the final is Dyna's
    # the snapshot checks: every candidate on the same check seeds; the one with more real
    # successes (the earlier on a tie) is the policy evaluated. GRPO (and Sim-RL) keep step 1 and
    # the final policy; SFT+select and Iter-SFT as many candidates as WG+Dyna1's two legs checked
    two, four = ["step_0001", "final"], ["step_0001", "step_0002", "step_0004", "final"]
    for prefix, policy_dir, check_dir, name, candidates in (
        ("", rep / "rl_policy", rep / "snapshot_check", "WG", two),
        ("dyna1_", rep / "dyna1" / "rl_policy", rep / "dyna1" / "snapshot_check", "WG+Dyna1", two),
        (
            "sft_select_",
            rep / "sft_select" / "policy",
            rep / "sft_select" / "check",
            "SFT+select",
            four,
        ),
        ("iter_sft_", rep / "iter_sft" / "policy", rep / "iter_sft" / "check", "Iter-SFT", four),
        ("sim_rl_", rep / "sim_rl" / "policy", rep / "sim_rl" / "check", "Sim-RL", two),
    ):
        check = report[f"{prefix}snapshot_check"]
        assert list(check["candidates"]) == candidates, name
        totals = {n: sum(c.values()) for n, c in check["candidates"].items()}
        assert check["chosen"] == max(totals, key=totals.get)  # max keeps the first of ties
        chosen = (
            policy_dir.parent / (policy_dir.name + "_snapshots") / check["chosen"]
            if check["chosen"] != "final"
            else policy_dir
        )
        assert report["real"][name]["checkpoint_sha256"] == checkpoint_sha256(chosen), name
        checked = [read_episode_header(p) for p in list_episodes(check_dir)]
        assert len(checked) == len(TINY["tasks"]) * len(candidates), name
        assert all(40_000 <= e.seed < 50_000 for e in checked), name
    assert "snapshot check (real successes per task on check seeds; chosen" in done.stdout
    # the real budget of every arm: demos + attempts + exploration + Dyna runs + checks, as
    # counted from the files; the baselines match WG+Dyna1's where the bench says they do
    n = len(TINY["tasks"])
    demos, explore = n * TINY["demo_episodes_per_task"], n * 1
    attempts = runs = n * TINY["collect_episodes_per_task"]  # SFT's greedy runs, WG's in Dyna 1
    leg_check = n * 2  # 2 candidates, 1 episode per task each
    rows = {
        "SFT": (demos, 0, 0, 0, 0),
        "SFT+select": (demos, 0, 0, 0, 2 * leg_check),
        "Iter-SFT": (demos, attempts, explore, runs, 4 * leg_check),
        "Sim-RL": (demos, 0, 0, 0, leg_check),
        "WG": (demos, attempts, explore, 0, leg_check),
        "WG+Dyna1": (demos, attempts, explore, runs, 2 * leg_check),
    }
    columns = ("demos", "attempts", "exploration", "dyna_runs", "checks")
    expected = {a: dict(zip(columns, r, strict=True)) | {"total": sum(r)} for a, r in rows.items()}
    assert report["budget"] == expected
    on_disk = {
        "demos": rep / "bootstrap" / "demos",
        "attempts": rep / "sft_attempts",
        "exploration": rep / "sft_explore",
        "dyna_runs": rep / "dyna1" / "episodes",
    }
    for column, folder in on_disk.items():
        assert len(list_episodes(folder)) == expected["WG+Dyna1"][column], column
    for arm, b in expected.items():
        line = f"  {arm}: " + " + ".join(str(b[c]) for c in columns) + f" = {b['total']}"
        assert line in done.stdout, line
    claims = [
        "SFT+select checks == main checks",
        "Iter-SFT data == main's real episodes",
        "Sim-RL checks == one WG leg's",
    ]
    assert report["budget_claims"] == dict.fromkeys(claims, True)
    assert summary["budget_claims"] == [report["budget_claims"]]
    assert all(f"  ok: {c}" in done.stdout for c in claims) and "  NOT MET: " not in done.stdout
    # Iter-SFT's data: the real successes among the demonstrations and WG+Dyna1's episodes
    main_folders = [*on_disk.values(), rep / "snapshot_check", rep / "dyna1" / "snapshot_check"]
    successes = sum(
        bool(read_episode_header(p).success) for f in main_folders for p in list_episodes(f)
    )
    assert report["iter_sft_data"]["episodes"] == successes
    # a re-run in the same workdir trains nothing again (the Dyna iteration's stages and the
    # baselines' included) and the real evaluations and checks resume onto the same policies'
    # finished episodes: the same report
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1400, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((rep / "bench_learning.json").read_text())
    trained = ["demos + SFT", "world model", "judge", "GRPO"]
    assert rerun["reused_stages"] == [
        *trained,
        *(f"Dyna 1: {s}" for s in trained[1:]),
        "SFT+select: SFT with snapshots",
        "Iter-SFT: SFT on demos + real successes",
        "Sim-RL: GRPO in sim_gap",
    ]
    for key in ("real", "budget", "budget_claims", "iter_sft_data", "verdict"):
        assert rerun[key] == report[key], key
    assert all(rerun[k] == report[k] for k in report if k.endswith("snapshot_check"))
    assert json.loads((work / "bench_learning.json").read_text())["pooled"] == summary["pooled"]


def test_learning_bench_reuses_a_stage_only_with_the_same_settings_and_checkpoint(tmp_path):
    from pipeline.bench.reuse import reuse_or_train
    from pipeline.round.config import RoundConfig
    from pipeline.round.stages import checkpoint_sha256

    ckpt = tmp_path / "world_model"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "weights.safetensors").write_bytes(b"v1")
    calls = []

    def train():
        calls.append(1)
        return ModelArtifact(ckpt, checkpoint_sha256(ckpt), {"heldout_mse": 0.01})

    cfg = RoundConfig.from_preset("bench")
    record = tmp_path / "world_model.stage.json"
    first, reused = reuse_or_train(record, "world_model", cfg, train)
    assert not reused and len(calls) == 1
    again, reused = reuse_or_train(record, "world_model", cfg, train)
    assert reused and len(calls) == 1 and again == first  # metrics come back from the record
    # a GRPO-only change leaves the world model's inputs alone ...
    grpo_only = RoundConfig.from_preset("bench", grpo_overrides={"lr": 1e-3})
    assert reuse_or_train(record, "world_model", grpo_only, train)[1]
    # ... but its own inputs, or a checkpoint that changed on disk, retrain
    assert not reuse_or_train(record, "world_model", RoundConfig(world_model_steps=7), train)[1]
    (ckpt / "weights.safetensors").write_bytes(b"v2")
    assert not reuse_or_train(record, "world_model", RoundConfig(world_model_steps=7), train)[1]
    assert len(calls) == 3
    # a Dyna stage is keyed on the checkpoints it starts from too: another RL policy's runs retrain
    dyna = tmp_path / "dyna1_world_model.stage.json"
    assert not reuse_or_train(dyna, "world_model", cfg, train, {"runs_of": "aa", "from": "bb"})[1]
    assert reuse_or_train(dyna, "world_model", cfg, train, {"runs_of": "aa", "from": "bb"})[1]
    assert not reuse_or_train(dyna, "world_model", cfg, train, {"runs_of": "cc", "from": "bb"})[1]
    assert len(calls) == 5


@pytest.mark.timeout(300)
def test_exploration_samples_the_policy_on_seeds_of_its_own(tmp_path):
    """Dyna exploration runs a copy of the checkpoint that decodes at the exploration temperature
    (the weights are the same file contents), on seeds disjoint from the greedy collection's; on
    the same seed the greedy policy acts differently, so the world model sees new actions."""
    import numpy as np

    from pipeline.round.config import RoundConfig
    from pipeline.round.stages import collect_episodes, explore_on_station, sampling_checkpoint
    from pipeline.seeds import BENCH_EXPLORE
    from policy.config import VLAConfig
    from policy.vla import VLAPolicy
    from robot_bridge.client import StationClient
    from robot_bridge.episodes import read_episode
    from robot_bridge.launch import StationProcess

    with pytest.raises(ValueError, match="explore_temperature must be > 0"):
        RoundConfig(explore_temperature=0.0)
    with pytest.raises(ValueError, match="explore_episodes_per_task must be >= 0"):
        RoundConfig(explore_episodes_per_task=-1)
    from robot_bridge.policies import write_policy_config

    expert = write_policy_config(tmp_path / "expert", "scripted_expert")
    with pytest.raises(ValueError, match="exploration samples a VLA policy.*'scripted_expert'"):
        sampling_checkpoint(expert, tmp_path / "expert_sampled", 1.0)
    ckpt = VLAPolicy.build(VLAConfig.from_preset("tiny")).save_pretrained(tmp_path / "vla")
    cfg = RoundConfig.from_preset(
        "smoke", tasks=["open_drawer"], explore_episodes_per_task=2, explore_temperature=1.0
    )
    with (
        StationProcess("sim", episodes_dir=tmp_path / "station") as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        none = explore_on_station(
            client,
            ckpt,
            tmp_path / "none",
            tmp_path / "none_policy",
            RoundConfig.from_preset("smoke"),
            seed=7,
        )
        explored = explore_on_station(
            client, ckpt, tmp_path / "explore", tmp_path / "explore_policy", cfg
        )
        greedy = collect_episodes(
            client,
            ckpt,
            tmp_path / "greedy",
            cfg,
            episodes_per_task=2,
            seed=cfg.seed + BENCH_EXPLORE,
        )
    assert none is None and not (tmp_path / "none").exists()
    sampled_eps = sorted((read_episode(p) for p in explored.episodes), key=lambda e: e.seed)
    greedy_eps = sorted((read_episode(p) for p in greedy.episodes), key=lambda e: e.seed)
    assert [e.seed for e in sampled_eps] == [cfg.seed + BENCH_EXPLORE + i for i in range(2)]
    assert [e.seed for e in greedy_eps] == [e.seed for e in sampled_eps]
    assert explored.checkpoint_sha256 != greedy.checkpoint_sha256  # a copy that decodes sampled
    meta = json.loads((tmp_path / "explore_policy" / "config.json").read_text())
    assert meta["station_temperature"] == 1.0
    for s, g in zip(sampled_eps, greedy_eps, strict=True):
        n = min(len(s.actions), len(g.actions))
        assert not np.allclose(np.asarray(s.actions)[:n], np.asarray(g.actions)[:n])


def test_bootstrap_trains_on_this_configurations_demonstrations_only(tmp_path):
    """A demos folder left by a larger earlier run must not leak into a smaller run's SFT (it did:
    a bench run configured for 16 demonstrations per task trained on the 24 already there)."""
    from pipeline.round.config import RoundConfig
    from pipeline.round.stages import bootstrap_champion
    from robot_bridge.client import StationClient
    from robot_bridge.episodes import list_episodes
    from robot_bridge.launch import StationProcess

    def cfg(n):
        return RoundConfig.from_preset("smoke", tasks=["close_drawer"], demo_episodes_per_task=n)

    with (
        StationProcess("sim", episodes_dir=tmp_path / "station") as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        big = bootstrap_champion(client, tmp_path / "boot", cfg(3), progress=False)
        small = bootstrap_champion(client, tmp_path / "boot", cfg(2), progress=False)
    assert len(list_episodes(tmp_path / "boot" / "demos")) == 3  # nothing deleted
    assert (big.metrics["demos"], small.metrics["demos"]) == (3, 2)


def test_select_challenger_keeps_the_snapshot_with_most_real_successes_earliest_on_ties(tmp_path):
    """GRPO's snapshots and its final policy run on the same check seeds of their own; the one
    with most real successes is chosen, and of equals the earliest (the nearest the champion)."""
    import dataclasses

    from pipeline.round.config import RoundConfig
    from pipeline.round.stages import (
        challenger_candidates,
        select_challenger,
        snapshot_steps,
        snapshots_dir,
    )
    from pipeline.seeds import BENCH_CHECK
    from robot_bridge.client import StationClient
    from robot_bridge.episodes import list_episodes, read_episode
    from robot_bridge.launch import StationProcess
    from robot_bridge.policies.base import write_policy_config

    assert snapshot_steps(RoundConfig(grpo_steps=80, challenger_snapshots=4)) == [20, 40, 60, 80]
    assert snapshot_steps(RoundConfig(grpo_steps=10, challenger_snapshots=3)) == [3, 7, 10]
    assert snapshot_steps(RoundConfig(grpo_steps=10)) == [10]  # the final policy only

    final = write_policy_config(tmp_path / "rl_policy", "random", seed=1, chunk_size=5)
    snaps = snapshots_dir(final)
    write_policy_config(snaps / "step_0002", "random", seed=2, chunk_size=5)
    write_policy_config(snaps / "step_0004", "scripted_expert")
    cfg = RoundConfig.from_preset(
        "smoke", tasks=["open_drawer"], grpo_steps=6, challenger_snapshots=3
    )
    cfg = dataclasses.replace(cfg, snapshot_check_episodes_per_task=2, seed=3)
    assert challenger_candidates(final) == [snaps / "step_0002", snaps / "step_0004", final]
    with (
        StationProcess("sim", episodes_dir=tmp_path / "station") as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        chosen, check = select_challenger(client, final, tmp_path / "check", cfg, progress=False)
        assert chosen == snaps / "step_0004" and check["chosen"] == "step_0004"
        assert check["candidates"] == {
            "step_0002": {"open_drawer": 0},
            "step_0004": {"open_drawer": 2},
            "final": {"open_drawer": 0},
        }
        # an equally good earlier snapshot wins the tie
        write_policy_config(snaps / "step_0001", "scripted_expert")
        chosen, check = select_challenger(client, final, tmp_path / "check", cfg, progress=False)
        assert chosen == snaps / "step_0001" and check["candidates"]["step_0001"] == {
            "open_drawer": 2
        }
    for name in ("step_0001", "step_0002", "step_0004", "final"):
        seeds = sorted(
            read_episode(p).seed for p in list_episodes(tmp_path / "check" / f"check_{name}")
        )
        assert seeds == [3 + BENCH_CHECK + i for i in range(2)]
    with pytest.raises(ValueError, match="challenger_snapshots \\(7\\) cannot exceed grpo_steps"):
        RoundConfig(grpo_steps=6, challenger_snapshots=7)
    with pytest.raises(ValueError, match=r"grpo_overrides train_tasks \['close drawer'\] are not"):
        RoundConfig(grpo_overrides={"train_tasks": ["close drawer"]})
    # a per-task evaluation job narrows the round: train_tasks narrow with it, other overrides stay
    closing = RoundConfig(grpo_overrides={"train_tasks": ["close_drawer"], "lr": 1e-5})
    assert closing.for_tasks(["open_drawer"]).grpo_overrides == {"lr": 1e-5}
    narrowed = closing.for_tasks(["close_drawer", "open_drawer"])
    assert narrowed.tasks == ("close_drawer", "open_drawer")
    assert narrowed.grpo_overrides == {"train_tasks": ["close_drawer"], "lr": 1e-5}


def test_learning_bench_evaluates_each_task_as_often_as_asked_and_judges_by_the_intervals(
    tmp_path,
):
    """A close task can get more real episodes than the rest: one job per count, same seeds for
    every policy, extending an earlier evaluation rather than repeating it; the verdict is
    "better" only when the RL interval lies wholly above SFT's."""
    from pipeline.bench.common import EVAL_SEED, eval_counts, evaluate_policy
    from pipeline.bench.report import beyond_intervals
    from pipeline.cli import build_parser
    from pipeline.round.config import RoundConfig
    from robot_bridge.client import StationClient
    from robot_bridge.dispatch import wilson_interval
    from robot_bridge.episodes import list_episodes, read_episode_header
    from robot_bridge.launch import StationProcess
    from robot_bridge.policies.base import write_policy_config

    tasks = ("open_drawer", "close_drawer")
    assert eval_counts(tasks, 2, {"close_drawer": 5}) == {"open_drawer": 2, "close_drawer": 5}
    with pytest.raises(ValueError, match="tasks not in this run: \\['eggplant_in_sink'\\]"):
        eval_counts(tasks, 2, {"eggplant_in_sink": 5})
    with pytest.raises(ValueError, match="must be >= 1"):
        eval_counts(tasks, 0)
    args = build_parser().parse_args(
        ["bench", "learning", "--eval-task-episodes", "close_drawer=500"]
    )
    assert args.eval_task_episodes == ["close_drawer=500"]

    def rate(k, n):
        return {"ci95": list(wilson_interval(k, n))}

    assert beyond_intervals(rate(500, 1000), rate(600, 1000)) == 1  # [47, 53] vs [57, 63]
    assert beyond_intervals(rate(50, 100), rate(60, 100)) == 0  # [40, 60] vs [50, 69]
    assert beyond_intervals(rate(13, 100), rate(1, 100)) == -1

    expert = write_policy_config(tmp_path / "expert", "scripted_expert")
    cfg = RoundConfig.from_preset("smoke", tasks=list(tasks))
    with (
        StationProcess("sim", episodes_dir=tmp_path / "station") as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        ev = evaluate_policy(
            client, expert, tmp_path / "eval", cfg, {"open_drawer": 1, "close_drawer": 3}, False
        )
        assert {t: r.labelled for t, r in ev.per_task.items()} == {
            "open_drawer": 1,
            "close_drawer": 3,
        }
        assert ev.outcomes == {
            ("open_drawer", EVAL_SEED): True,
            **{("close_drawer", EVAL_SEED + i): True for i in range(3)},
        }
        more = evaluate_policy(
            client, expert, tmp_path / "eval", cfg, {"open_drawer": 2, "close_drawer": 3}, False
        )
    assert more.per_task["open_drawer"].labelled == 2 and len(more.episodes) == 5
    seeds = sorted(
        (h.task, h.seed) for h in map(read_episode_header, list_episodes(tmp_path / "eval"))
    )
    assert seeds == sorted(
        [("open_drawer", EVAL_SEED + i) for i in range(2)]
        + [("close_drawer", EVAL_SEED + i) for i in range(3)]
    )  # the second evaluation ran only open drawer's new seed


# --- rounds you can see: numeric metadata, the success chart, inline previews (fast) ------------------


def _gate(champion: dict, challenger: dict, sha: str = "e" * 64) -> ChallengerEvaluation:
    art = ModelArtifact(Path("/x/challenger"), sha, {})
    return ChallengerEvaluation(
        art, _evaluation(challenger, sha), 1000, _evaluation(champion, "f" * 64)
    )


def test_gate_metadata_is_numeric_per_task_for_challenger_and_champion():
    from pipeline.previews import gate_metadata

    gate = range(1000, 1004)
    ev = _gate(
        {("open_drawer", s): s < 1001 for s in gate} | {("close_drawer", s): False for s in gate},
        {("open_drawer", s): s < 1003 for s in gate} | {("close_drawer", s): True for s in gate},
    )
    meta = gate_metadata(ev)
    expected = {
        "success/open_drawer": 0.75,
        "success/close_drawer": 1.0,
        "champion/success/open_drawer": 0.25,
        "champion/success/close_drawer": 0.0,
        "success_rate": 7 / 8,
        "champion/success_rate": 1 / 8,
    }
    for key, value in expected.items():  # floats: the UI plots them across partitions
        assert isinstance(meta[key], dg.FloatMetadataValue), key
        assert meta[key].value == pytest.approx(value), key
    assert meta["open_drawer/success"].value.startswith("3/4 [")  # the interval, as text
    assert meta["champion/open_drawer/success"].value.startswith("1/4 [")
    assert meta["episodes"] == 8


def test_success_over_rounds_chart_reads_every_gate_and_is_inlined(tmp_path):
    import base64
    import io

    from PIL import Image

    from pipeline.charts import ALL_TASKS, success_history
    from pipeline.previews import preview_md, success_chart
    from pipeline.resources import ChampionRecord

    store = RoundStore(tmp_path)
    gate = range(1000, 1010)
    r1, r2, r3 = "2026-01-02_0200", "2026-01-03_0200", "2026-01-04_0200"
    store.save(
        "real_evaluation",
        r1,
        _gate(
            {("open_drawer", s): s < 1002 for s in gate}, {("open_drawer", s): True for s in gate}
        ),
    )
    decision = PromotionDecision(True, "mcnemar", 0.002, 0.2, 1.0, {}, {}, "better")
    store.save(
        "champion", r1, ChampionRecord(ModelArtifact(tmp_path, "e" * 64, {}), True, decision, "")
    )
    (tmp_path / "rounds" / r2).mkdir(parents=True)  # a round that stopped before its gate
    current = _gate(
        {("open_drawer", s): True for s in gate}, {("open_drawer", s): s < 1005 for s in gate}
    )
    points = success_history(store, r3, current=current, promoted=False)
    assert [p.round for p in points] == [r1, r3]
    assert [p.promoted for p in points] == [True, False]
    assert (
        points[0].champion[ALL_TASKS].successes,
        points[0].challenger["open_drawer"].labelled,
    ) == (
        2,
        10,
    )
    lo, hi = points[1].challenger[ALL_TASKS].ci95  # 5/10: the Wilson interval
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)

    chart = success_chart(store, r3, current, promoted=False)
    assert chart == store.round_dir(r3) / "previews" / "success_over_rounds.png"
    with Image.open(chart) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 200
    md = preview_md(chart, "success over rounds").value
    assert md.startswith("**success over rounds**")
    data = md.split("(data:image/png;base64,", 1)[1].rstrip(")")
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        assert img.format == "PNG"


def test_imagined_vs_real_video_is_shown_as_an_inline_strip(tmp_path):
    import base64
    import io

    import numpy as np
    from PIL import Image

    from pipeline.previews import model_metadata
    from world_model.evaluate import write_side_by_side_video

    real = np.zeros((8, 16, 16, 3), np.uint8)
    real[..., 0] = 200  # red: real
    imagined = np.zeros_like(real)
    imagined[..., 2] = 200  # blue: imagined
    ckpt = tmp_path / "wm"
    video = write_side_by_side_video(real, imagined, ckpt / "preview.mp4")
    before = sorted(p.name for p in ckpt.iterdir())
    art = ModelArtifact(ckpt, "a" * 64, {"loss": 0.1}, [Path(video)])
    meta = model_metadata(art, tmp_path / "previews")
    assert sorted(p.name for p in ckpt.iterdir()) == before  # the checkpoint is left as it was
    md = meta["preview"].value
    assert "top: real, bottom: imagined" in md and "data:image/png;base64," in md
    assert meta["preview_file"].value == str(video)
    data = md.split("(data:image/png;base64,", 1)[1].rstrip(")")
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        strip = np.asarray(img.convert("RGB")).astype(int)
    top, bottom = strip[: strip.shape[0] // 3], strip[-strip.shape[0] // 3 :]
    assert top[..., 0].mean() > top[..., 2].mean() + 50  # real frames on top
    assert bottom[..., 2].mean() > bottom[..., 0].mean() + 50  # imagined below


def test_grpo_rollout_strip_is_inlined_in_the_challengers_metadata_and_logged(tmp_path):
    """What the challenger asset does with its ``RolloutKeeper`` (pipeline.rollout_strip.publish):
    the strip, one row per kept rollout, inline in the metadata and an artifact of the stage's
    MLflow run. (tests/policy/test_grpo.py fills a keeper from a real GRPO run.)"""
    import base64
    import io
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from pipeline.rollout_strip import RolloutKeeper, publish

    class Run:  # the stage run's artifact logging, as tracking.StageRun is called
        def __init__(self):
            self.logged = []

        def log_artifact(self, path, folder):
            self.logged.append((Path(path), folder))

    videos = np.zeros((4, 9, 16, 16, 3), np.uint8)
    videos[..., 1] = np.arange(4)[:, None, None, None] * 60  # brighter rollouts, higher scores
    rollouts = SimpleNamespace(videos=videos, instructions=["open the drawer"] * 4)
    keeper = RolloutKeeper(total_steps=5, per_step=2, frames=3)
    for step in range(5):
        keeper(step, rollouts, np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.6, 0.93]))
    kept = [(k.step, round(k.score, 2)) for k in keeper.kept]  # first and last step, best first
    assert kept == [(0, 0.93), (0, 0.1), (4, 0.93), (4, 0.1)]
    out = tmp_path / "round" / "previews" / "grpo_rollouts.png"
    run = Run()
    meta = publish(keeper, out, run)
    assert run.logged == [(out, "previews")] and out.exists()
    assert meta["imagined_rollouts_file"].value == str(out)
    md = meta["imagined_rollouts"].value
    assert "judge's score" in md and "data:image/png;base64," in md
    data = md.split("(data:image/png;base64,", 1)[1].rstrip(")")
    with Image.open(io.BytesIO(base64.b64decode(data))) as img, Image.open(out) as full:
        assert img.format == "PNG" and img.size == full.size  # small enough: not shrunk
        assert full.height % 4 == 0 and full.height // 4 > 16  # 4 rows: caption, frames
    assert publish(RolloutKeeper(5, steps=[]), out, run) == {} and not out.exists()


# --- conventions: CLI, environment, dg, public Dagster API, the demo console (fast) ------------------


def test_gymnast_version_presets_and_help_without_doubled_percent(tmp_path, monkeypatch, capsys):
    from pipeline import cli, demo
    from pipeline.round.config import ROUND_PRESETS

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == "gymnast 0.1.0"

    monkeypatch.setenv("GYMNAST_HOME", str(tmp_path / "home"))
    parser = cli.build_parser()
    # the station's episodes live under GYMNAST_HOME, and its help says so
    assert parser.parse_args(["station"]).episodes_dir == tmp_path / "home" / "station" / "episodes"
    commands = [
        "station",
        "episodes",
        "collect",
        "dispatch",
        "serve",
        "demo",
        "env",
        "dev",
        "bench",
    ]
    helps = {}
    for argv in [[c] for c in commands] + [
        ["bench", b] for b in ("bridge", "safety", "learning", "loop")
    ]:
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        helps[" ".join(argv)] = capsys.readouterr().out
    for name, text in helps.items():
        assert "%%" not in text, name  # argparse does not %-format descriptions
    assert "95% Wilson intervals" in " ".join(helps["dispatch"].split())
    # (argparse may break a long default across lines)
    assert str(tmp_path / "home" / "station" / "episodes") in "".join(helps["station"].split())
    assert "{" + ",".join(ROUND_PRESETS) + "}" in helps["demo"]  # --preset lists its choices

    seen = {}
    monkeypatch.setattr(
        demo, "main", lambda *a, **kw: seen.setdefault("preset", os.environ["GYMNAST_PRESET"]) and 0
    )
    monkeypatch.setenv("GYMNAST_PRESET", "bench")
    cli.main(["demo", "--preset", "smoke"])
    assert seen.pop("preset") == "smoke"  # the flag wins over the environment
    monkeypatch.setenv("GYMNAST_PRESET", "bench")
    cli.main(["demo"])
    assert seen.pop("preset") == "bench"  # no flag: the environment
    monkeypatch.delenv("GYMNAST_PRESET")
    cli.main(["demo"])
    assert seen.pop("preset") == "tiny"
    with pytest.raises(SystemExit):
        cli.main(["demo", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def _named_environment_variables() -> dict[str, set[str]]:
    """Variables the code names: os.environ / os.getenv / dg.EnvVar with a literal, or a literal
    that looks like one of ours or of the services it configures."""
    import ast
    import re

    looks_like = re.compile(
        r"^(GYMNAST|MLFLOW|DAGSTER|MUJOCO|PYOPENGL|HF|OPENAI|SVT)_[A-Z0-9_]*[A-Z0-9]$"
    )
    found: dict[str, set[str]] = {}
    for package in ("pipeline", "robot_bridge", "policy", "world_model", "reward"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "pipeline" / "environment.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                name = None
                if (
                    isinstance(node, ast.Call)
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    f = ast.unparse(node.func)
                    if f in {
                        "os.environ.get",
                        "os.getenv",
                        "os.environ.setdefault",
                        "os.environ.pop",
                        "dg.EnvVar",
                        "EnvVar",
                    }:
                        name = node.args[0].value
                elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                    if isinstance(node.slice, ast.Constant):
                        name = node.slice.value
                elif (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and looks_like.match(node.value)
                ):
                    name = node.value
                if isinstance(name, str):
                    found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_environment_variable_is_listed_and_the_docs_page_is_current():
    from pipeline.environment import BY_NAME, format_table

    named = _named_environment_variables()
    missing = {n: sorted(p) for n, p in named.items() if n not in BY_NAME}
    assert not missing, (
        f"add these to pipeline/environment.py (then regenerate the docs): {missing}"
    )
    stale = sorted(set(BY_NAME) - set(named))
    assert not stale, f"listed in pipeline/environment.py but named nowhere in the code: {stale}"
    page = (REPO / "docs" / "environment.md").read_text()
    assert page == format_table(markdown=True), (
        "docs/environment.md is stale: gymnast env --markdown > docs/environment.md"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "env"],
        env={**os.environ, "GYMNAST_PRESET": "smoke"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "GYMNAST_PRESET" in out.stdout and "= smoke" in out.stdout


def test_pipeline_uses_no_private_dagster_modules():
    import ast

    for path in sorted((REPO / "pipeline").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("dagster._"), f"{path.name} imports {name}"


def test_dg_project_config_points_at_the_definitions():
    import shutil
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
    assert config["dg"]["directory_type"] == "project"
    assert (
        config["dg"]["project"]["code_location_target_module"] == config["dagster"]["module_name"]
    )
    assert config["dg"]["project"]["code_location_name"] == config["dagster"]["code_location_name"]
    # dagster-dg-cli is a dev dependency: the check runs wherever the tests do
    dg_cli = shutil.which("dg", path=str(Path(sys.executable).parent))
    assert dg_cli is not None, "dg not installed next to this interpreter (uv sync)"
    out = subprocess.run(
        [dg_cli, "check", "defs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "All definitions loaded successfully" in out.stdout + out.stderr


def test_blocked_stage_is_read_from_the_runs_of_the_round(tmp_path):
    from pipeline import demo

    parts = dg.StaticPartitionsDefinition(["r1", "r2", "r3"])
    outcome = {}

    @dg.asset(name="real_episodes", partitions_def=parts)
    def episodes():
        return 1

    @dg.asset_check(
        asset=episodes, name="champion_episode_integrity", blocking=True, partitions_def=parts
    )
    def integrity(context: dg.AssetCheckExecutionContext):
        passed, severity = outcome[context.partition_key]
        return dg.AssetCheckResult(passed=passed, severity=severity)

    outcome |= {
        "r1": (False, dg.AssetCheckSeverity.ERROR),
        "r2": (False, dg.AssetCheckSeverity.WARN),
        "r3": (True, dg.AssetCheckSeverity.ERROR),
    }
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        for key in ("r1", "r2", "r3"):
            dg.materialize(
                [episodes, integrity], partition_key=key, instance=instance, raise_on_error=False
            )
        assert demo._blocked(instance, "real_episodes", "r1")  # ERROR: the round stopped there
        assert not demo._blocked(instance, "real_episodes", "r2")  # WARN: it went on
        assert not demo._blocked(instance, "real_episodes", "r3")
        assert not demo._blocked(instance, "dataset", "r1")  # no blocking check
        outcome["r1"] = (True, dg.AssetCheckSeverity.ERROR)  # a re-run that passed unblocks it
        dg.materialize([episodes, integrity], partition_key="r1", instance=instance)
        assert not demo._blocked(instance, "real_episodes", "r1")


CONSOLE_SCRIPT = r'''
import subprocess, sys, warnings
from pathlib import Path
from pipeline.console import routed_to_log

CHILD = """
import logging, os, sys, time, warnings
from tqdm import tqdm
logging.basicConfig(level=logging.DEBUG)
logging.getLogger("dagster").debug("STEP_WORKER_STARTED - Executing step in subprocess.")
warnings.warn("a library warning")
for _ in tqdm(range(3), desc="sft", file=sys.stderr, mininterval=0):
    time.sleep(0.01)
print("View run challenger at: http://127.0.0.1:5000/#/experiments/1/runs/abc", file=sys.stderr)
print("stdout chatter of a library")
os.write(2, b"Svt[info]: -------------------------------------------\\n")
"""
with routed_to_log(Path(sys.argv[1])):
    print("| task | champion | challenger |")
    warnings.warn("a warning in the demo process")
    subprocess.run([sys.executable, "-c", CHILD], check=True)
    print("| open_drawer | 1/2 | 2/2 |")
print("after")
'''


def test_demo_console_shows_bars_and_tables_and_logs_the_rest(tmp_path):
    log = tmp_path / "logs" / "demo.log"
    out = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, str(log)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "| task | champion | challenger |",
        "| open_drawer | 1/2 | 2/2 |",
        "after",
    ]
    assert "sft: 100%" in out.stderr and "3/3" in out.stderr  # the progress bar
    console = out.stdout + out.stderr
    logged = log.read_text()
    for line in (
        "STEP_WORKER_STARTED",
        "a library warning",
        "a warning in the demo process",
        "View run challenger at: http://",
        "stdout chatter of a library",
        "Svt[info]: ----",
    ):
        assert line in logged and line not in console, line
    assert "sft:" not in logged


def test_stderr_router_keeps_bars_apart_from_lines():
    import io

    from pipeline.console import StderrRouter

    console, log = io.StringIO(), io.StringIO()
    router = StderrRouter(console, log)
    for chunk in (
        "\rGRPO:  0%|",
        "\rGRPO: 100%|",
        "\n",
        "2026 - dagster - DEBUG - x\n",
        "Svt[info]: ",
        "banner\n",
    ):
        router.feed(chunk)
    router.feed("half a line ")
    router.feed("\rnot a bar: inside a line\n")
    assert console.getvalue() == "\rGRPO:  0%|\rGRPO: 100%|\n"
    assert log.getvalue() == (
        "2026 - dagster - DEBUG - x\nSvt[info]: banner\nhalf a line \rnot a bar: inside a line\n"
    )
