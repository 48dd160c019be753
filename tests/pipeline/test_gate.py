"""A round's records and its promotion gate, on real records: the round store, the gate's
McNemar test and its refusals, and what a round shows on its assets' pages (numeric gate metadata,
the success-over-rounds chart, the world model's preview and GRPO's rollout strip, inlined)."""

import json
from pathlib import Path

import dagster as dg
import pytest

from pipeline.resources import ChallengerEvaluation, LoopSettings, RoundEpisodes, RoundStore
from pipeline.round.config import SMOKE_ROUND
from pipeline.round.records import Evaluation, ModelArtifact, PromotionDecision
from robot_bridge.dispatch import TaskResult

TINY = SMOKE_ROUND


def _evaluation(outcomes: dict[tuple[str, int], bool], sha: str) -> Evaluation:
    per_task = {}
    for (task, _), ok in outcomes.items():
        r = per_task.setdefault(task, TaskResult(task, 0, 0, 0))
        r.episodes += 1
        r.labelled += 1
        r.successes += int(ok)
    return Evaluation(sha, [Path(f"/x/{t}-{s}.h5") for t, s in outcomes], per_task, outcomes)


def _gate(champion: dict, challenger: dict, sha: str = "e" * 64) -> ChallengerEvaluation:
    art = ModelArtifact(Path("/x/challenger"), sha, {})
    return ChallengerEvaluation(
        art, _evaluation(challenger, sha), 1000, _evaluation(champion, "f" * 64)
    )


# --- the round config and the round store ---------------------------------------------------------


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


# --- the promotion gate ---------------------------------------------------------------------------


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


# --- rounds you can see: the success chart, inline previews ---------------------------------------


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
