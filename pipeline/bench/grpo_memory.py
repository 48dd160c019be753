"""Peak memory of GRPO steps with the tiny presets, in a process of its own.

    python -m pipeline.bench.grpo_memory WORKDIR [--steps 3]

WORKDIR is a `gymnast bench learning` workdir (its SFT policy, world model, judge and episodes).
Prints the process's peak RSS after loading the models and after the GRPO steps, so the figure is
the GRPO step's own, not the world-model training's that the bench process also did.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gymnast_common.memory import peak_rss_mb


def peak_rss_gb() -> float:
    return peak_rss_mb() / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()

    from pipeline.round.episodes import load_episode_headers
    from pipeline.round.stages import initial_frames
    from policy.grpo import GRPOConfig, train_grpo
    from policy.vla import VLAPolicy
    from reward.judge import load_judge
    from world_model.model import ActionConditionedWorldModel

    w = args.workdir
    overrides = json.loads((w / "grpo.stage.json").read_text())["inputs"]["grpo_overrides"]
    dirs = [w / "bootstrap" / "demos", w / "sft_attempts", w / "sft_explore"]
    starts = initial_frames(load_episode_headers([d for d in dirs if d.is_dir()]))
    policy = VLAPolicy.from_pretrained(w / "bootstrap" / "policy")
    wm = ActionConditionedWorldModel.from_pretrained(w / "world_model")
    judge = load_judge(w / "judge")
    loaded = peak_rss_gb()
    grpo = GRPOConfig.from_preset("tiny", steps=args.steps, seed=0, **overrides)
    t0 = time.perf_counter()
    train_grpo(policy, wm, judge, starts, grpo, progress=False)
    print(
        f"{len(starts)} starts; GRPO {args.steps} steps ({grpo.starts_per_step} x {grpo.group_size} "
        f"rollouts, horizon {grpo.horizon_chunks} chunks): "
        f"{(time.perf_counter() - t0) / args.steps:.1f} s/step; peak RSS after loading "
        f"{loaded:.2f} GB, after the steps {peak_rss_gb():.2f} GB"
    )


if __name__ == "__main__":
    main()
