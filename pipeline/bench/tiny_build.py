"""Small costs the issues name, measured here instead of in timed tests (which flake under load).

    python -m pipeline.bench.tiny_build [--repeats 5]

- tiny VLA policy and tiny VLM judge: build from a local config + save + reload, offline
  (target: well under a second);
- one HDF5 episode append at 256x256 (frame, state, action, flush and fsync) against the 200 ms
  control period.
Prints medians over the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def median_seconds(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from policy.config import VLAConfig
    from policy.vla import VLAPolicy
    from reward.config import VLMJudgeConfig
    from reward.judge import load_judge
    from reward.vlm import VLMJudge
    from robot_bridge.backends.base import Observation
    from robot_bridge.episodes import EpisodeMeta, EpisodeWriter

    tmp = Path(tempfile.mkdtemp(prefix="bench_tiny_build_"))

    def vla(i: int) -> None:
        VLAPolicy.build(VLAConfig.from_preset("tiny")).save_pretrained(tmp / f"vla{i}")
        VLAPolicy.from_pretrained(tmp / f"vla{i}")

    def judge(i: int) -> None:
        j = VLMJudge.from_config(VLMJudgeConfig(), instructions=["open the drawer"])
        j.save_pretrained(tmp / f"judge{i}")
        load_judge(tmp / f"judge{i}")

    vla(-1), judge(-1)  # imports and first-call costs out of the figures
    print(f"tiny VLA build + save + load: {median_seconds(vla, args.repeats):.3f} s (median)")
    print(f"tiny judge build + save + load: {median_seconds(judge, args.repeats):.3f} s (median)")

    meta = EpisodeMeta("bench-ep", "open_drawer", "open the drawer", 0, "bench", "0" * 64, "sim")
    w = EpisodeWriter(tmp / "episodes", meta, image_shape=(256, 256, 3))
    rng = np.random.default_rng(0)
    costs = []
    for t in range(15 * args.repeats):
        obs = Observation(
            image=rng.integers(0, 255, (256, 256, 3), np.uint8),
            state=np.zeros(7, np.float32),
            timestamp=float(t),
            seq=t,
        )
        action = np.zeros(7, np.float32)
        t0 = time.perf_counter()
        w.append(obs, action)
        costs.append(time.perf_counter() - t0)
    w.abort("client_ended")
    print(
        f"episode append at 256x256 (with fsync): {1000 * statistics.median(costs):.1f} ms median, "
        f"{1000 * max(costs):.1f} ms max over {len(costs)} steps (control period 200 ms)"
    )


if __name__ == "__main__":
    main()
