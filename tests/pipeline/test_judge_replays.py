"""``judge_replays``: the judge also learns from its training episodes replayed in the round's
world model with their real labels; held-out episodes and the threshold split stay real.
Real tiny models and real HDF5 episodes (tests/pipeline/conftest.py)."""

from __future__ import annotations

import json

import pytest

from pipeline.bench.reuse import reuse_or_train
from pipeline.round.config import RoundConfig
from pipeline.round.episodes import load_episodes, split_by_label
from pipeline.round.stages import refresh_judge

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**overrides) -> RoundConfig:
    return RoundConfig.from_preset(
        "smoke", device="cpu", seed=3, grpo_overrides={"horizon_chunks": 1}, **overrides
    )


def test_the_judge_trains_on_replays_of_its_training_split_only(
    round_inputs, episode_writer, tmp_path
):
    for e in range(16):
        episode_writer(tmp_path / "episodes", e, ("open_drawer", "close_drawer")[e % 2], e % 4 < 2)
    episodes = [tmp_path / "episodes"]
    with pytest.raises(ValueError, match="judge_replays needs the round's world model"):
        refresh_judge(episodes, None, tmp_path / "refused", _cfg(judge_replays=True), False)
    plain = refresh_judge(episodes, None, tmp_path / "plain", _cfg(), False)
    replayed = refresh_judge(
        episodes,
        None,
        tmp_path / "replayed",
        _cfg(judge_replays=True),
        False,
        world_model=round_inputs / "world_model",
    )
    cfg = _cfg()
    rest, held = split_by_label(load_episodes(episodes), cfg.holdout_fraction)
    train, _ = split_by_label(rest, cfg.holdout_fraction, salt="judge-threshold")
    assert plain.metrics["replay_episodes"] == 0
    assert replayed.metrics["replay_episodes"] == len(train) > 0
    # every training episode twice (real, then imagined with the same label); held-out unchanged
    assert replayed.metrics["n_train_episodes"] == 2 * plain.metrics["n_train_episodes"]
    positives = sum(bool(e.success) for e in train)
    assert replayed.metrics["n_positive"] == 2 * positives == 2 * plain.metrics["n_positive"]
    assert replayed.metrics["heldout_episodes"] == plain.metrics["heldout_episodes"] == len(held)


def test_a_bench_record_from_before_judge_replays_existed_is_still_reused(tmp_path):
    """The field is left out of a stage's inputs at its default, so earlier records match; a
    run that turns it on trains again."""
    cfg = _cfg()
    record = tmp_path / "judge.stage.json"
    trained = []

    def train():
        trained.append(1)
        (tmp_path / "ckpt").mkdir(exist_ok=True)
        (tmp_path / "ckpt" / "config.json").write_text("{}")
        from pipeline.round.records import ModelArtifact
        from pipeline.round.stages import checkpoint_sha256

        return ModelArtifact(tmp_path / "ckpt", checkpoint_sha256(tmp_path / "ckpt"), {})

    reuse_or_train(record, "judge", cfg, train)
    saved = json.loads(record.read_text())
    assert "judge_replays" not in saved["inputs"]
    _, reused = reuse_or_train(record, "judge", cfg, train)
    assert reused and len(trained) == 1
    _, reused = reuse_or_train(record, "judge", _cfg(judge_replays=True), train)
    assert not reused and len(trained) == 2
