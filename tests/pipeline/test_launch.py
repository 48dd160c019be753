"""A training stage launched on several processes (pipeline.round.launch): the step starts
torchrun with the round's ``train_processes``, rank 0 saves and reports, and the result is the
one process's result (same rollout parts), on real tiny models and real HDF5 episodes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.round import launch
from pipeline.round.config import RoundConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread", "single_process")

GRPO = {"group_size": 2, "starts_per_step": 2, "horizon_chunks": 2, "judge_samples": 1}
# An untrained judge may score every rollout alike: keep every group and add an entropy term,
# so the update moves the weights whatever the rewards (the comparison needs a real update)
EVERY_GROUP = {"filter_low": 0.0, "filter_high": 1.0, "entropy_coef": 0.05}


@pytest.fixture(autouse=True)
def _on_the_cpu(monkeypatch):
    monkeypatch.setenv("GYMNAST_DEVICE", "cpu")


def _challenger(inputs, out, processes: int):
    cfg = RoundConfig.from_preset(
        "smoke",
        grpo_steps=2,
        seed=3,
        device="cpu",
        train_processes=processes,
        grpo_overrides=GRPO
        | EVERY_GROUP
        | {"rollout_shards": 2},  # the same rollout parts either way
    )
    return launch.run_stage(
        "challenger",
        cfg,
        out / "launch",
        champion=inputs / "champion",
        world_model=inputs / "world_model",
        judge=inputs / "judge",
        episode_dirs=[inputs / "episodes"],
        out_dir=out / "policy",
        progress=False,
        rollout_strip=out / "strip.png",
    )


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_challenger_on_two_processes_matches_one_process_and_rank_zero_reports(
    round_inputs, tmp_path
):
    from pipeline.round.stages import checkpoint_sha256, grpo_history

    two = _challenger(round_inputs, tmp_path / "two", processes=2)
    one = _challenger(round_inputs, tmp_path / "one", processes=1)
    # what the step reads back: rank 0's record of what it saved
    assert two.path == tmp_path / "two" / "policy"
    assert two.sha256 == checkpoint_sha256(two.path)
    assert (
        json.loads((tmp_path / "two" / "launch" / "challenger.launch.json").read_text())["cfg"][
            "train_processes"
        ]
        == 2
    )
    a, b = _weights(two.path), _weights(one.path)
    champion = _weights(round_inputs / "champion")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, float((a[k] - b[k]).abs().max()))
    assert any(not torch.equal(a[k], champion[k]) for k in a)  # GRPO moved the weights
    steps = grpo_history(two.path)
    assert [s.step for s in steps] == [0, 1]
    for s, t in zip(steps, grpo_history(one.path), strict=True):
        assert s.kept_groups == t.kept_groups
        assert np.isclose(s.success_rate, t.success_rate)
    assert (tmp_path / "two" / "strip.png").is_file()  # drawn by rank 0 for the step to log


@pytest.mark.slow  # the Dagster round below launches this stage too; here on its own
def test_world_model_stage_on_two_processes_saves_once_with_its_evaluation(round_inputs, tmp_path):
    cfg = RoundConfig.from_preset("smoke", world_model_steps=2, device="cpu", train_processes=2)
    art = launch.run_stage(
        "world_model",
        cfg,
        tmp_path / "launch",
        sources=[round_inputs / "episodes"],
        previous=None,
        out_dir=tmp_path / "wm",
        progress=False,
    )
    assert art.path == tmp_path / "wm"
    assert (art.path / "open_loop.json").is_file() and art.previews[0].is_file()
    assert art.metrics["steps"] == 2
    assert (tmp_path / "launch" / "world_model.result.json").is_file()


def test_a_failed_launch_names_the_stage_and_process_count(tmp_path):
    cfg = RoundConfig.from_preset("smoke", device="cpu", train_processes=2)
    with pytest.raises(launch.StageLaunchError, match="stage judge on 2 processes"):
        launch.run_stage(
            "judge",
            cfg,
            tmp_path / "launch",
            sources=[tmp_path / "no_such_episodes"],
            previous=None,
            out_dir=tmp_path / "judge",
            progress=False,
        )


def test_launch_refuses_unknown_stages_callbacks_and_bad_process_counts(tmp_path):
    cfg = RoundConfig.from_preset("smoke", train_processes=2)
    with pytest.raises(ValueError, match="stages that can launch: world_model, judge, challenger"):
        launch.run_stage("sft", cfg, tmp_path)
    with pytest.raises(TypeError, match="cannot go to the stage's ranks"):
        launch.run_stage("judge", cfg, tmp_path, on_step=print)
    with pytest.raises(ValueError, match="train_processes must be >= 0"):
        RoundConfig.from_preset("smoke", train_processes=-1)
    assert launch.processes_for(RoundConfig.from_preset("smoke", train_processes=3)) == 3
    # 0: one per CUDA device, at least one process
    assert launch.processes_for(RoundConfig.from_preset("smoke", train_processes=0)) == max(
        1, torch.cuda.device_count()
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_round_job_launches_its_training_stages_on_two_processes(tmp_path, monkeypatch):
    """Through Dagster: round 2 collects on a real sim station, then the world-model, judge and
    challenger steps each launch torchrun with 2 ranks; MLflow gets GRPO's per-step metrics from
    rank 0's history and the challenger's metadata the strip rank 0 drew."""
    import dagster as dg
    import mlflow

    from pipeline.assets import ROUND_ASSETS
    from pipeline.checks import ROUND_CHECKS
    from pipeline.definitions import resources
    from pipeline.demo import last_rounds, local_stack
    from pipeline.fleet import run_policy
    from pipeline.resources import ChampionRecord, RoundStore
    from pipeline.round.config import SMOKE_ROUND
    from pipeline.round.records import ModelArtifact, PromotionDecision
    from pipeline.round.stages import checkpoint_sha256
    from pipeline.tracking import ROUND_TAG, STAGE_TAG
    from policy.config import VLAConfig
    from policy.vla import VLAPolicy
    from robot_bridge.client import StationClient
    from robot_bridge.launch import StationProcess
    from robot_bridge.policies import write_policy_config

    overrides = SMOKE_ROUND | {
        "tasks": ["open_drawer"],
        "collect_episodes_per_task": 4,
        "grpo_steps": 2,
        "train_processes": 2,
        "grpo_overrides": GRPO | EVERY_GROUP,
    }
    monkeypatch.setenv("GYMNAST_ROUND_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("GYMNAST_JUDGE_F1_FLOOR", "0.0")
    monkeypatch.setenv("GYMNAST_PROGRESS", "0")
    home = tmp_path / "home"
    with (
        StationProcess("sim", episodes_dir=tmp_path / "station") as station,
        local_stack(home, station=station.endpoint) as env,
    ):
        r1, r2 = last_rounds(2)
        vla = VLAPolicy.build(VLAConfig.from_preset("tiny")).save_pretrained(tmp_path / "vla")
        decision = PromotionDecision(True, "seeded", 0.0, 0.0, 1.0, {}, {}, "seeded by the test")
        champion = ModelArtifact(vla, checkpoint_sha256(vla), {})
        RoundStore(home).save("champion", r1, ChampionRecord(champion, True, decision, ""))
        # round 1's real episodes: an expert's successes, beside the untrained champion's
        # failures of round 2, so the judge has both kinds to learn from
        expert = write_policy_config(tmp_path / "expert", "scripted_expert", noise=0.0)
        with StationClient(station.endpoint, timeout_s=60) as client:
            dest = RoundStore(home).round_dir(r1) / "episodes" / "champion"
            assert run_policy(client, expert, ["open_drawer"], 3, dest, seed=7).episodes
        result = dg.materialize(
            [*ROUND_ASSETS, *ROUND_CHECKS],
            selection=["real_episodes", "dataset", "world_model", "judge", "challenger"],
            partition_key=r2,
            instance=dg.DagsterInstance.get(),
            resources=resources(),
        )
        assert result.success
        launches = home / "rounds" / r2 / "launch"
        for stage in ("world_model", "judge", "challenger"):
            spec = json.loads((launches / f"{stage}.launch.json").read_text())
            assert spec["cfg"]["train_processes"] == 2
            assert (launches / f"{stage}.result.json").is_file()
        meta = result.asset_materializations_for_node("challenger")[0].metadata
        assert "data:image/png;base64," in meta["imagined_rollouts"].value
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        client = mlflow.MlflowClient()
        (run,) = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            f"tags.`{ROUND_TAG}` = '{r2}' and tags.`{STAGE_TAG}` = 'challenger'",
        )
        history = client.get_metric_history(run.info.run_id, "success_rate")
        assert sorted(m.step for m in history) == [0, 1]
