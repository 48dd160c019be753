"""``gymnast bench capabilities``: its settings are checked before anything runs, its verdict is
the intervals rule, its tables come out of hand-made cells, a replicate's config is its own; and
(slow) the whole command at smoke size on a real simulated station, then again in the same folder
(everything reused)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.bench import capabilities as cap
from pipeline.round.config import RoundConfig

REPO = Path(__file__).resolve().parents[2]
SMOKE_TASKS = ["open_drawer", "close_drawer"]


def test_bad_settings_are_refused_before_anything_runs():
    bad = [
        ({"rows": ("distract", "vision")}, "rows must be some of"),
        ({"rows": ()}, "rows must be some of"),
        ({"eval_range": "test"}, "eval_range must be one of"),
        ({"eval_episodes": 0}, "eval_episodes must be >= 1"),
        ({"distractor_prob": 0.0}, "distractor_prob must be in"),
        ({"paraphrase_prob": 1.5}, "paraphrase_prob must be in"),
        ({"ttt_scene": "distractors"}, "ttt_scene must be one of"),
        ({"ttt_from": "Sim-RL"}, "ttt_from must be SFT or WG"),
        ({"ttt_steps": 0}, "ttt_steps must be >= 1"),
    ]
    for fields, match in bad:
        with pytest.raises(ValueError, match=match):
            cap.run(Path("/nonexistent/rep0"), RoundConfig(), cap.Options(**fields))


def test_the_command_is_reachable_from_the_cli_with_its_options():
    from pipeline.cli import build_parser

    args = build_parser().parse_args(
        ["bench", "capabilities", "--from", "/w/rep1", "--rows", "distract,ttt"]
        + ["--eval-episodes", "3", "--ttt-scene", "camera", "--ttt-from", "SFT"]
    )
    assert args.func.__name__ == "cmd_bench" and args.bench_command == "capabilities"
    assert (args.rep_dir, args.rows, args.eval_episodes) == (Path("/w/rep1"), "distract,ttt", 3)
    assert (args.ttt_scene, args.ttt_from, args.distractor_prob) == ("camera", "SFT", 0.5)


def _art(name: str):
    from pipeline.round.records import ModelArtifact

    return ModelArtifact(Path(f"/x/{name}"), name * 4, {})


def test_the_verdict_is_beyond_the_95_percent_intervals_or_no_difference():
    per_task = {
        "SFT": {"a": cap.cell(2, 20), "b": cap.cell(10, 20)},
        "WG": {"a": cap.cell(15, 20), "b": cap.cell(11, 20)},
        "WG-Distract": {"a": cap.cell(19, 20), "b": cap.cell(1, 20)},
    }
    arms = {a: _art(a) for a in per_task}
    pairs = [("WG-Distract", "SFT"), ("WG-Distract", "WG"), ("WG", "SFT")]
    g = cap.row_group("t", cap.DISTRACTORS, arms, per_task, pairs)
    assert g["arms"] == list(arms) and list(g["tasks"]) == ["a", "b"]
    assert g["tasks"]["a"]["verdict"] == {
        "WG-Distract vs SFT": "better",
        "WG-Distract vs WG": "no difference beyond the intervals",  # [0.76,0.99] vs [0.53,0.89]
        "WG vs SFT": "better",
    }
    assert g["tasks"]["b"]["verdict"]["WG-Distract vs SFT"] == "worse"
    wg = g["tasks"]["b"]["arms"]["WG"]
    assert (wg["successes"], wg["n"]) == (11, 20)
    lo, hi = wg["ci95"]
    assert 0.34 < lo < 0.35 and 0.73 < hi < 0.75  # Wilson, 11/20
    table = "\n".join(cap.format_table(g))
    assert "| task | SFT | WG | WG-Distract | WG-Distract vs SFT |" in table
    assert "| a | 2/20 [3, 30] | 15/20 [53, 89] | 19/20 [76, 99] | better |" in table


def test_a_replicate_without_the_language_tasks_says_what_the_row_group_needs():
    ctx = dataclasses.make_dataclass("Ctx", ["cfg"])(RoundConfig(tasks=tuple(SMOKE_TASKS)))
    g = cap.language_task_rows(ctx, cap.Options(), None, None)
    assert "--set tasks=" in g["skipped"] and "blue_cup_on_plate" in g["skipped"]
    assert "skipped: needs a replicate trained with --set tasks=" in "\n".join(cap.format_table(g))


def test_the_replicates_own_config_is_used_and_a_fresh_folder_gets_its_replicate_seed(tmp_path):
    from pipeline import seeds

    rep = tmp_path / "rep2"
    fresh = cap.replicate_config(rep, "smoke", ["grpo_steps=3"])
    assert fresh.grpo_steps == 3 and fresh.seed == seeds.bench_replicate_seed(0, 2)
    rep.mkdir()
    saved = RoundConfig.from_preset("smoke", seed=7, sft_steps=9)
    (rep / "bench_learning.json").write_text(json.dumps({"config": saved.to_dict()}))
    assert cap.replicate_config(rep, "bench", []) == saved
    assert cap.replicate_config(rep, "bench", ["grpo_steps=4"]).grpo_steps == 4


# --- the whole command at smoke size (slow) -------------------------------------------------------

EPISODES = 1
ROWS = ["distract", "ttt"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    rep = tmp_path_factory.mktemp("capabilities") / "bench" / "rep0"
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", "capabilities", "--from", str(rep)]
    cmd += ["--preset", "smoke", "--eval-episodes", str(EPISODES), "--rows", ",".join(ROWS)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=REPO)
    out = rep / cap.FOLDER / "bench_capabilities.json"
    report = json.loads(out.read_text()) if out.exists() else None
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=REPO)
    rerun = json.loads(out.read_text()) if out.exists() else None
    return first, report, again, rerun


@pytest.mark.slow
@pytest.mark.timeout(3200)
def test_the_smoke_run_reports_every_arm_and_task_with_the_asked_count_and_a_verdict(smoke):
    first, report, _, _ = smoke
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert list(report["groups"]) == ROWS
    distract = report["groups"]["distract"]
    assert distract["arms"] == ["SFT", "WG", "WG-Distract"]
    assert distract["condition"]["scene"] == "distractors"
    assert len(set(distract["sha256"].values())) == 3  # three different policies
    groups = [distract, report["groups"]["ttt"]["novel"], report["groups"]["ttt"]["base"]]
    assert report["groups"]["ttt"]["novel"]["condition"]["scene"] == "background"
    for g in groups:
        assert list(g["tasks"]) == SMOKE_TASKS
        for row in g["tasks"].values():
            assert set(row["arms"]) == set(g["arms"])
            assert all(c["n"] == EPISODES for c in row["arms"].values())
            for pair, verdict in row["verdict"].items():
                a, b = pair.split(" vs ")
                rule = cap.intervals_beyond(row["arms"][a]["ci95"], row["arms"][b]["ci95"])
                assert verdict == cap.VERDICT[rule]
    assert "### distractor scenes (scene=distractors)" in first.stdout
    assert "| open_drawer | " in first.stdout
    assert report["options"]["eval_episodes"] == EPISODES


@pytest.mark.slow
@pytest.mark.timeout(3200)
def test_a_rerun_trains_and_evaluates_nothing_again_and_reports_the_same(smoke):
    first, report, again, rerun = smoke
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {"WG-Distract: GRPO", "TTT open_drawer: GRPO from one background frame"} <= set(
        rerun["reused_stages"]
    )
    assert not [k for k in rerun["timings_s"] if k.startswith(("eval ", "WG-Distract", "TTT"))]
    assert rerun["groups"] == report["groups"]
