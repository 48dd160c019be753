"""Measure the simulated station: the scripted expert's success rate against its action noise,
and control steps per second with rendering (the station bench's one-core measurement,
``pipeline.bench.station.bench_sim``, the figure ``gymnast bench bridge`` reports).

    MUJOCO_GL=egl uv run python -m pipeline.bench.sim --seeds 10 --noise 0 0.3 0.6
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from pipeline.bench.station import bench_sim  # noqa: E402
from robot_bridge.backends.base import make_backend  # noqa: E402
from robot_bridge.policies.scripted import ScriptedExpertConfig, ScriptedExpertPolicy  # noqa: E402
from robot_bridge.spec import AUTOEVAL_TASKS, TASKS  # noqa: E402


def expert_success(
    backend_name: str,
    noise: float,
    seeds: int,
    mistake_prob: float,
    tasks: tuple[str, ...] = AUTOEVAL_TASKS,
) -> dict:
    backend = make_backend(backend_name, render=False)
    expert = ScriptedExpertPolicy(
        ScriptedExpertConfig(noise=noise, mistake_prob=mistake_prob), backend
    )
    rates = {}
    for task in tasks:
        spec = TASKS[task]
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
    parser.add_argument(
        "--tasks", nargs="*", default=list(AUTOEVAL_TASKS), choices=list(TASKS), metavar="TASK"
    )
    args = parser.parse_args()

    rate = bench_sim(args.steps, args.backend)["steps_per_s"]
    print(f"{args.backend}: {rate:.1f} steps/s with rendering (one core)")
    tasks = tuple(args.tasks)
    print(f"{'noise':>6} " + " ".join(f"{t:>19}" for t in tasks))
    for noise in args.noise:
        rates = expert_success(args.backend, noise, args.seeds, args.mistake_prob, tasks)
        print(f"{noise:>6.2f} " + " ".join(f"{rates[t]:>19.2f}" for t in tasks))


if __name__ == "__main__":
    main()
