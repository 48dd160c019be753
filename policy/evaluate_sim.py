"""In-process simulated demonstrations and closed-loop evaluation of a VLA on the sim station.

No ZMQ, no episode files: a fast loop for SFT experiments and tests. ``collect_demonstrations``
runs the privileged scripted expert in ``SimBackend``; ``evaluate_in_sim`` runs a policy greedily
(or sampled) from held-out seeds, executing each action chunk like a station job does (every
action is Bridge-clipped, success is checked after every step, the episode ends at success or at
the task's step limit). Several episodes run side by side so the policy sees batches.

mujoco is imported only when a function here is called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from robot_bridge.spec import TASKS, clip_action, get_task, validate_action


class ChunkSampler(Protocol):
    """What the evaluator needs from a policy (``policy.vla.VLAPolicy`` fits)."""

    def sample(
        self,
        images: np.ndarray,
        instructions: list[str],
        temperature: float | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ): ...  # -> an object with .actions (B, K, 7) float32


@dataclass
class SimEpisode:
    """The fields SFT reads (``instruction``, ``frames``, ``actions``) plus what produced them."""

    task: str
    instruction: str
    seed: int
    frames: np.ndarray  # (T+1, H, W, 3) uint8: before each action, plus the final frame
    actions: np.ndarray  # (T, 7) float32 labels (the clean expert action when noise is injected)
    success: bool


@dataclass
class SimEvalResult:
    success: dict[str, list[bool]] = field(default_factory=dict)  # task -> per seed
    steps: dict[str, list[int]] = field(default_factory=dict)  # task -> per seed
    seeds: list[int] = field(default_factory=list)

    @property
    def per_task(self) -> dict[str, float]:
        return {t: float(np.mean(s)) for t, s in self.success.items()}

    @property
    def success_rate(self) -> float:
        return float(np.mean([x for s in self.success.values() for x in s]))

    def to_dict(self) -> dict:
        return {
            "per_task": self.per_task,
            "success_rate": self.success_rate,
            "success": self.success,
            "steps": self.steps,
            "seeds": self.seeds,
        }


def _make_backend(name: str, image_size: int):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    from robot_bridge.backends.sim import GapSimBackend, SimBackend

    backends = {"sim": SimBackend, "sim_gap": GapSimBackend}
    if name not in backends:
        raise ValueError(f"unknown sim backend {name!r}; valid: {', '.join(backends)}")
    return backends[name](image_size=image_size)


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    if isinstance(tasks, str) or not tasks:
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    return [get_task(t).name for t in tasks]


def collect_demonstrations(
    tasks: Sequence[str],
    episodes_per_task: int,
    seed: int = 10_000,
    noise: float = 0.0,
    mistake_prob: float = 0.0,
    image_size: int = 256,
    backend: str = "sim",
    successful_only: bool = True,
) -> list[SimEpisode]:
    """Scripted-expert episodes from seeds ``seed, seed + 1, ...`` (per task).

    With ``noise > 0`` the executed action is the noisy expert's, but the label is what a
    noise-free twin of the expert commands in the same state (DART-style: the data visits
    off-course states and shows how to recover from them).
    """
    from robot_bridge.policies.scripted import ScriptedExpertConfig, ScriptedExpertPolicy

    if episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    env = _make_backend(backend, image_size)
    actor = ScriptedExpertPolicy(
        ScriptedExpertConfig(noise=noise, mistake_prob=mistake_prob, seed=0), env
    )
    teacher = ScriptedExpertPolicy(ScriptedExpertConfig(), env)
    episodes = []
    try:
        for task in _check_tasks(tasks):
            instruction = TASKS[task].instruction
            for s in range(seed, seed + episodes_per_task):
                obs = env.reset(task, seed=s)
                actor.reset(task, instruction, seed=s)
                teacher.reset(task, instruction, seed=s)
                frames, labels = [obs.image], []
                for _ in range(TASKS[task].max_steps):
                    label = teacher.act(obs, instruction)[0]
                    action, _ = clip_action(actor.act(obs, instruction)[0])
                    obs = env.step(action).observation
                    frames.append(obs.image)
                    labels.append(clip_action(label)[0])
                    if env.success():
                        break
                ok = bool(env.success())
                if ok or not successful_only:
                    episodes.append(
                        SimEpisode(task, instruction, s, np.stack(frames), np.stack(labels), ok)
                    )
    finally:
        env.close()
    return episodes


@torch.no_grad()
def evaluate_in_sim(
    policy: ChunkSampler,
    tasks: Sequence[str],
    seeds: Sequence[int],
    temperature: float = 0.0,
    backend: str = "sim",
    parallel: int = 10,
    generator_seed: int = 0,
    max_steps: int | None = None,
) -> SimEvalResult:
    """Closed-loop success per task over ``seeds`` (use seeds never used for training)."""
    seeds = [int(s) for s in seeds]
    if not seeds or parallel < 1:
        raise ValueError(f"need at least one seed and parallel >= 1, got {seeds} and {parallel}")
    tasks = _check_tasks(tasks)
    envs = [_make_backend(backend, 256) for _ in range(min(parallel, len(seeds)))]
    gen = torch.Generator(device=getattr(policy, "device", "cpu")).manual_seed(generator_seed)
    result = SimEvalResult(seeds=seeds)
    try:
        for task in tasks:
            ok, steps = [], []
            for i in range(0, len(seeds), len(envs)):
                batch = seeds[i : i + len(envs)]
                o, n = _run_batch(
                    policy, envs[: len(batch)], task, batch, temperature, gen, max_steps
                )
                ok += o
                steps += n
            result.success[task], result.steps[task] = ok, steps
    finally:
        for env in envs:
            env.close()
    return result


def _run_batch(policy, envs, task, seeds, temperature, gen, max_steps):
    instruction = TASKS[task].instruction
    limit = TASKS[task].max_steps if max_steps is None else max_steps
    images = [env.reset(task, seed=s).image for env, s in zip(envs, seeds, strict=True)]
    done = [False] * len(envs)
    success = [False] * len(envs)
    steps = [0] * len(envs)
    while not all(done):
        live = [i for i in range(len(envs)) if not done[i]]
        sample = policy.sample(
            np.stack([images[i] for i in live]),
            [instruction] * len(live),
            temperature=temperature,
            greedy=temperature == 0,
            generator=gen,
        )
        for chunk, i in zip(sample.actions, live, strict=True):  # chunk: (K, 7)
            for requested in chunk:
                action, _ = clip_action(validate_action(requested))
                envs[i].advance(action)  # the policy sees the chunk's last frame only
                steps[i] += 1
                if envs[i].success():
                    success[i] = done[i] = True
                    break
                if steps[i] >= limit:
                    done[i] = True
                    break
            images[i] = envs[i].observe().image
    return success, steps


# --- GRPO in a simulator, rewarded by its ground truth (the bench's Sim-RL arm) ---------------------


def sim_start(task: str, seed: int):
    """A GRPO start the simulator resets to: ``(task, seed)`` picks the scene, as on the station.
    Its frame is a placeholder (the rollouts render their own)."""
    from policy.grpo import Start

    start = Start(np.zeros((1, 1, 3), np.uint8), TASKS[get_task(task).name].instruction, task)
    start.seed = int(seed)  # what SimRollouts resets to
    return start


class SimRollouts:
    """``train_grpo``'s ``rollout_fn``: each of a step's ``starts x G`` rollouts resets a
    simulator to its start's (task, seed) and runs ``horizon_chunks`` sampled chunks closed-loop,
    executed like a station job (Bridge-clipped, success checked after every action, the episode
    ends at success); the reward is the simulator's ground-truth success. ``parallel`` simulators
    run side by side, so the policy samples in batches."""

    def __init__(
        self,
        policy: ChunkSampler,
        config,
        backend: str = "sim_gap",
        parallel: int = 16,
        image_size: int = 256,
    ) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        if config.distractor_prob > 0:
            raise ValueError("GRPO in a simulator draws its own scenes: set distractor_prob=0")
        self.policy, self.config = policy, config
        self.envs = [_make_backend(backend, image_size) for _ in range(parallel)]

    def __call__(self, batch, generator: torch.Generator | None = None):
        from policy.grpo import Rollouts

        g = self.config.group_size
        starts = [s for s in batch for _ in range(g)]
        missing = [s.task for s in starts if not hasattr(s, "seed")]
        if missing:
            raise ValueError(
                f"simulator starts need a seed (policy.evaluate_sim.sim_start): {missing[:3]}"
            )
        n = len(self.envs)
        waves = [self._wave(starts[i : i + n], generator) for i in range(0, len(starts), n)]
        cat = lambda k: torch.cat([w[k] for w in waves])  # noqa: E731
        rollouts = Rollouts(
            observations=cat(0),
            tokens=cat(1),
            old_logprobs=cat(2),
            videos=cat(3),
            instructions=[s.instruction for s in starts],
            group=torch.arange(len(batch)).repeat_interleave(g),
        )
        return rollouts, cat(4)

    @torch.no_grad()
    def _wave(self, starts, generator):
        cfg = self.config
        envs = self.envs[: len(starts)]
        images = [env.reset(s.task, seed=s.seed).image for env, s in zip(envs, starts, strict=True)]
        limits = [TASKS[s.task].max_steps for s in starts]
        steps, success = [0] * len(envs), [False] * len(envs)
        observations, tokens, logprobs, video = [], [], [], [np.stack(images)]
        for _ in range(cfg.horizon_chunks):
            current = np.stack(images)
            sample = self.policy.sample(
                current,
                [s.instruction for s in starts],
                temperature=cfg.temperature,
                generator=generator,
            )
            observations.append(current)
            tokens.append(torch.as_tensor(sample.tokens).cpu())
            logprobs.append(torch.as_tensor(sample.logprobs).float().cpu())
            for i, chunk in enumerate(np.asarray(sample.actions)):
                moved = False
                for requested in chunk:
                    if success[i] or steps[i] >= limits[i]:
                        break  # the episode ended: later chunks see its last frame
                    action, _ = clip_action(validate_action(requested))
                    envs[i].advance(action)  # only the chunk's last frame is seen: render it
                    moved, steps[i] = True, steps[i] + 1
                    success[i] = bool(envs[i].success())
                if moved:
                    images[i] = envs[i].observe().image
            video.append(np.stack(images))
        return (
            torch.as_tensor(np.stack(observations, axis=1)),  # (B, C, H, W, 3)
            torch.stack(tokens, dim=1),  # (B, C, N)
            torch.stack(logprobs, dim=1),  # (B, C, N)
            torch.as_tensor(np.stack(video, axis=1)),  # (B, C + 1, H, W, 3): chunk boundaries
            torch.tensor(success, dtype=torch.float32),
        )

    def close(self) -> None:
        for env in self.envs:
            env.close()


def train_grpo_in_sim(
    policy,
    starts,
    config,
    backend: str = "sim_gap",
    parallel: int = 16,
    progress: bool = True,
    on_step=None,
):
    """``policy.grpo.train_grpo`` with the simulator in place of the world model and its
    ground-truth success in place of the judge (SIMPLER-RL): same config, same update."""
    from policy.grpo import train_grpo

    sim = SimRollouts(policy, config, backend, parallel)
    try:
        return train_grpo(
            policy, None, None, starts, config, progress=progress, on_step=on_step, rollout_fn=sim
        )
    finally:
        sim.close()
