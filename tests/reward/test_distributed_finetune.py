"""Data-parallel judge finetuning (``reward.train``): 2 CPU processes (gloo, launched by torchrun)
take the optimizer steps 1 process takes on the same global batches, and end with the same
calibrated threshold.

Run as a script (``python -m torch.distributed.run --nproc_per_node 2
tests/reward/test_distributed_finetune.py OUT``) this file is the worker: each rank finetunes
and writes its weights, threshold and metrics.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# As a torchrun script this file's own folder is on sys.path, not tests/ (see distributed_launch).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distributed_launch import run_worker  # noqa: E402
from small_models import SyntheticEpisode  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_process")

GLOBAL_BATCH = 8
STEPS = 2  # the second step checks that the sampling / augmentation stream stays in step
# A key projection's bias shifts every score of a query alike, which the softmax ignores: its
# exact gradient is zero, the computed one rounding noise (~1e-9) that differs with the batch
# split, and AdamW turns that noise into updates of ~1e-6 that match nothing. Not compared.
ROUNDING_NOISE_ONLY = "self_attn.k_proj.bias"
INSTRUCTIONS = ("put the red block in the green zone", "open the drawer")


def _episodes(n: int, seed: int) -> list[SyntheticEpisode]:
    rng = np.random.default_rng(seed)
    return [
        SyntheticEpisode(
            rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8),
            np.zeros((5, 7), np.float32),
            INSTRUCTIONS[i % 2],
            success=bool(i % 3 == 0),
        )
        for i in range(n)
    ]


def _train_config(**overrides):
    from reward import JudgeTrainConfig

    # the default augmentation: every one of its draws comes from the shared generator
    kw = dict(steps=STEPS, batch_size=GLOBAL_BATCH, lr=1e-3, seed=3, device="cpu")
    return JudgeTrainConfig(**{**kw, **overrides})


def _finetune():
    from reward import VLMJudgeConfig
    from reward.train import finetune_judge

    return finetune_judge(
        VLMJudgeConfig(device="cpu"),
        _episodes(12, seed=0),
        _train_config(),
        val_episodes=_episodes(8, seed=1),
        progress=False,
    )


def _worker(out: Path) -> None:
    from policy import distributed

    torch.set_num_threads(1)
    judge, metrics = _finetune()
    rank = int(os.environ.get("RANK", "0"))
    state = {k: v.detach().clone() for k, v in judge.model.state_dict().items()}
    torch.save(state, out / f"{rank}.pt")
    keys = ("loss_first", "loss_last", "world_size", "threshold", "val", "val_calibration")
    row = {k: metrics[k] for k in keys} | {"config_threshold": judge.config.threshold}
    (out / f"metrics{rank}.json").write_text(json.dumps(row))
    distributed.barrier()
    distributed.shutdown()


@pytest.mark.usefixtures("one_torch_thread")
def test_two_gloo_ranks_finetune_the_same_judge_as_one_process(tmp_path):
    run_worker(__file__, [tmp_path], nproc=2, timeout=240)
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # identical on every rank

    judge, metrics = _finetune()  # one process, the same global batches
    ref = judge.model.state_dict()
    from reward import VLMJudgeConfig
    from reward.vlm import VLMJudge

    init = VLMJudge.from_config(VLMJudgeConfig(device="cpu"), INSTRUCTIONS).model.state_dict()
    assert r0.keys() == ref.keys()
    moved, worst = 0, 0.0
    for name, p in ref.items():
        if name.endswith(ROUNDING_NOISE_ONLY):
            continue
        diff = float((r0[name].float() - p.float()).abs().max()) if p.numel() else 0.0
        worst = max(worst, diff)
        assert diff <= 1e-5, (name, diff)
        moved += int(not torch.equal(p, init[name]))
    print(f"max abs weight difference, 2 ranks vs 1 process: {worst:.3g}")
    assert moved > len(ref) // 2  # trained weights are compared, not two inits

    m0 = json.loads((tmp_path / "metrics0.json").read_text())
    assert json.loads((tmp_path / "metrics1.json").read_text()) == m0  # threshold included
    assert m0["config_threshold"] == m0["threshold"]
    assert (m0["world_size"], metrics["world_size"]) == (2, 1)
    assert np.isclose(m0["threshold"], metrics["threshold"], atol=1e-4)
    # the logged loss is the global batch's, as one process logs it
    for k in ("loss_first", "loss_last"):
        assert np.isclose(m0[k], metrics[k], atol=1e-6, rtol=0), (k, m0[k], metrics[k])


def test_a_batch_that_does_not_split_over_the_processes_is_refused(monkeypatch):
    from policy.distributed import DistContext
    from reward import VLMJudgeConfig
    from reward.train import finetune_judge

    monkeypatch.setattr(DistContext, "setup", classmethod(lambda cls, dev: (cls(0, 4, 0), dev)))
    with pytest.raises(ValueError, match="batch_size 6 .* does not split evenly over 4 processes"):
        finetune_judge(
            VLMJudgeConfig(device="cpu"),
            _episodes(6, seed=0),
            _train_config(batch_size=6),
            progress=False,
        )


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
