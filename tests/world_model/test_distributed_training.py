"""Data-parallel world-model training (``world_model.train``): 2 CPU processes (gloo, launched by
torchrun) with 2 batch parts take the optimizer steps 1 process takes with 2 batch parts.

Run as a script (``python -m torch.distributed.run --nproc_per_node 2
tests/world_model/test_distributed_training.py OUT``) this file is the worker: each rank trains
and writes its weights and metrics.
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
from small_models import SyntheticEpisode, small_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_process")

GLOBAL_BATCH = 8
PARTS = 2
STEPS = 2  # the second step checks that the sampling stream stays in step on every rank


def _episodes() -> list[SyntheticEpisode]:
    rng = np.random.default_rng(0)
    return [
        SyntheticEpisode(
            rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8),
            rng.uniform(-0.05, 0.05, (6, 7)).astype(np.float32),
        )
        for _ in range(3)
    ]


def _train_config(**overrides):
    from world_model import WorldModelTrainConfig

    kw = dict(
        steps=STEPS,
        batch_size=GLOBAL_BATCH,
        batch_parts=PARTS,
        lr=1e-3,
        warmup_steps=1,
        seed=5,
        device="cpu",
    )
    return WorldModelTrainConfig(**{**kw, **overrides})


def _train():
    from world_model import train_world_model

    # action dropout > 0: every part draws dropout, context noise, timesteps and noise
    return train_world_model(
        small_config(action_dropout=0.5), _episodes(), _train_config(), progress=False
    )


def _worker(out: Path) -> None:
    from policy import distributed

    torch.set_num_threads(1)
    model, metrics = _train()
    rank = int(os.environ.get("RANK", "0"))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"{rank}.pt")
    keys = ("loss", "world_size", "batch_parts")
    (out / f"metrics{rank}.json").write_text(json.dumps({k: metrics[k] for k in keys}))
    distributed.barrier()
    distributed.shutdown()


@pytest.mark.usefixtures("one_torch_thread")
def test_two_gloo_ranks_take_the_same_world_model_steps_as_one_process(tmp_path):
    run_worker(__file__, [tmp_path], nproc=2, timeout=240)
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # identical on every rank

    model, metrics = _train()  # one process, the same 2 batch parts
    ref = model.state_dict()
    torch.manual_seed(5)  # the seeded init train_world_model builds
    from world_model import ActionConditionedWorldModel

    init = ActionConditionedWorldModel(small_config(action_dropout=0.5)).state_dict()
    assert r0.keys() == ref.keys()
    moved, worst = 0, 0.0
    for name, p in ref.items():
        diff = float((r0[name].float() - p.float()).abs().max()) if p.numel() else 0.0
        worst = max(worst, diff)
        assert diff <= 1e-5, (name, diff)
        moved += int(not torch.equal(p, init[name]))
    print(f"max abs weight difference, 2 ranks vs 1 process: {worst:.3g}")
    assert moved > len(ref) // 2  # trained weights are compared, not two inits
    m0 = json.loads((tmp_path / "metrics0.json").read_text())
    assert json.loads((tmp_path / "metrics1.json").read_text()) == m0
    assert (m0["world_size"], metrics["world_size"]) == (2, 1)
    assert m0["batch_parts"] == metrics["batch_parts"] == PARTS
    # the logged loss is the global batch's, as one process logs it
    assert np.allclose(m0["loss"], metrics["loss"], atol=1e-6, rtol=0)


def test_uneven_batch_splits_are_refused(monkeypatch):
    from policy.distributed import DistContext
    from world_model import train_world_model

    with pytest.raises(ValueError, match="batch_parts must be 0 .* divisor of batch_size 6"):
        _train_config(batch_size=6, batch_parts=4)
    with pytest.raises(ValueError, match="batch_parts must be 0"):
        _train_config(batch_parts=-1)

    world = {"size": 4}
    monkeypatch.setattr(
        DistContext, "setup", classmethod(lambda cls, dev: (cls(0, world["size"], 0), dev))
    )

    def train(**overrides):
        train_world_model(small_config(), _episodes(), _train_config(**overrides), progress=False)

    with pytest.raises(ValueError, match="batch_size 6 .* does not split evenly over 4 processes"):
        train(batch_size=6, batch_parts=0)
    with pytest.raises(ValueError, match="batch_parts=2 must be a multiple of the 4 processes"):
        train(batch_parts=2)
    world["size"] = 2
    config = _train_config()
    config.batch_size, config.batch_parts = 6, 4  # past the config's own check: the trainer's
    with pytest.raises(ValueError, match="batch_size 6 .* does not split into 4 equal parts"):
        train_world_model(small_config(), _episodes(), config, progress=False)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
