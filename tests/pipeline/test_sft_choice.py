"""The learning bench's fixed rules: which SFT recipe the bench starts from (demonstrations and
SFT steps, chosen by a rule on check seeds, in code), and how imagined and real success are
compared (Pearson r within each task beside the pooled one). Rules on hand-made figures; the
choice on a real sim station."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from pipeline.bench.budget import Ledger, arm_keys, category, wg_keys
from pipeline.bench.report import agreement, agreement_points
from pipeline.bench.sft_choice import (
    BAND,
    BUDGETS,
    RULE_CANDIDATES,
    Candidate,
    band_distance,
    check_recipes,
    choose,
    choose_per_task,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _c(n: int, k: int, of: int = 32) -> Candidate:
    return Candidate(n, k, of)


def test_the_fewest_demonstrations_in_the_band_win():
    lo, hi = BAND
    assert band_distance(lo) == band_distance(hi) == band_distance((lo + hi) / 2) == 0.0
    assert band_distance(lo - 0.05) == pytest.approx(0.05)
    # 8 demos: 0/32 (no signal for GRPO); 16: 6/32 in the band; 24: 12/32 in it too
    assert choose([_c(8, 0), _c(16, 6), _c(24, 12)]).demos_per_task == 16
    # the order the candidates come in does not matter
    assert choose([_c(24, 12), _c(16, 6), _c(8, 0)]).demos_per_task == 16


def test_with_none_in_the_band_the_closest_wins_and_ties_go_to_fewer_demonstrations():
    # every candidate saturated: the least saturated
    assert choose([_c(8, 30), _c(16, 31), _c(24, 32)]).demos_per_task == 8
    # every candidate too weak: the strongest
    assert choose([_c(8, 0), _c(16, 1), _c(24, 2)]).demos_per_task == 24
    # an exact tie (the same check success): the fewer demonstrations win
    assert choose([_c(8, 2), _c(16, 2)]).demos_per_task == 8
    with pytest.raises(ValueError, match="no SFT candidates"):
        choose([])


def _t(n: int, **per_task: tuple[int, int]) -> Candidate:
    return Candidate(
        n, sum(k for k, _ in per_task.values()), sum(m for _, m in per_task.values()), per_task
    )


def test_the_per_task_rule_wants_room_on_two_tasks_where_the_pooled_rule_saw_none():
    # the first final-range replicate's check (8 per task): the pooled rule took 8 demos (15/32
    # in its band) with both drawers at the ceiling and both eggplant tasks at 0
    first = [
        _t(8, open=(7, 8), close=(8, 8), sink=(0, 8), basket=(0, 8)),
        _t(16, open=(8, 8), close=(6, 8), sink=(0, 8), basket=(0, 8)),
        _t(24, open=(6, 8), close=(4, 8), sink=(0, 8), basket=(0, 8)),
    ]
    assert choose(first).demos_per_task == 8
    assert [c.tasks_with_room() for c in first] == [0, 0, 1]
    # none has room on two tasks: the most tasks with room
    assert choose_per_task(first).demos_per_task == 24
    # the fewest demonstrations with room on two tasks, whatever comes after
    four = _t(4, open=(2, 12), close=(7, 12), sink=(0, 12), basket=(0, 12))
    assert four.tasks_with_room() == 2
    assert choose_per_task([*first, four]).demos_per_task == 4
    # ties in tasks with room: the most tasks with signal (some success, not all), then the
    # pooled band's distance, then fewer demonstrations
    a = _t(8, open=(1, 8), close=(8, 8))  # 9/16 pooled, 0.06 above the band
    b = _t(16, open=(2, 8), close=(6, 8))  # 8/16 pooled, in the band
    c = _t(24, open=(2, 8), close=(7, 8))  # 9/16, as a
    d = _t(32, open=(1, 8), close=(6, 8))  # 7/16, in the band
    assert a.tasks_with_room() == b.tasks_with_room() == c.tasks_with_room() == 1
    assert [x.tasks_with_signal() for x in (a, b, c, d)] == [1, 2, 2, 2]
    assert choose_per_task([c, b, a]).demos_per_task == 16
    assert choose_per_task([c, a]).demos_per_task == 24  # a's close drawer is at the ceiling
    assert choose_per_task([d, c]).demos_per_task == 32  # both with signal: the band
    assert choose_per_task([d, b]).demos_per_task == 16  # both in the band: fewer demos
    with pytest.raises(ValueError, match="no SFT candidates"):
        choose_per_task([])


def test_the_budget_rule_keeps_the_least_sft_with_room_on_two_tasks():
    def t(n, steps, **per_task):
        return dataclasses.replace(_t(n, **per_task), sft_steps=steps)

    # this machine's check of one demonstration draw (12 per task): at 500 steps the drawers sit
    # near the ceiling and the eggplant tasks at 0; 24 per task at 4000 steps gives both eggplant
    # tasks room (the open drawer's 8/12 is above the room's top)
    few = t(8, 500, open=(10, 12), close=(12, 12), sink=(0, 12), basket=(0, 12))
    longer = t(24, 2000, open=(10, 12), close=(12, 12), sink=(0, 12), basket=(0, 12))
    room = t(24, 4000, open=(8, 12), close=(12, 12), sink=(3, 12), basket=(5, 12))
    most = t(32, 6000, open=(6, 12), close=(12, 12), sink=(5, 12), basket=(6, 12))
    assert [c.tasks_with_room() for c in (few, longer, room, most)] == [0, 0, 2, 3]
    # the least SFT with room on two tasks, whatever the order given and whatever comes after
    assert choose_per_task([most, room, longer, few]) is room
    # a development draw where every recipe had room on one task only: the smallest succeeded
    # at close drawer alone, the next ones also sometimes at open drawer and eggplant -> sink
    dev = [
        t(8, 500, open=(0, 12), close=(6, 12), sink=(0, 12), basket=(0, 12)),
        t(24, 2000, open=(9, 12), close=(12, 12), sink=(5, 12), basket=(0, 12)),
        t(24, 4000, open=(10, 12), close=(12, 12), sink=(2, 12), basket=(0, 12)),
        t(32, 6000, open=(11, 12), close=(12, 12), sink=(8, 12), basket=(0, 12)),
    ]
    assert [c.tasks_with_room() for c in dev] == [1, 1, 1, 0]
    assert [c.tasks_with_signal() for c in dev] == [1, 2, 2, 2]
    assert choose_per_task(dev) is dev[2]  # 24/48 pooled is in the band, 26/48 above it
    # less SFT means fewer steps first, then fewer demonstrations
    assert [c.budget for c in sorted([most, room, few, longer], key=lambda c: c.budget)] == [
        (500, 8),
        (2000, 24),
        (4000, 24),
        (6000, 32),
    ]
    # the rule's candidates grow in SFT, least first, and the config's steps fill a bare count
    assert check_recipes(BUDGETS, 500) == list(BUDGETS)
    assert check_recipes(RULE_CANDIDATES["per_task"], 300) == [
        (4, 300),
        (8, 300),
        (16, 300),
        (24, 300),
    ]
    assert check_recipes([(24, 4000), (8, None)], 500) == [(8, 500), (24, 4000)]
    for bad in ([], [(8, 500), (8, None)], [(0, 500)], [(8, 0)]):
        with pytest.raises(ValueError, match="SFT candidates must be distinct"):
            check_recipes(bad, 500)


def test_every_arm_is_charged_the_sft_choice_checks_and_nothing_else_changes():
    ledger = Ledger()
    ledger.add("demos", [Path(f"/d/{i}") for i in range(8)])
    ledger.add("sft_choice", [Path(f"/c/{i}") for i in range(24)])
    assert category("sft_choice") == "sft_choice"
    main = wg_keys(0, checked=False)
    for arm in ("SFT", "SFT+select", "Iter-SFT", "Sim-RL", "WG"):
        keys = arm_keys(arm, main, checked=False, sft_choice=True)
        assert keys == [*arm_keys(arm, main, checked=False), "sft_choice"]
    assert ledger.budget(arm_keys("SFT", main, False, True))["sft_choice"] == 24
    assert ledger.budget(arm_keys("SFT", main, False, True))["total"] == 32


def _report(imagined: dict, real: dict) -> dict:
    return {
        "imagined": imagined,
        "real": {
            arm: {"per_task": {t: {"success_rate": v} for t, v in tasks.items()}}
            for arm, tasks in real.items()
        },
    }


def test_agreement_is_reported_within_each_task_beside_the_pooled_figure():
    # close drawer: imagined tracks real; open drawer: imagined runs against real. Pooled, the
    # task levels (open near 0, close near 1) make r look strong: what a per-task r exposes.
    arms = ["SFT", "SFT+select", "Iter-SFT", "WG"]
    imagined = {
        a: {"open_drawer": 0.1 * i, "close_drawer": 0.7 + 0.1 * i} for i, a in enumerate(arms)
    }
    real = {
        a: {"open_drawer": 0.1 * (3 - i), "close_drawer": 0.6 + 0.1 * i} for i, a in enumerate(arms)
    }
    got = agreement(agreement_points(_report(imagined, real)))
    assert got["per_task"]["close_drawer"] == {"r": pytest.approx(1.0), "points": 4}
    assert got["per_task"]["open_drawer"] == {"r": pytest.approx(-1.0), "points": 4}
    assert got["pooled"]["points"] == 8
    assert got["pooled"]["r"] > 0.8  # carried by the difference between the tasks
    # fewer than 3 policies, or no spread, leaves r undefined rather than made up
    two = agreement([("t", 0.1, 0.2), ("t", 0.3, 0.4)])
    flat = agreement([("t", 0.5, 0.1), ("t", 0.5, 0.2), ("t", 0.5, 0.3)])
    assert math.isnan(two["per_task"]["t"]["r"]) and math.isnan(flat["per_task"]["t"]["r"])


@pytest.mark.timeout(600)
def test_sft_choice_on_a_station_trains_each_recipe_checks_it_and_keeps_the_rules_choice(
    tmp_path, monkeypatch
):
    from pipeline.bench import sft_choice
    from pipeline.bench.common import BenchContext
    from pipeline.bench.sft_choice import CHECK_OFFSET, choose_sft
    from pipeline.round.config import RoundConfig
    from robot_bridge.client import StationClient
    from robot_bridge.episodes import read_episode_header
    from robot_bridge.launch import StationProcess

    cfg = RoundConfig.from_preset("smoke", tasks=["open_drawer"], sft_steps=3, device="cpu")
    with (
        StationProcess("sim", episodes_dir=tmp_path / "station") as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        ctx = BenchContext(client, tmp_path / "rep0", cfg, {}, progress=False)
        art = choose_sft(ctx, ((2, None), (3, None)), check_episodes=2, rule="per_task")
        report = ctx.report["sft_choice"]
        found = [
            Candidate(
                c["demos_per_task"],
                c["successes"],
                c["episodes"],
                {t: tuple(v) for t, v in c["per_task"].items()},
            )
            for c in report["candidates"]
        ]
        assert [c.demos_per_task for c in found] == [2, 3] and all(c.episodes == 2 for c in found)
        assert all(set(c.per_task) == {"open_drawer"} for c in found)
        assert report["rule"] == "per_task"
        chosen = choose_per_task(found).demos_per_task
        assert report["chosen"] == chosen == ctx.cfg.demo_episodes_per_task
        assert art.path == tmp_path / "rep0" / "bootstrap" / f"policy_{report['chosen']}"
        # each candidate's check: its own policy on the same two seeds, charged as sft_choice
        checks = ctx.ledger.paths(["sft_choice"])
        headers = [read_episode_header(p) for p in checks]
        assert len(headers) == 4
        assert {h.seed for h in headers} == {cfg.seed + CHECK_OFFSET, cfg.seed + CHECK_OFFSET + 1}
        assert len({h.policy_sha256 for h in headers}) == 2
        # demonstrations are prefixes of one draw: 3 per task, not 2 + 3
        demos = list((tmp_path / "rep0" / "bootstrap" / "demos").rglob("*.h5"))
        assert len(demos) == 3
        # a second run reuses both trained candidates and re-runs no check episode
        again = BenchContext(client, tmp_path / "rep0", cfg, {}, progress=False)
        assert (
            choose_sft(again, ((2, None), (3, None)), check_episodes=2, rule="per_task").sha256
            == art.sha256
        )
        assert again.reused == ["demos + SFT (2 per task)", "demos + SFT (3 per task)"]
        assert sorted(again.ledger.paths(["sft_choice"])) == sorted(checks)
        # SFT steps as a candidate: its own record and policy beside the config-steps one, the
        # chosen recipe's steps in the config every later stage reads; and the per-task rules
        # stop at the first recipe with room on enough tasks (here every recipe qualifies)
        monkeypatch.setattr(sft_choice, "MIN_ROOM_TASKS", 0)
        steps = BenchContext(client, tmp_path / "rep0", cfg, {}, progress=False)
        got = choose_sft(steps, ((2, 4), (3, 4)), check_episodes=2, rule="budget")
        assert steps.report["sft_choice"]["chosen"] == 2
        assert steps.report["sft_choice"]["chosen_sft_steps"] == 4
        assert [c["demos_per_task"] for c in steps.report["sft_choice"]["candidates"]] == [2]
        assert (steps.cfg.demo_episodes_per_task, steps.cfg.sft_steps) == (2, 4)
        assert got.path == tmp_path / "rep0" / "bootstrap" / "policy_2_s4"
        assert got.sha256 != art.sha256
        assert (tmp_path / "rep0" / "sft_2_s4.stage.json").is_file()
        assert not (tmp_path / "rep0" / "sft_3_s4.stage.json").exists()
        assert sft_choice.chosen_record(tmp_path / "rep0", 2, 4) == "sft_2_s4"
        assert sft_choice.chosen_record(tmp_path / "rep0", 3, 3) == "sft_3"
        assert sft_choice.chosen_record(tmp_path / "rep0", 3, 4) == ""


def test_the_sft_choice_option_reads_recipes_and_refuses_garbage():
    from pipeline.bench.learning import sft_recipes_arg

    assert sft_recipes_arg("24:4000,8", "tiny") == ((24, 4000), (8, None))
    assert sft_recipes_arg("auto", "bench") == BUDGETS
    assert sft_recipes_arg("auto", "bench", "per_task") == RULE_CANDIDATES["per_task"]
    assert sft_recipes_arg("auto", "tiny") == sft_recipes_arg("off", "bench") == ()
    with pytest.raises(SystemExit, match="N\\[:STEPS\\]"):
        sft_recipes_arg("24:many", "bench")
