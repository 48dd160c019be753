"""Measure the simulated station: control steps per second with rendering, and the scripted
expert's success rate against its action noise.

    MUJOCO_GL=egl taskset -c 0 uv run python benchmarks/bench_sim.py --seeds 10 --noise 0 0.3 0.6
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402

from robot_bridge.backends.base import make_backend  # noqa: E402
from robot_bridge.policies.scripted import ScriptedExpertConfig, ScriptedExpertPolicy  # noqa: E402
from robot_bridge.spec import ACTION_HIGH, ACTION_LOW, TASKS  # noqa: E402


def steps_per_second(backend_name: str, n_steps: int) -> float:
    """Random in-bounds actions, each step rendering a 256x256 frame."""
    backend = make_backend(backend_name)
    rng = np.random.default_rng(0)
    backend.reset("eggplant_in_sink", seed=0)
    start = time.perf_counter()
    for i in range(n_steps):
        if i % 50 == 49:  # random walks pin the arm to the box; start fresh now and then
            backend.reset("eggplant_in_sink", seed=i)
        backend.step(rng.uniform(ACTION_LOW, ACTION_HIGH).astype(np.float32))
    rate = n_steps / (time.perf_counter() - start)
    backend.close()
    return rate


def expert_success(backend_name: str, noise: float, seeds: int, mistake_prob: float) -> dict:
    backend = make_backend(backend_name, render=False)
    expert = ScriptedExpertPolicy(
        ScriptedExpertConfig(noise=noise, mistake_prob=mistake_prob), backend
    )
    rates = {}
    for task, spec in TASKS.items():
        wins = 0
        for seed in range(seeds):
            obs = backend.reset(task, seed=seed)
            expert.reset(task, spec.instruction, seed=seed)
            for _ in range(spec.max_steps):
                obs = backend.step(expert.act(obs, spec.instruction)[0]).observation
                if backend.success():
                    wins += 1
                    break
        rates[task] = wins / seeds
    backend.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sim", choices=["sim", "sim_gap"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.3, 0.6])
    parser.add_argument("--mistake-prob", type=float, default=0.0)
    args = parser.parse_args()

    print(
        f"{args.backend}: {steps_per_second(args.backend, args.steps):.1f} steps/s with rendering"
    )
    print(f"{'noise':>6} " + " ".join(f"{t:>19}" for t in TASKS))
    for noise in args.noise:
        rates = expert_success(args.backend, noise, args.seeds, args.mistake_prob)
        print(f"{noise:>6.2f} " + " ".join(f"{rates[t]:>19.2f}" for t in TASKS))


if __name__ == "__main__":
    main()
