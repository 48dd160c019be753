"""Data-parallel SFT (policy.distributed): 2 CPU processes (gloo, launched by torchrun) take the
same optimizer step as 1 process on the same global batch.

Run as a script (``python -m torch.distributed.run --nproc_per_node 2 tests/test_distributed.py
OUT``) this file is the worker: each rank trains, rank 0 writes the parameters and metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMALL = {  # as tests/test_policy.py's SMALL: a model that steps in well under a second
    "image_size": 32,
    "patch_size": 8,
    "text_hidden": 64,
    "text_heads": 2,
    "text_head_dim": 32,
    "text_intermediate": 256,
    "vision_hidden": 64,
    "vision_heads": 2,
    "vision_intermediate": 128,
}
GLOBAL_BATCH = 8
STEPS = 2  # the second step checks that every rank's sampling stream stays in step
INSTRUCTIONS = ["pick up the red block", "open the drawer"]


class _Episode:
    def __init__(self, instruction: str, frames: np.ndarray, actions: np.ndarray) -> None:
        self.instruction, self.frames, self.actions = instruction, frames, actions


def _episodes() -> list[_Episode]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(6):
        t = 3 + i % 2
        out.append(
            _Episode(
                INSTRUCTIONS[i % 2],
                rng.integers(0, 256, (t + 1, 48, 48, 3), dtype=np.uint8),
                rng.normal(0, 0.03, (t, 7)).astype(np.float32),
            )
        )
    return out


def _train(callback=None):
    from policy.augment import AugmentConfig
    from policy.config import VLAConfig
    from policy.sft import train_sft

    torch.manual_seed(1234)  # the init; under DDP rank 0's weights are broadcast anyway
    return train_sft(
        VLAConfig.from_preset("tiny", **SMALL),
        _episodes(),
        steps=STEPS,
        batch_size=GLOBAL_BATCH,
        lr=1e-3,
        seed=7,
        progress=False,
        augment=AugmentConfig(distractor_prob=0.5),  # every augmentation draws from the rng
        device="cpu",
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


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)


def test_two_gloo_ranks_take_the_same_sft_step_as_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "GYMNAST_DEVICE": "cpu",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run(
        [*cmd, str(Path(__file__).resolve()), str(tmp_path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
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


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
