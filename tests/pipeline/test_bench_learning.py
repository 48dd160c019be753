"""The learning bench's arms get the real budget they are said to get; its replicates draw
their own seeds; its report, markdown and figure come out of hand-made outcomes; a stage is reused
only with the same settings and checkpoint; each task is evaluated as often as asked, on a station.
(The whole bench through the CLI: test_bench_learning_end_to_end.py, slow.)"""

from pathlib import Path

import pytest

from pipeline.bench.budget import (
    Ledger,
    arm_keys,
    budget_claims,
    iter_sft_data,
    selection_candidates,
    wg_keys,
)
from pipeline.round.records import ModelArtifact

TASKS = ["open_drawer", "close_drawer", "eggplant_in_sink", "eggplant_in_basket"]


def _files(key: str, n: int) -> list[Path]:
    return [Path(f"/episodes/{key}/{i:04d}.h5") for i in range(n)]


def _replicate_ledger(snapshots: int, per_task: int, dyna: int) -> tuple[Ledger, list[str]]:
    """A replicate's ledger as the bench fills it: one check per World-Gymnast leg of
    ``snapshots`` candidates, and the baselines' checks of ``selection_candidates`` each."""
    tasks = len(TASKS)
    ledger = Ledger()
    ledger.add("demos", _files("demos", 16 * tasks))
    ledger.add("attempts", _files("attempts", 20 * tasks))
    ledger.add("exploration", _files("exploration", 50 * tasks))
    check = snapshots * per_task * tasks  # select_challenger: every candidate on the same seeds
    ledger.add("check", _files("check", check))
    for k in range(1, dyna + 1):
        ledger.add(f"dyna{k}_runs", _files(f"dyna{k}_runs", 20 * tasks))
        ledger.add(f"dyna{k}_check", _files(f"dyna{k}_check", check))
    own = selection_candidates(snapshots, dyna) * per_task * tasks
    ledger.add("sft_select_check", _files("sft_select", own))
    ledger.add("iter_sft_check", _files("iter_sft", own))
    ledger.add("sim_rl_check", _files("sim_rl", check))
    return ledger, wg_keys(dyna, checked=True)


@pytest.mark.parametrize("dyna", [0, 1, 2])
def test_each_arm_is_charged_every_real_episode_it_used_and_the_baselines_match_the_main_arm(
    dyna,
):
    ledger, main_keys = _replicate_ledger(snapshots=4, per_task=16, dyna=dyna)
    main = "WG" if dyna == 0 else f"WG+Dyna{dyna}"
    arms = [
        "SFT",
        "SFT+select",
        "Iter-SFT",
        "Sim-RL",
        "WG",
        *(f"WG+Dyna{k}" for k in range(1, dyna + 1)),
    ]
    budgets = {a: ledger.budget(arm_keys(a, main_keys, checked=True)) for a in arms}
    legs = 1 + dyna
    assert budgets["SFT"] == {
        "demos": 64,
        "sft_choice": 0,  # no SFT choice in this replicate (test_sft_choice.py has one)
        "attempts": 0,
        "exploration": 0,
        "dyna_runs": 0,
        "checks": 0,
        "total": 64,
    }
    assert budgets[main] == {
        "demos": 64,
        "sft_choice": 0,
        "attempts": 80,
        "exploration": 200,
        "dyna_runs": 80 * dyna,
        "checks": 256 * legs,  # 4 snapshots x 16 seeds x 4 tasks per leg
        "total": 64 + 80 + 200 + 80 * dyna + 256 * legs,
    }
    assert budgets["SFT+select"]["checks"] == budgets[main]["checks"]
    assert budgets["SFT+select"]["total"] == 64 + 256 * legs
    assert budgets["Iter-SFT"]["total"] == budgets[main]["total"] + budgets[main]["checks"]
    assert budgets["Sim-RL"]["checks"] == 256 and budgets["Sim-RL"]["total"] == 64 + 256
    if dyna:  # World-Gymnast without Dyna is charged its own leg only
        assert budgets["WG"]["total"] == 64 + 80 + 200 + 256
    claims = budget_claims(budgets, main)
    assert claims and all(claims.values()), claims
    # a baseline that checked fewer episodes than the main arm is caught
    short = Ledger(dict(ledger.runs))
    short.add("sft_select_check", _files("sft_select", 256 * legs - 1))
    budgets["SFT+select"] = short.budget(arm_keys("SFT+select", main_keys, True))
    assert not budget_claims(budgets, main)["SFT+select checks == main checks"]


def test_without_snapshots_no_arm_has_a_check_and_the_baselines_check_nothing():
    assert selection_candidates(1, 0) == selection_candidates(1, 3) == 1
    assert selection_candidates(4, 0) == 4 and selection_candidates(4, 1) == 8
    assert arm_keys("SFT+select", wg_keys(0, False), checked=False) == ["demos"]
    assert arm_keys("Iter-SFT", wg_keys(1, False), False) == [
        "demos",
        "attempts",
        "exploration",
        "dyna1_runs",
    ]
    with pytest.raises(ValueError, match="unknown arm"):
        arm_keys("PPO", [], True)
    with pytest.raises(ValueError, match="unknown real-episode purpose"):
        Ledger().add("evaluation", [])
    with pytest.raises(KeyError, match="no real episodes recorded"):
        Ledger().budget(["demos"])


def test_iter_sft_trains_on_the_demonstrations_and_every_real_success_of_the_main_arm():
    ledger, main_keys = _replicate_ledger(snapshots=2, per_task=2, dyna=1)
    # every third episode of every purpose succeeded; the baselines' own checks must not count
    success = {p: i % 3 == 0 for paths in ledger.runs.values() for i, p in enumerate(paths)}
    data = iter_sft_data(ledger, main_keys, success.__getitem__)
    expected = [p for k in main_keys for p in ledger.runs[k] if success[p]]
    assert sorted(data) == sorted(expected) and len(set(data)) == len(data)
    assert {p.parent.name for p in data} == {
        "demos",
        "attempts",
        "exploration",
        "check",
        "dyna1_runs",
        "dyna1_check",
    }


def test_bad_bench_settings_fail_before_anything_runs():
    from pipeline.bench.learning import run
    from pipeline.round.config import RoundConfig

    with pytest.raises(ValueError, match="replicates must be >= 1"):
        run(Path("/nonexistent/bench"), RoundConfig(), 1, replicates=0)
    with pytest.raises(ValueError, match="reach the dev evaluation range"):
        run(Path("/nonexistent/bench"), RoundConfig(seed=30_000), 1)
    with pytest.raises(ValueError, match="stations must be in"):
        run(Path("/nonexistent/bench"), RoundConfig(), 1, stations=0)
    with pytest.raises(ValueError, match="first_replicate must be >= 0"):
        run(Path("/nonexistent/bench"), RoundConfig(), 1, first_replicate=-1)
    with pytest.raises(ValueError, match="replicate must be in"):  # past the seed windows
        run(Path("/nonexistent/bench"), RoundConfig(), 1, first_replicate=10_000)


def _outcomes(successes: dict[str, int], n: int = 20) -> dict:
    return {(t, 50_000 + i): i < successes.get(t, 0) for t in TASKS for i in range(n)}


def test_the_report_over_replicates_has_every_arm_its_budget_the_verdict_and_a_figure(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store beside the report
    from pipeline.bench.report import summarize, write_summary
    from pipeline.round.config import RoundConfig

    strong = {"open_drawer": 16, "close_drawer": 19, "eggplant_in_sink": 4}
    arms = {
        "SFT": {"open_drawer": 2, "close_drawer": 6, "eggplant_in_sink": 1},
        "SFT+select": {"open_drawer": 3, "close_drawer": 7, "eggplant_in_sink": 1},
        "Iter-SFT": {"open_drawer": 4, "close_drawer": 8},
        "Sim-RL": {"open_drawer": 5, "close_drawer": 9},
        "WG": strong,
    }
    outcomes = {a: [_outcomes(r)] * 3 for a, r in arms.items()}
    budget = {
        a: dict.fromkeys(["demos", "sft_choice", "attempts", "exploration", "dyna_runs"], 1)
        | {"checks": 2, "total": 7}
        for a in arms
    }
    reports = [{"main_arm": "WG", "budget": budget, "budget_claims": {"x": True}}] * 3
    summary = summarize(RoundConfig(), {"eval_range": "final"}, reports, outcomes)
    v = summary["verdict"]
    assert v["met"] and v["missing_arms"] == [] and v["arm"] == "WG"
    assert v["stretch"]["hardest_sft_task"] == {
        "task": "eggplant_in_sink",
        "sft": 0.05,
        "arm": 0.2,
        "met": True,
    }
    assert summary["pooled"]["WG"]["open_drawer"]["successes"] == 48
    out = write_summary(tmp_path, summary)
    text = out["markdown"].read_text()
    assert "| open_drawer | WG | 80% [58, 92] (16/20) |" in text
    assert "TARGET MET" in text and "| 2 | Sim-RL | 1 | 1 | 1 | 1 | 1 | 2 | 7 |" in text
    assert out["figure"].stat().st_size > 10_000 and out["json"].is_file()
    # and one MLflow run with the figure, the pooled rates and the verdict (a local store here)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("gymnast-bench").experiment_id])
    assert run.data.tags["verdict.met"] == "True" and run.data.tags["eval_range"] == "final"
    assert run.data.metrics["success/WG/open_drawer"] == 0.8
    assert run.data.params["settings.eval_range"] == "final"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert logged == {"bench_learning.json", "bench_learning.md", "bench_learning.png"}
    # without the baselines the target is not judged met, whatever SFT's figures
    no_baselines = {a: outcomes[a] for a in ("SFT", "WG")}
    v = summarize(RoundConfig(), {"eval_range": "dev"}, reports, no_baselines)["verdict"]
    assert not v["met"] and v["missing_arms"] == ["SFT+select", "Iter-SFT", "Sim-RL"]


def test_replicates_run_apart_pool_into_the_report_one_run_of_them_all_would_give(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipeline.bench.learning import pool_results
    from pipeline.bench.report import summarize
    from pipeline.bench.results import (
        PoolError,
        read_replicate_results,
        replicate_results,
        write_replicate_results,
    )
    from pipeline.round.config import RoundConfig

    cfg = RoundConfig.from_preset("bench")
    settings = {"eval_range": "final", "eval_episodes": 20, "replicates": 1, "progress": False}
    # replicate 1 differs from 0 and 2, so a lost or swapped replicate changes the figures
    wg = [{"open_drawer": 16, "close_drawer": 19}, {"open_drawer": 9}, {"open_drawer": 15}]
    arms = {"SFT": [{"open_drawer": 2}] * 3, "WG": wg}
    reports = [{"replicate": r, "main_arm": "WG", "budget": {}} for r in range(3)]
    paths = []
    for r in (2, 0, 1):  # three runs, on three days, in any order
        run_settings = {**settings, "first_replicate": r}
        outcomes = {a: _outcomes(per[r]) for a, per in arms.items()}
        res = replicate_results(r, cfg.to_dict(), run_settings, reports[r], outcomes)
        paths.append(write_replicate_results(tmp_path / f"run{r}" / "results.json", res))
    back = read_replicate_results(paths[1])
    assert back["outcomes"]["WG"] == _outcomes(wg[0])  # (task, seed) keys survive JSON

    pooled = pool_results(paths, tmp_path / "pooled")
    together = summarize(
        cfg, settings, reports, {a: [_outcomes(x) for x in per] for a, per in arms.items()}
    )
    for key in ("per_replicate", "pooled", "verdict"):
        assert pooled[key] == together[key], key
    assert pooled["pooled"]["WG"]["open_drawer"]["successes"] == 40
    assert pooled["settings"]["replicate_indices"] == [0, 1, 2]
    text = (tmp_path / "pooled" / "bench_learning.md").read_text()
    assert "| replicate 0 | replicate 1 | replicate 2 | pooled |" in text

    # refused: a replicate twice, another bench's config or settings, other arms
    with pytest.raises(PoolError, match="replicate 0 is in both"):
        pool_results([paths[1], paths[1]], tmp_path / "x")
    other = replicate_results(
        3, RoundConfig.from_preset("bench", grpo_steps=10).to_dict(), settings, reports[0], {}
    )
    bad = write_replicate_results(tmp_path / "other.json", other)
    with pytest.raises(PoolError, match="base config.*grpo_steps"):
        pool_results([paths[0], bad], tmp_path / "x")
    other = replicate_results(3, cfg.to_dict(), {**settings, "eval_range": "dev"}, reports[0], {})
    bad = write_replicate_results(tmp_path / "other.json", other)
    with pytest.raises(PoolError, match="settings.*eval_range"):
        pool_results([paths[0], bad], tmp_path / "x")
    other = replicate_results(3, cfg.to_dict(), settings, reports[0], {"SFT": _outcomes({})})
    bad = write_replicate_results(tmp_path / "other.json", other)
    with pytest.raises(PoolError, match="same arms"):
        pool_results([paths[0], bad], tmp_path / "x")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(PoolError, match="not a replicate results file"):
        pool_results([tmp_path / "junk.json"], tmp_path / "x")


# --- the parts that train, at toy size ----------------------------------------------------------


@pytest.fixture(scope="module")
def demos():
    from policy.evaluate_sim import collect_demonstrations

    return collect_demonstrations(["close_drawer"], 2, noise=0.1, image_size=64)


@pytest.mark.timeout(300)
def test_sft_with_selection_keeps_as_many_candidates_as_the_main_arm_checks(tmp_path, demos):
    from pipeline.bench.arms import train_sft_snapshots
    from pipeline.round.config import RoundConfig
    from pipeline.round.stages import challenger_candidates

    cfg = RoundConfig(tasks=("close_drawer",), sft_steps=6, challenger_snapshots=3)
    n = selection_candidates(cfg.challenger_snapshots, dyna=1)  # two legs of three snapshots
    art = train_sft_snapshots(demos, cfg, tmp_path / "policy", n, progress=False)
    got = challenger_candidates(art.path)
    assert [p.name for p in got] == [
        "step_0001",
        "step_0002",
        "step_0003",
        "step_0004",
        "step_0005",
        "policy",
    ]
    assert art.metrics["episodes"] == len(demos) and art.metrics["candidates"] == n
    with pytest.raises(ValueError, match="candidates must be in"):
        train_sft_snapshots(demos, cfg, tmp_path / "p2", 7, progress=False)


@pytest.mark.timeout(300)
def test_sim_rl_is_the_same_grpo_in_the_gapped_simulator_rewarded_by_ground_truth(demos):
    import torch

    from policy.config import VLAConfig
    from policy.evaluate_sim import SimRollouts, sim_start, train_grpo_in_sim
    from policy.grpo import GRPOConfig, Start
    from policy.sft import SFTConfig, train_sft

    policy, _ = train_sft(VLAConfig.from_preset("tiny"), demos, SFTConfig(steps=2), progress=False)
    cfg = GRPOConfig.from_preset(
        "tiny", group_size=2, starts_per_step=2, horizon_chunks=2, steps=1, device="cpu"
    )
    starts = [sim_start("close_drawer", 40_000), sim_start("close_drawer", 40_001)]
    sim = SimRollouts(policy, cfg, "sim_gap", parallel=3)
    try:
        rollouts, rewards = sim(starts, torch.Generator().manual_seed(0))
        # the policy decodes from the gapped simulator's frames, two chunks per rollout
        assert rollouts.observations.shape[:2] == (4, 2) and rollouts.videos.shape[1] == 3
        assert rollouts.group.tolist() == [0, 0, 1, 1] and set(rewards.tolist()) <= {0.0, 1.0}
        assert not torch.equal(rollouts.observations[0, 0], rollouts.observations[2, 0])
        with pytest.raises(ValueError, match="need a seed"):
            sim([Start(demos[0].frames[0], "close the drawer", "close_drawer")])
    finally:
        sim.close()
    history = train_grpo_in_sim(policy, starts, cfg, parallel=2, progress=False)
    assert len(history) == 1 and history[0].total_groups == 2
    with pytest.raises(ValueError, match="distractor_prob=0"):
        SimRollouts(policy, GRPOConfig.from_preset("tiny", distractor_prob=0.5), parallel=1)


# --- reusing a stage, and the real evaluation on a station ----------------------------------------


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


def test_a_dyna_leg_keeps_an_earlier_legs_policy_unless_its_check_did_better():
    from pipeline.bench.arms import better_checked

    def checked(name: str, successes: int | None) -> ModelArtifact:
        metrics = {} if successes is None else {"check_successes": successes}
        return ModelArtifact(Path(f"/policies/{name}"), name, metrics)

    first = checked("first", 38)
    assert better_checked(first, checked("dyna1", 35)) is first
    assert better_checked(first, checked("dyna1", 38)) is first  # ties: the earlier, as a check
    won = checked("dyna1", 39)
    assert better_checked(first, won) is won
    unchecked = checked("dyna1", None)  # no snapshot checks: the leg's own GRPO policy
    assert better_checked(checked("first", None), unchecked) is unchecked


def test_a_policy_two_arms_share_is_one_point_of_the_agreement():
    from pipeline.bench.report import agreement_points

    real = {
        arm: {
            "checkpoint_sha256": sha,
            "per_task": {"open_drawer": {"success_rate": rate}},
        }
        for arm, sha, rate in [("SFT", "a", 0.2), ("WG", "b", 0.5), ("WG+Dyna1", "b", 0.5)]
    }
    imagined = {"SFT": {"open_drawer": 0.3}, "WG": {"open_drawer": 0.6}}
    imagined["WG+Dyna1"] = imagined["WG"]
    points = agreement_points({"real": real, "imagined": imagined})
    assert points == [("open_drawer", 0.3, 0.2), ("open_drawer", 0.6, 0.5)]


def test_the_checks_unselected_snapshots_join_the_agreement_once_each(tmp_path):
    """Each checked policy that is not an evaluated arm is imagined from its own check episodes
    (not an earlier run's in the same folder, nor unfinished ones) and paired with its real
    success on them; an arm's policy and a policy two checks ran are not counted again."""
    import numpy as np

    from pipeline.bench.common import BenchContext
    from pipeline.bench.learning import imagine_snapshots
    from pipeline.bench.report import snapshot_points
    from pipeline.round.config import RoundConfig
    from robot_bridge.backends.base import Observation
    from robot_bridge.episodes import EpisodeMeta, EpisodeWriter
    from robot_bridge.spec import TASKS

    def episode(folder: Path, sha: str, seed: int, success: bool | None) -> None:
        meta = EpisodeMeta(
            f"{sha}-{seed}", "open_drawer", TASKS["open_drawer"].instruction, seed, "s", sha, "sim"
        )
        w = EpisodeWriter(folder, meta, image_shape=(8, 8, 3))
        w.append(Observation(np.zeros((8, 8, 3), np.uint8), np.zeros(7, np.float32), 0.0, 0), None)
        if success is not None:  # None: unfinished, as a killed run leaves it
            w.finish(success=success, success_source="sim_ground_truth", termination="max_steps")

    def check(name: str, policies: dict[str, str], outcomes: dict[str, list]) -> dict:
        dest = tmp_path / name
        for snap, results in outcomes.items():
            for seed, ok in enumerate(results, start=40_000):
                episode(dest / f"check_{snap}", policies[snap], seed, ok)
        return {
            "candidates": {},  # the successes per task: not what the agreement reads
            "chosen": "final",
            "seed": 40_000,
            "policies": {
                s: {"path": f"/policies/{sha}", "sha256": sha} for s, sha in policies.items()
            },
            "episodes": str(dest),
        }

    cfg = RoundConfig.from_preset("tiny", tasks=["open_drawer"], snapshot_check_episodes_per_task=4)
    report = {
        "snapshot_check": check(
            "wg", {"step_0020": "a", "final": "b"}, {"step_0020": [True] * 3 + [False], "final": []}
        ),
        "sft_select_snapshot_check": check(
            "sft",
            {"step_0010": "a", "step_0020": "c", "final": "b"},  # step_0010: the same policy as a
            {"step_0020": [True, False, False, None]},
        ),
    }
    episode(tmp_path / "sft" / "check_step_0020", "old", 40_000, True)  # an earlier run's policy
    ctx = BenchContext(None, tmp_path, cfg, report, progress=False)
    calls = []

    def imagine(path: Path, episodes: list[Path]) -> dict[str, float]:
        calls.append((path.name, len(episodes)))
        return {"open_drawer": {"a": 0.25, "c": 0.75}[path.name]}

    got = imagine_snapshots(ctx, {"b"}, imagine)  # b: an evaluated arm's policy
    assert calls == [("a", 4), ("c", 3)]
    assert list(got) == ["snapshot_check/step_0020", "sft_select_snapshot_check/step_0020"]
    assert got["sft_select_snapshot_check/step_0020"]["real_episodes"] == {"open_drawer": 3}
    assert snapshot_points(got) == [("open_drawer", 0.25, 0.75), ("open_drawer", 0.75, 1 / 3)]
