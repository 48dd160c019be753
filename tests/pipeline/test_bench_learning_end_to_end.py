"""The whole learning bench through the CLI, one replicate at smoke size (slow): SFT, exploration,
world model, judge, GRPO (WG), one Dyna iteration (WG's runs on training seeds -> finetuned world
model and judge -> GRPO again: WG+Dyna1), the baselines with WG+Dyna1's real budget (SFT+select,
Iter-SFT, Sim-RL), then the real and imagined evaluation of every arm on the same seeds. Every GRPO
and every baseline keeps snapshots and a real check on the station picks one, each time.

A module fixture runs the bench once (``bench``) and, for the tests at the end of the module only,
once more in the same workdir (``bench_rerun``); each test checks one thing. The tests of the first
run come first so that they see its files before the re-run."""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.round.config import SMOKE_ROUND

REPO = Path(__file__).resolve().parents[2]
TINY = SMOKE_ROUND

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]  # the first test waits for the fixture

ARMS = ["SFT", "SFT+select", "Iter-SFT", "Sim-RL", "WG", "WG+Dyna1"]
BUDGET_COLUMNS = ("demos", "sft_choice", "attempts", "exploration", "dyna_runs", "checks")
BUDGET_CLAIMS = [
    "SFT+select checks == main checks",
    "Iter-SFT data == main's real episodes",
    "Sim-RL checks == one WG leg's",
]


@dataclass
class Bench:
    work: Path
    rep: Path
    cmd: list[str]
    done: subprocess.CompletedProcess
    report: dict | None  # the replicate's bench_learning.json after the first run
    summary: dict | None  # the summary over the replicates after the first run


@dataclass
class Rerun:
    again: subprocess.CompletedProcess
    rerun: dict | None  # the replicate's bench_learning.json after the re-run


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    work = tmp_path_factory.mktemp("learning_bench") / "bench"
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", "learning", "--workdir", str(work)]
    cmd += ["--preset", "smoke", "--eval-episodes", "1", "--dyna", "1", "--dyna-seed", "3"]
    cmd += ["--replicates", "1", "--eval-task-episodes", f"{TINY['tasks'][0]}=2"]
    cmd += ["--set", "explore_episodes_per_task=1", "--set", "grpo_steps=2"]
    cmd += ["--set", "challenger_snapshots=2", "--set", "snapshot_check_episodes_per_task=1"]
    overrides = {**TINY["grpo_overrides"], "task_sampling": "signal"}
    cmd += ["--set", f"grpo_overrides={json.dumps(overrides)}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1400, cwd=REPO)
    rep = work / "rep0"
    return Bench(
        work,
        rep,
        cmd,
        done,
        _json(rep / "bench_learning.json"),
        _json(work / "bench_learning.json"),
    )


@pytest.fixture(scope="module")
def bench_rerun(bench):
    """The same command again in the same workdir: it trains nothing again (the Dyna iteration's
    stages and the baselines' included) and the real evaluations and checks resume onto the same
    policies' finished episodes."""
    again = subprocess.run(bench.cmd, capture_output=True, text=True, timeout=1400, cwd=REPO)
    return Rerun(again, _json(bench.rep / "bench_learning.json"))


def _eval_counts() -> dict[str, int]:
    first = TINY["tasks"][0]  # 2 episodes there for every arm, 1 on the others
    return {t: 2 if t == first else 1 for t in TINY["tasks"]}


def _snapshot_checks(rep: Path) -> list[tuple[str, Path, Path, str, list[str]]]:
    """(report key prefix, policy dir, check episodes, arm, candidates) of every snapshot check.
    GRPO (and Sim-RL) keep step 1 and the final policy; SFT+select (the policies SFT's own run
    kept) and Iter-SFT as many candidates as WG+Dyna1's two legs checked."""
    two, four = ["step_0001", "final"], ["step_0001", "step_0002", "step_0004", "final"]
    return [
        ("", rep / "rl_policy", rep / "snapshot_check", "WG", two),
        ("dyna1_", rep / "dyna1" / "rl_policy", rep / "dyna1" / "snapshot_check", "WG+Dyna1", two),
        (
            "sft_select_",
            rep / "bootstrap" / "policy",  # SFT's own run: SFT kept the candidates
            rep / "sft_select" / "check",
            "SFT+select",
            four,
        ),
        ("iter_sft_", rep / "iter_sft" / "policy", rep / "iter_sft" / "check", "Iter-SFT", four),
        ("sim_rl_", rep / "sim_rl" / "policy", rep / "sim_rl" / "check", "Sim-RL", two),
    ]


def _expected_budget() -> dict[str, dict[str, int]]:
    """The real budget of every arm: demos + SFT choice + attempts + exploration + Dyna runs +
    checks; the baselines match WG+Dyna1's where the bench says they do."""
    n = len(TINY["tasks"])
    demos, explore = n * TINY["demo_episodes_per_task"], n * 1
    attempts = runs = n * TINY["collect_episodes_per_task"]  # SFT's greedy runs, WG's in Dyna 1
    leg_check = n * 2  # 2 candidates, 1 episode per task each
    choice = 0  # no SFT choice at the smoke preset (--sft-choice auto: the bench preset only)
    rows = {
        "SFT": (demos, choice, 0, 0, 0, 0),
        "SFT+select": (demos, choice, 0, 0, 0, 2 * leg_check),
        "Iter-SFT": (demos, choice, attempts, explore, runs, 4 * leg_check),
        "Sim-RL": (demos, choice, 0, 0, 0, leg_check),
        "WG": (demos, choice, attempts, explore, 0, leg_check),
        "WG+Dyna1": (demos, choice, attempts, explore, runs, 2 * leg_check),
    }
    return {
        a: dict(zip(BUDGET_COLUMNS, r, strict=True)) | {"total": sum(r)} for a, r in rows.items()
    }


def _main_arm_episodes(rep: Path) -> dict[str, Path]:
    """Where the main arm's real episodes of each budget column (but the checks) are on disk."""
    return {
        "demos": rep / "bootstrap" / "demos",
        "attempts": rep / "sft_attempts",
        "exploration": rep / "sft_explore",
        "dyna_runs": rep / "dyna1" / "episodes",
    }


# --- the first run: the report, the summary and the console ---------------------------------------


def test_the_bench_command_succeeds(bench):
    assert bench.done.returncode == 0, bench.done.stderr[-3000:]


def test_the_report_has_every_arm_real_and_imagined_with_wg_dyna1_the_main_arm(bench):
    report = bench.report
    assert list(report["real"]) == ARMS and report["main_arm"] == "WG+Dyna1"
    assert list(report["imagined"]) == ARMS and report["replicate"] == 0


def test_the_first_run_reuses_no_stage(bench):
    assert bench.report["reused_stages"] == []


def test_the_console_says_the_main_arm_beats_sft_beyond_the_intervals(bench):
    assert "| WG+Dyna1 - SFT | beyond 95% CIs | episodes |" in bench.done.stdout
    assert "WG+Dyna1 beats SFT beyond the 95% intervals on " in bench.done.stdout


def test_the_summary_over_replicates_has_the_arms_the_replicate_and_its_budget(bench):
    summary = bench.summary
    assert summary["arms"] == ARMS and summary["main_arm"] == "WG+Dyna1"
    assert len(summary["replicates"]) == 1 and summary["settings"]["replicates"] == 1
    assert summary["budget"] == [bench.report["budget"]]


def test_the_replicates_results_file_pools_into_the_same_report_through_the_cli(bench, tmp_path):
    results = bench.rep / "results.json"
    assert f"replicate 0's results: {results}" in bench.done.stdout
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", "learning", "--pool", str(results)]
    cmd += ["--workdir", str(tmp_path / "pooled")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    pooled = json.loads((tmp_path / "pooled" / "bench_learning.json").read_text())
    for key in ("arms", "main_arm", "per_replicate", "pooled", "budget", "verdict"):
        assert pooled[key] == bench.summary[key], key
    assert pooled["pooled_from"] == [str(results)]
    assert (tmp_path / "pooled" / "bench_learning.png").stat().st_size > 10_000


def test_the_summary_markdown_has_a_row_per_task_and_the_budget_and_a_figure(bench):
    markdown = (bench.work / "bench_learning.md").read_text()  # a row per task, one of the budget
    assert markdown.count("| WG+Dyna1 |") == len(TINY["tasks"]) + 1
    assert (bench.work / "bench_learning.png").stat().st_size > 0


# --- the real evaluation and the Dyna iteration ---------------------------------------------------


def test_every_arm_is_evaluated_on_as_many_episodes_per_task(bench):
    # every arm on the same evaluation seeds, as many episodes per task
    counts = _eval_counts()
    assert bench.report["eval_episodes_per_task"] == counts
    for n in ARMS:
        per_task = bench.report["real"][n]["per_task"]
        assert {t: r["labelled"] for t, r in per_task.items()} == counts, n


def test_the_sft_arm_is_the_bootstrapped_policy(bench):
    from pipeline.round.stages import checkpoint_sha256

    sft_sha = checkpoint_sha256(bench.rep / "bootstrap" / "policy")
    assert bench.report["real"]["SFT"]["checkpoint_sha256"] == sft_sha


def test_the_dyna_iteration_ran_wg_on_training_seeds(bench):
    from robot_bridge.episodes import list_episodes, read_episode

    dyna = [read_episode(p) for p in list_episodes(bench.rep / "dyna1" / "episodes")]
    assert len(dyna) == len(TINY["tasks"]) * TINY["collect_episodes_per_task"]
    assert all(30_000 <= e.seed < 40_000 for e in dyna)  # training seeds, not the evaluation's
    assert {e.policy_sha256 for e in dyna} == {bench.report["real"]["WG"]["checkpoint_sha256"]}


def test_the_dyna_world_model_warm_starts_for_the_finetune_step_count(bench):
    assert bench.report["dyna1_world_model"]["steps"] == 3  # warm start: the finetune step count


def test_the_final_grpo_is_the_dyna_iterations_with_its_seed(bench):
    report = bench.report
    assert report["dyna_seed"] == 3 and report["grpo"]["grpo_seed"] == 3  # the final is Dyna's


# --- the snapshot checks: every candidate on the same check seeds ----------------------------------


def test_every_snapshot_check_ran_each_of_its_candidates_on_every_task(bench):
    from robot_bridge.episodes import list_episodes, read_episode_header

    for prefix, _, check_dir, name, candidates in _snapshot_checks(bench.rep):
        check = bench.report[f"{prefix}snapshot_check"]
        assert list(check["candidates"]) == candidates, name
        checked = [read_episode_header(p) for p in list_episodes(check_dir)]
        assert len(checked) == len(TINY["tasks"]) * len(candidates), name


def test_every_snapshot_check_ran_on_check_seeds(bench):
    from robot_bridge.episodes import list_episodes, read_episode_header

    for _, _, check_dir, name, _ in _snapshot_checks(bench.rep):
        checked = [read_episode_header(p) for p in list_episodes(check_dir)]
        assert all(40_000 <= e.seed < 50_000 for e in checked), name


def test_the_evaluated_policy_is_the_candidate_with_most_real_successes_earliest_on_ties(bench):
    """Each check's choice; WG+Dyna1 evaluates the better of its own leg's choice and WG's (the
    best of every snapshot both legs' checks ran, the earlier leg's on a tie)."""
    from pipeline.round.stages import checkpoint_sha256

    best = {}
    for prefix, policy_dir, _, name, _ in _snapshot_checks(bench.rep):
        check = bench.report[f"{prefix}snapshot_check"]
        totals = {n: sum(c.values()) for n, c in check["candidates"].items()}
        assert check["chosen"] == max(totals, key=totals.get)  # max keeps the first of ties
        chosen = (
            policy_dir.parent / (policy_dir.name + "_snapshots") / check["chosen"]
            if check["chosen"] != "final"
            else policy_dir
        )
        best[name] = (totals[check["chosen"]], checkpoint_sha256(chosen))
    if best["WG+Dyna1"][0] <= best["WG"][0]:
        best["WG+Dyna1"] = best["WG"]
    for name, (_, sha) in best.items():
        assert bench.report["real"][name]["checkpoint_sha256"] == sha, name
    kept = bench.report["dyna1_kept"]
    assert (kept["leg"] == "first") == (best["WG+Dyna1"] == best["WG"])
    assert kept["check_successes"] == best["WG+Dyna1"][0]


def test_the_console_prints_the_snapshot_checks(bench):
    assert "snapshot check (real successes per task on check seeds; chosen" in bench.done.stdout


# --- the real budget of every arm, as counted from the files ---------------------------------------


def test_every_arms_budget_is_what_the_bench_says(bench):
    assert bench.report["budget"] == _expected_budget()


def test_the_main_arms_budget_counts_its_episodes_on_disk(bench):
    from robot_bridge.episodes import list_episodes

    expected = _expected_budget()
    for column, folder in _main_arm_episodes(bench.rep).items():
        assert len(list_episodes(folder)) == expected["WG+Dyna1"][column], column


def test_the_console_prints_every_arms_budget(bench):
    for arm, b in _expected_budget().items():
        line = f"  {arm}: " + " + ".join(str(b[c]) for c in BUDGET_COLUMNS) + f" = {b['total']}"
        assert line in bench.done.stdout, line


def test_every_budget_claim_is_met_in_the_report_the_summary_and_the_console(bench):
    assert bench.report["budget_claims"] == dict.fromkeys(BUDGET_CLAIMS, True)
    assert bench.summary["budget_claims"] == [bench.report["budget_claims"]]
    stdout = bench.done.stdout
    assert all(f"  ok: {c}" in stdout for c in BUDGET_CLAIMS) and "  NOT MET: " not in stdout


def test_iter_sft_trains_on_every_real_success_of_the_main_arm(bench):
    from robot_bridge.episodes import list_episodes, read_episode_header

    # Iter-SFT's data: the real successes among the demonstrations and WG+Dyna1's episodes
    rep = bench.rep
    main_folders = [
        *_main_arm_episodes(rep).values(),
        rep / "snapshot_check",
        rep / "dyna1" / "snapshot_check",
    ]
    successes = sum(
        bool(read_episode_header(p).success) for f in main_folders for p in list_episodes(f)
    )
    assert bench.report["iter_sft_data"]["episodes"] == successes


def test_every_unselected_snapshot_is_one_more_policy_of_the_agreement(bench):
    """The checks' snapshots that no arm evaluates join the agreement once per distinct policy,
    with their real success on their own check episodes."""
    from pipeline.round.stages import checkpoint_sha256

    report, tasks = bench.report, TINY["tasks"]
    arms = {r["checkpoint_sha256"] for r in report["real"].values()}
    shas = set()
    for prefix, *_ in _snapshot_checks(bench.rep):
        for p in report[f"{prefix}snapshot_check"]["policies"].values():
            assert checkpoint_sha256(p["path"]) == p["sha256"]
            shas.add(p["sha256"])
    snapshots = report["imagined_snapshots"]
    assert sorted(s["sha256"] for s in snapshots.values()) == sorted(shas - arms)
    for key, s in snapshots.items():
        check, name = key.split("/")
        successes = report[check]["candidates"][name]
        assert s["real"] == {t: successes[t] / 1 for t in tasks}, key  # one check episode each
        assert s["real_episodes"] == {t: 1 for t in tasks}, key
        assert set(s["imagined"]) == set(tasks), key
    with_snapshots = report["agreement_with_snapshots"]["pooled"]["points"]
    assert with_snapshots == report["agreement"]["pooled"]["points"] + len(tasks) * len(snapshots)


# --- a re-run in the same workdir (these tests come last: the re-run rewrites the reports) --------


def test_a_rerun_succeeds(bench_rerun):
    assert bench_rerun.again.returncode == 0, bench_rerun.again.stderr[-3000:]


def test_a_rerun_trains_nothing_again(bench_rerun):
    trained = ["demos + SFT", "world model", "judge", "GRPO"]
    assert bench_rerun.rerun["reused_stages"] == [
        *trained,
        *(f"Dyna 1: {s}" for s in trained[1:]),
        "Iter-SFT: SFT on demos + real successes",
        "Sim-RL: GRPO in sim_gap",
    ]


def test_a_rerun_reports_the_same_results_budget_and_snapshot_checks(bench, bench_rerun):
    report, rerun = bench.report, bench_rerun.rerun
    for key in ("real", "budget", "budget_claims", "iter_sft_data", "verdict"):
        assert rerun[key] == report[key], key
    assert all(rerun[k] == report[k] for k in report if k.endswith("snapshot_check"))


def test_a_rerun_leaves_the_pooled_summary_as_it_was(bench, bench_rerun):
    pooled = json.loads((bench.work / "bench_learning.json").read_text())["pooled"]
    assert pooled == bench.summary["pooled"]
