"""The bench's verdict rule on hand-made outcomes."""

import pytest

from pipeline.round.statistics import beyond, format_verdict, pooled_mcnemar, verdict

TASKS = ["open_drawer", "close_drawer", "eggplant_in_sink", "eggplant_in_basket"]


def outcomes(successes: dict[str, int], n: int = 50, seed0: int = 0) -> dict:
    """``successes[task]`` successes out of ``n`` episodes per task, on seeds seed0..seed0+n-1."""
    return {(t, seed0 + i): i < successes.get(t, 0) for t in TASKS for i in range(n)}


def test_overlapping_intervals_are_not_a_win():
    # 6/50 against 0/50: Wilson [5.6, 23.8]% overlaps [0, 7.1]%, so not beyond the intervals
    assert beyond(outcomes({"eggplant_in_sink": 6}), outcomes({}), "eggplant_in_sink") == 0
    assert beyond(outcomes({"open_drawer": 30}), outcomes({"open_drawer": 5}), "open_drawer") == 1
    assert beyond(outcomes({"open_drawer": 5}), outcomes({"open_drawer": 30}), "open_drawer") == -1


def test_pooled_mcnemar_sums_discordant_pairs_within_replicates_only():
    arm = [outcomes({"open_drawer": 10}), outcomes({"open_drawer": 10})]
    base = [outcomes({"open_drawer": 4}), outcomes({"open_drawer": 4})]
    r = pooled_mcnemar(arm, base, "open_drawer")
    assert (r["pairs"], r["arm_only"], r["baseline_only"]) == (100, 12, 0)
    assert r["p_value"] == pytest.approx(0.5**12) and r["beats"]
    # 3 vs 1 discordant pairs is no evidence
    weak = pooled_mcnemar([outcomes({"close_drawer": 3})], [outcomes({})], "close_drawer")
    assert weak["p_value"] == pytest.approx(0.125) and not weak["beats"]
    with pytest.raises(ValueError, match="not paired"):
        pooled_mcnemar([outcomes({}, seed0=0)], [outcomes({}, seed0=100)], "open_drawer")


def _arms(rl_rates: list[dict]) -> dict:
    reps = len(rl_rates)
    return {
        "World-Gymnast": [outcomes(r) for r in rl_rates],
        "SFT": [outcomes({"open_drawer": 5, "close_drawer": 15})] * reps,
        "SFT+selection": [outcomes({"open_drawer": 6, "close_drawer": 16})] * reps,
        "Iter-SFT": [outcomes({"open_drawer": 8, "close_drawer": 18})] * reps,
        "SimRL": [outcomes({"open_drawer": 10, "close_drawer": 30})] * reps,
    }


def _verdict(arms: dict) -> dict:
    return verdict(arms, TASKS, "World-Gymnast", ["SFT", "SFT+selection", "Iter-SFT"], ["SimRL"])


def test_the_target_is_met_only_when_every_replicate_wins_two_tasks():
    strong = {"open_drawer": 30, "close_drawer": 45, "eggplant_in_sink": 2}
    v = _verdict(_arms([strong, strong, strong]))
    assert v["met"] and "TARGET MET" in format_verdict(v)
    # one replicate of three wins only one task beyond the intervals: not met, however strong the pool
    one_task = {"open_drawer": 30, "close_drawer": 20}
    v = _verdict(_arms([strong, strong, one_task]))
    assert not v["met"] and v["interval_target_per_replicate"]["SFT"] == [True, True, False]
    assert "TARGET NOT MET" in format_verdict(v)


def test_the_simulator_baseline_is_judged_pooled():
    # beyond SFT's intervals everywhere, but level with the simulator RL: the pooled target fails
    level = {"open_drawer": 30, "close_drawer": 45}
    arms = _arms([level] * 3)
    arms["SimRL"] = [outcomes(level)] * 3
    v = _verdict(arms)
    assert all(all(x) for x in v["interval_target_per_replicate"].values())
    assert v["pooled_target"] == {"SimRL": False} and not v["met"]
    with pytest.raises(ValueError, match="no outcomes for arm 'Iter-SFT'"):
        verdict({"World-Gymnast": [], "SFT": []}, TASKS, "World-Gymnast", ["Iter-SFT"])


def test_the_learning_bench_report_prints_the_verdict_and_its_evidence():
    from pipeline.bench.report import format_report
    from pipeline.round.records import Evaluation
    from robot_bridge.dispatch import TaskResult

    def ev(rates):
        outs = outcomes(rates)
        per_task = {}
        for t in TASKS:
            mine = [v for (task, _), v in outs.items() if task == t]
            per_task[t] = TaskResult(t, len(mine), sum(mine), len(mine))
        return Evaluation("a" * 64, [], per_task, outs)

    sft, rl = ev({"open_drawer": 5}), ev({"open_drawer": 30, "close_drawer": 45})
    report = {
        "real": {"SFT": sft.to_dict(), "RL": rl.to_dict()},
        "verdict": verdict({"SFT": [sft.outcomes], "RL": [rl.outcomes]}, TASKS, "RL", ["SFT"]),
        "imagined": {"SFT": {t: 0.1 for t in TASKS}, "RL": {t: 0.2 for t in TASKS}},
        "world_model": {"rollout_psnr_over_copy_first_min_db": -1.25, "rollout_horizon": 20.0},
        "judge": {
            "heldout_f1": 0.9,
            "heldout_tp": 9,
            "heldout_fn": 1,
            "heldout_fp": 1,
            "heldout_tn": 29,
        },
        "judge_on_imagined": {
            "f1": 0.5,
            "precision": 1.0,
            "recall": 0.3,
            "tp": 3,
            "fp": 0,
            "fn": 7,
            "tn": 30,
        },
        "pearson_r": 0.5,
        "imagined_fps_b8": 40.0,
        "grpo": {"seconds_per_step": 18.0},
        "peak_rss_gb": 2.0,
        "timings_s": {"SFT": 100.0},
        "reused_stages": [],
    }
    text = format_report(report)
    assert "RL beats SFT beyond the 95% intervals on 2 of 4 tasks" in text
    assert "TARGET MET" in text  # the rule: >= 2 tasks beyond SFT's intervals in every replicate
    assert "over 10 successes and 30 failures" in text
    assert "-1.2 dB over 20 steps" in text


def test_the_issue_target_needs_every_baseline_and_prints_itself():
    from pipeline.round.statistics import target_verdict

    strong = {"open_drawer": 30, "close_drawer": 45, "eggplant_in_sink": 2}
    arms = _arms([strong] * 3)
    arms["Sim-RL"] = arms.pop("SimRL")
    arms["SFT+select"] = arms["SFT+selection"]
    v = target_verdict(arms, TASKS, "World-Gymnast")
    assert v["met"] and v["missing_arms"] == []
    assert set(v["interval_target_per_replicate"]) == {"SFT", "SFT+select", "Iter-SFT"}
    assert set(v["pooled_target"]) == {"Sim-RL"}
    text = format_verdict(v)
    assert "target: the main arm beats SFT, SFT+select and Iter-SFT" in text
    assert "TARGET MET" in text
    # stretch: two tasks are not all four; SFT's hardest solved task is open drawer (5/50)
    assert not v["stretch"]["all_tasks"]
    assert v["stretch"]["hardest_sft_task"] == {
        "task": "open_drawer",
        "sft": 0.1,
        "arm": 0.6,
        "met": True,
    }
    assert "hardest task SFT solves (open_drawer, SFT 10% pooled): 60%, at least 2x SFT" in text
    # the same figures without Iter-SFT run: not met, and it says which arm is missing
    del arms["Iter-SFT"]
    v = target_verdict(arms, TASKS, "World-Gymnast")
    assert not v["met"] and v["missing_arms"] == ["Iter-SFT"]
    assert "not run, so the target cannot be met: Iter-SFT" in format_verdict(v)
    # one replicate of three wins a single task against SFT+select: not met
    arms = _arms([strong, strong, {"open_drawer": 30}])
    arms["Sim-RL"], arms["SFT+select"] = arms.pop("SimRL"), arms["SFT+selection"]
    v = target_verdict(arms, TASKS, "World-Gymnast")
    assert v["interval_target_per_replicate"]["SFT+select"] == [True, True, False]
    assert not v["met"]
