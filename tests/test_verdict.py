"""The bench's verdict rule on hand-made outcomes."""

import pytest

from pipeline.verdict import beyond, format_verdict, pooled_mcnemar, verdict

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
