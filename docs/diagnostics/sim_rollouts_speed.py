"""Seconds per Sim-RL rollout batch (``policy.evaluate_sim.SimRollouts``: the bench preset's
8 starts x 8 rollouts x 6 chunks in ``sim_gap``) when the simulator renders only the frames the
policy sees (chunk boundaries, as now) against rendering every control period (as ``step``
does), with a replicate's SFT policy; interleaved repeats, medians.

    python3 -m uv run python docs/diagnostics/sim_rollouts_speed.py POLICY_DIR [REPEATS]
"""

import statistics
import sys
import time
from pathlib import Path

import torch

from pipeline.round.config import RoundConfig
from policy.evaluate_sim import SimRollouts, sim_start
from policy.grpo import GRPOConfig
from policy.vla import VLAPolicy


def every_period(env):
    """The simulator as it was: every control period rendered (``step``), the frame dropped."""
    physics = type(env).advance

    def advance(action) -> bool:
        clipped = physics(env, action)
        env.observe()
        return clipped

    env.advance = advance
    return env


def main(policy_dir: Path, repeats: int) -> None:
    cfg = RoundConfig.from_preset("bench")
    grpo = GRPOConfig.from_preset("tiny", **{**cfg.grpo_overrides, "horizon_chunks": 6})
    policy = VLAPolicy.from_pretrained(policy_dir, device="cpu")
    tasks = cfg.tasks * (grpo.starts_per_step // len(cfg.tasks))
    starts = [sim_start(t, 30_000 + i) for i, t in enumerate(tasks)]
    times: dict[str, list[float]] = {"chunk boundaries": [], "every period": []}
    for _ in range(repeats):
        for name in times:
            sim = SimRollouts(policy, grpo, "sim_gap", parallel=16)
            if name == "every period":
                sim.envs = [every_period(e) for e in sim.envs]
            t0 = time.perf_counter()
            sim(starts, torch.Generator().manual_seed(0))
            times[name].append(time.perf_counter() - t0)
            sim.close()
    rollouts = len(starts) * grpo.group_size
    print(
        f"{rollouts} rollouts x {grpo.horizon_chunks} chunks, torch threads {torch.get_num_threads()}"
    )
    for name, ts in times.items():
        print(
            f"{name}: median {statistics.median(ts):.1f} s per batch ({', '.join(f'{t:.1f}' for t in ts)})"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3)
