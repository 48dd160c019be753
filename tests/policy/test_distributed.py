"""Data-parallel SFT (policy.distributed): 2 CPU processes (gloo, launched by torchrun) take the
same optimizer step as 1 process on the same global batch.

Run as a script (``python -m torch.distributed.run --nproc_per_node 2 tests/policy/test_distributed.py
OUT``) this file is the worker: each rank trains, rank 0 writes the parameters and metrics.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# As a torchrun script this file's own folder is on sys.path, not tests/ (where pytest's conftest
# puts it): the shared small models live there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distributed_launch import run_worker  # noqa: E402
from small_models import SMALL_VLA, SyntheticEpisode  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_process")

SMALL = SMALL_VLA
GLOBAL_BATCH = 8
STEPS = 2  # the second step checks that every rank's sampling stream stays in step
INSTRUCTIONS = ["pick up the red block", "open the drawer"]


def _episodes() -> list[SyntheticEpisode]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(6):
        t = 3 + i % 2
        out.append(
            SyntheticEpisode(
                rng.integers(0, 256, (t + 1, 48, 48, 3), dtype=np.uint8),
                rng.normal(0, 0.03, (t, 7)).astype(np.float32),
                INSTRUCTIONS[i % 2],
            )
        )
    return out


def _train(callback=None):
    from policy.augment import AugmentConfig
    from policy.config import VLAConfig
    from policy.sft import SFTConfig, train_sft

    torch.manual_seed(1234)  # the init; under DDP rank 0's weights are broadcast anyway
    return train_sft(
        VLAConfig.from_preset("tiny", **SMALL),
        _episodes(),
        SFTConfig(
            steps=STEPS,
            batch_size=GLOBAL_BATCH,
            lr=1e-3,
            seed=7,
            augment=AugmentConfig(distractor_prob=0.5),  # every augmentation draws from the rng
            device="cpu",
        ),
        progress=False,
        callback=callback,
    )


def _worker(out: Path) -> None:
    from policy import distributed

    torch.set_num_threads(1)
    calls = []
    policy, metrics = _train(callback=lambda step, m: calls.append(step))
    rank = int(os.environ["RANK"])
    (out / f"callbacks_rank{rank}.json").write_text(json.dumps(calls))
    if distributed.is_main_process():
        torch.save({k: v.detach().clone() for k, v in policy.state_dict().items()}, out / "p.pt")
        (out / "metrics.json").write_text(
            json.dumps({k: metrics[k] for k in ("loss", "token_accuracy", "world_size")})
        )
    distributed.barrier()
    distributed.shutdown()


def test_two_gloo_ranks_take_the_same_sft_step_as_one_process(tmp_path):
    run_worker(__file__, [tmp_path], nproc=2, timeout=240)
    ddp = torch.load(tmp_path / "p.pt")
    ddp_metrics = json.loads((tmp_path / "metrics.json").read_text())
    # Only rank 0 calls the callback (MLflow); rank 1 trains silently.
    assert json.loads((tmp_path / "callbacks_rank0.json").read_text()) == list(range(STEPS))
    assert json.loads((tmp_path / "callbacks_rank1.json").read_text()) == []

    policy, metrics = _train()  # one process, same seed, same global batch
    ref = policy.state_dict()
    init = _train_init_state()
    assert ddp.keys() == ref.keys()
    moved = 0
    for name, p in ref.items():
        assert torch.allclose(ddp[name], p, atol=1e-5, rtol=0), (
            name,
            float((ddp[name] - p).abs().max()),
        )
        moved += int(not torch.equal(p, init[name]))
    assert moved > len(ref) // 2  # the comparison is of trained weights, not of two inits
    assert ddp_metrics["world_size"] == 2 and metrics["world_size"] == 1
    # Logged loss / accuracy are the global batch's, as one process logs them.
    assert np.allclose(ddp_metrics["loss"], metrics["loss"], atol=1e-5)
    assert np.allclose(ddp_metrics["token_accuracy"], metrics["token_accuracy"], atol=1e-6)


def _train_init_state() -> dict[str, torch.Tensor]:
    from policy.config import VLAConfig
    from policy.vla import VLAPolicy

    torch.manual_seed(1234)
    return VLAPolicy.build(VLAConfig.from_preset("tiny", **SMALL)).state_dict()


def test_batch_sharding_and_launch_detection(monkeypatch):
    from policy.distributed import DistContext, is_main_process, launch_env

    assert launch_env() is None and is_main_process()
    ctx, dev = DistContext.setup(torch.device("cpu"))  # not launched: a no-op
    assert not ctx.enabled and ctx.is_main and dev == torch.device("cpu")
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model) is model and ctx.shard(np.arange(5)) == slice(0, 5)
    x = torch.tensor([1.0, 2.0])
    assert ctx.mean(x) is x

    idx = np.arange(8)
    parts = [idx[DistContext(r, 4, r).shard(idx)] for r in range(4)]
    assert np.array_equal(np.concatenate(parts), idx) and {len(p) for p in parts} == {2}
    with pytest.raises(ValueError, match="split evenly over 3"):
        DistContext(0, 3, 0).check_batch(8)

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch_env() is None  # torchrun with one process: the plain path
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_env() == (1, 2, 1) and not is_main_process()
    monkeypatch.delenv("RANK")
    with pytest.raises(RuntimeError, match="RANK"):
        launch_env()


# ----- GRPO: rollout groups sharded over ranks -------------------------------------------------
GRPO_OVERRIDES = dict(  # every part of the update exercised: 2 PPO epochs x 2 optimizer steps,
    group_size=4,  # micro-batches, task weights, distractors drawn from the shared rng
    starts_per_step=4,
    horizon_chunks=2,
    steps=2,
    judge_samples=1,
    updates_per_epoch=2,
    minibatch_size=6,
    task_balanced_loss=True,
    distractor_prob=0.5,
    rollout_shards=2,
    device="cpu",
    seed=3,
)


class _BrighterThanGroupJudge:
    """Success: the rollout's last frame is brighter than its group's median (consecutive
    blocks of ``group_size`` videos, as each rollout part lays them out): every group is mixed,
    so every group carries signal."""

    def __init__(self, group_size: int) -> None:
        self.group_size = group_size

    def judge(self, videos, instructions, n_samples=None):
        from reward.judge import JudgeResult

        brightness = np.array([v[-1].mean() for v in videos]).reshape(-1, self.group_size)
        success = (brightness > np.median(brightness, axis=1, keepdims=True)).reshape(-1)
        rewards = success.astype(np.float32)
        return JudgeResult(rewards, rewards.copy(), rewards[:, None].copy())


def _frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.full((48, 48, 3), rng.integers(30, 90), np.uint8)
    f[24:] = rng.integers(120, 200, 3, dtype=np.uint8)
    y, x = rng.integers(24, 40), rng.integers(0, 40)
    f[y : y + 8, x : x + 8] = rng.integers(0, 256, 3, dtype=np.uint8)
    return f


def _train_grpo(on_step=None):
    from small_models import small_config

    from policy.config import VLAConfig
    from policy.grpo import GRPOConfig, Start, train_grpo
    from policy.vla import VLAPolicy
    from world_model import ActionConditionedWorldModel

    torch.manual_seed(1234)  # the world model's init (each rank builds its own copy)
    world_model = ActionConditionedWorldModel(small_config())
    policy = VLAPolicy.build(VLAConfig.from_preset("tiny", **SMALL))
    config = GRPOConfig.from_preset("tiny", **GRPO_OVERRIDES)
    starts = [Start(_frame(i), INSTRUCTIONS[i % 2], ("pick", "drawer")[i % 2]) for i in range(5)]
    judge = _BrighterThanGroupJudge(config.group_size)
    history = train_grpo(
        policy, world_model, judge, starts, config, progress=False, on_step=on_step
    )
    return policy, history


def _grpo_worker(out: Path) -> None:
    from policy import distributed

    torch.set_num_threads(1)
    calls = []
    policy, history = _train_grpo(on_step=lambda s: calls.append(s.step))
    rank = int(os.environ.get("RANK", "0"))
    (out / f"callbacks_rank{rank}.json").write_text(json.dumps(calls))
    state = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    torch.save(state, out / f"p_rank{rank}.pt")
    keys = ("success_rate", "kept_groups", "loss", "clipfrac", "approx_kl", "entropy")
    rows = [
        {k: getattr(h, k) for k in (*keys, "grad_norm", "imagined_frames")} | h.extra
        for h in history
    ]
    (out / f"history_rank{rank}.json").write_text(json.dumps(rows))
    distributed.barrier()
    distributed.shutdown()


def _run(args: list[str], tmp: Path, nproc: int | None) -> None:
    run_worker(__file__, [tmp, *args], nproc=nproc)


# slow (55 s of CI on 2 cores): the challenger stage's launch test (tests/pipeline/test_launch.py)
# makes the same comparison, GRPO on 2 ranks against 1 process, in the README's test run
@pytest.mark.slow
def test_two_gloo_ranks_take_the_same_grpo_steps_as_one_process(tmp_path):
    """Each rank imagines and judges half the groups; 2 steps later both ranks hold the weights
    one process reaches over the same groups (same rollout parts), and log what it logs."""
    (tmp_path / "ddp").mkdir()
    (tmp_path / "one").mkdir()
    _run(["grpo"], tmp_path / "ddp", nproc=2)
    _run(["grpo"], tmp_path / "one", nproc=None)  # one plain process, same threads

    r0 = torch.load(tmp_path / "ddp" / "p_rank0.pt")
    r1 = torch.load(tmp_path / "ddp" / "p_rank1.pt")
    ref = torch.load(tmp_path / "one" / "p_rank0.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # identical on every rank
    init = _grpo_init_state()
    moved = 0
    for name, p in ref.items():
        assert torch.allclose(r0[name], p, atol=1e-5, rtol=0), (
            name,
            float((r0[name] - p).abs().max()),
        )
        moved += int(not torch.equal(p, init[name]))
    assert moved > len(ref) // 2  # trained weights are compared, not two inits
    # only rank 0 calls on_step (MLflow)
    assert json.loads((tmp_path / "ddp" / "callbacks_rank0.json").read_text()) == [0, 1]
    assert json.loads((tmp_path / "ddp" / "callbacks_rank1.json").read_text()) == []
    ddp_h = json.loads((tmp_path / "ddp" / "history_rank0.json").read_text())
    one_h = json.loads((tmp_path / "one" / "history_rank0.json").read_text())
    assert json.loads((tmp_path / "ddp" / "history_rank1.json").read_text()) == ddp_h
    for a, b in zip(ddp_h, one_h, strict=True):
        assert a.keys() == b.keys() and a["kept_groups"] == b["kept_groups"] == 4
        for k in a:  # rewards, task counts and frame counts are the whole batch's
            assert np.isclose(a[k], b[k], atol=1e-5), (k, a[k], b[k])


def _grpo_init_state() -> dict[str, torch.Tensor]:
    from policy.config import VLAConfig
    from policy.vla import VLAPolicy

    return VLAPolicy.build(VLAConfig.from_preset("tiny", **SMALL)).state_dict()


def test_rollout_plan_splits_groups_and_samples_and_refuses_uneven_splits():
    from policy.distributed import DistContext
    from policy.grpo_shard import RolloutPlan, SampleShard

    plans = [RolloutPlan.make(DistContext(r, 2, r), 8, 4) for r in range(2)]
    assert [p.my_parts for p in plans] == [range(0, 2), range(2, 4)]
    assert [p.groups for p in plans] == [range(0, 4), range(4, 8)]
    assert RolloutPlan.make(DistContext(1, 2, 1), 8, 0).parts == 2  # 0: one part per process
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        RolloutPlan.make(DistContext(0, 2, 0), 8, 3)
    with pytest.raises(ValueError, match="starts_per_step=6 does not split into 4"):
        RolloutPlan.make(DistContext(0, 2, 0), 6, 4)
    # a single part keeps the run's own generator stream; several get their own seeds
    stream = torch.Generator().manual_seed(0)
    assert RolloutPlan.single(4).generator(0, 5, 0, stream, stream.device) is stream
    a, b = (plans[0].generator(p, 5, 0, stream, stream.device) for p in (0, 1))
    assert torch.rand(1, generator=a) != torch.rand(1, generator=b)
    # kept rollouts: groups 0 and 2 of 4 (G=2); rank 1 holds rollouts 4..7, 2 chunks each
    kept = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
    shard = SampleShard.make(kept, first=4, n_local=4, chunks=2)
    assert (shard.offset, shard.count, shard.total) == (4, 4, 8)
    assert shard.local(torch.tensor([7, 0, 4, 3, 5])).tolist() == [3, 0, 1]


if __name__ == "__main__":
    if sys.argv[2:] == ["grpo"]:
        _grpo_worker(Path(sys.argv[1]))
    else:
        _worker(Path(sys.argv[1]))
