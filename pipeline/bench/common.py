"""What every stage of ``gymnast bench learning`` shares: the real and imagined evaluations, the
context a replicate's stages run in. The stage reuse cache is ``pipeline.bench.reuse``."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from gymnast_common.memory import peak_rss_mb
from pipeline import seeds
from pipeline.bench.budget import Ledger
from pipeline.bench.reuse import reuse_or_train
from pipeline.round.config import RoundConfig
from pipeline.round.records import Evaluation, ModelArtifact
from pipeline.round.stages import collect_episodes, initial_frames

EVAL_RANGES = seeds.EVAL_RANGES  # "dev" (all runs so far, tuning saw it) and "final" (untouched)
EVAL_SEED = EVAL_RANGES["dev"]
DYNA_SEED = seeds.BENCH_DYNA  # + 1000 per iteration
DYNA_FROM = ("sft", "rl")


def peak_rss_gb() -> float:
    return peak_rss_mb() / 1024


def imagined_success(
    policy_dir: Path,
    world_model_dir: Path,
    judge_dir: Path,
    episodes,
    group: int,
    horizon_chunks: int,
    seed: int,
    precision: str = "auto",
) -> dict[str, float]:
    """Per-task success rate in imagination: closed-loop rollouts from real initial frames,
    judged; at GRPO's ``precision`` (a RoundConfig's), so it measures what GRPO trained against."""
    import torch

    from policy.grpo import GRPOConfig, imagine_rollouts, score_rollouts
    from policy.vla import VLAPolicy
    from reward.judge import load_judge
    from robot_bridge.devices import autocast, resolve_precision
    from world_model.model import ActionConditionedWorldModel

    policy = VLAPolicy.from_pretrained(policy_dir)
    wm = ActionConditionedWorldModel.from_pretrained(world_model_dir)
    judge = load_judge(judge_dir)
    cfg = GRPOConfig.from_preset("tiny", group_size=group, horizon_chunks=horizon_chunks, seed=seed)
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    precision = resolve_precision(precision, policy.device)
    out: dict[str, float] = {}
    for task in sorted({e.task for e in episodes}):
        starts = [s for s in initial_frames(episodes) if s.task == task]
        with autocast(policy.device, precision):
            rollouts = imagine_rollouts(policy, wm, starts, cfg, gen)
            out[task] = float(score_rollouts(judge, rollouts, cfg).mean())
    return out


def imagination_throughput(
    world_model_dir: Path, frame: np.ndarray, batch: int = 8, steps: int = 40
) -> float:
    import torch

    from world_model.model import ActionConditionedWorldModel

    wm = ActionConditionedWorldModel.from_pretrained(world_model_dir)
    actions = torch.zeros(batch, steps, 7)
    actions[..., 6] = 1.0
    t0 = time.perf_counter()
    wm.rollout(np.stack([frame] * batch), actions)
    return batch * steps / (time.perf_counter() - t0)


def eval_counts(tasks, default: int, per_task: dict[str, int] | None = None) -> dict[str, int]:
    """Real evaluation episodes per task: ``default`` unless ``per_task`` says otherwise (a task
    whose comparison is close gets more episodes, the one that only ever fails need not)."""
    per_task = per_task or {}
    unknown = sorted(set(per_task) - set(tasks))
    if unknown:
        raise ValueError(f"evaluation episodes given for tasks not in this run: {unknown}")
    counts = {t: int(per_task.get(t, default)) for t in tasks}
    bad = {t: n for t, n in counts.items() if n < 1}
    if bad:
        raise ValueError(f"evaluation episodes per task must be >= 1, got {bad}")
    return counts


def evaluate_policy(
    client,
    policy_dir: Path,
    dest: Path,
    cfg: RoundConfig,
    counts: dict[str, int],
    progress: bool = True,
    eval_seed: int = EVAL_SEED,
) -> Evaluation:
    """The real evaluation: ``counts[task]`` greedy episodes per task on seeds ``eval_seed``+
    (one of ``EVAL_RANGES``), the same for every policy (paired); one station job per distinct
    count, merged."""
    by_count: dict[int, list[str]] = {}
    for task, n in counts.items():
        by_count.setdefault(n, []).append(task)
    parts = [
        collect_episodes(
            client,
            policy_dir,
            dest,
            cfg.for_tasks(tasks),
            episodes_per_task=n,
            seed=eval_seed,
            progress=progress,
        )
        for n, tasks in by_count.items()
    ]
    return Evaluation(
        parts[0].checkpoint_sha256,
        [p for part in parts for p in part.episodes],
        {t: part.per_task[t] for t in counts for part in parts if t in part.per_task},
        {k: v for part in parts for k, v in part.outcomes.items()},
    )


def spread_sample(headers, per_task: int) -> list:
    """``per_task`` episodes of each task, spread evenly over its seeds (imagination's starts)."""
    out = []
    for task in dict.fromkeys(h.task for h in headers):
        mine = sorted((h for h in headers if h.task == task), key=lambda h: h.seed)
        out += mine[:: max(1, len(mine) // per_task)][:per_task]
    return out


@dataclasses.dataclass
class BenchContext:
    """What every stage of one bench run shares: the station, the workdir and settings, the
    report being written, stage wall times and the stages reused from an earlier run."""

    client: object
    workdir: Path
    cfg: RoundConfig
    report: dict
    progress: bool = True
    ledger: Ledger = dataclasses.field(default_factory=Ledger)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    reused: list[str] = dataclasses.field(default_factory=list)

    def timed(self, name: str, fn):
        t0 = time.perf_counter()
        value = fn()
        self._done(name, t0)
        return value

    def trained(self, name: str, key: str, train, record: str = "", upstream=None) -> ModelArtifact:
        """A trained stage, timed; reused from an earlier run with the same settings."""
        t0 = time.perf_counter()
        path = self.workdir / f"{record or key}.stage.json"
        art, was_reused = reuse_or_train(path, key, self.cfg, train, upstream)
        if was_reused:
            self.reused.append(name)
            print(f"[{name}] reusing {art.path} (same settings, same sha256)", flush=True)
        else:
            self._done(name, t0)
        return art

    def _done(self, name: str, t0: float) -> None:
        self.timings[name] = time.perf_counter() - t0
        print(f"[{name}] {self.timings[name]:.0f} s, peak RSS {peak_rss_gb():.2f} GB", flush=True)


@dataclasses.dataclass
class Leg:
    """One GRPO leg's models and the data its world model and judge learned from."""

    world_model: ModelArtifact
    judge: ModelArtifact
    rl: ModelArtifact  # the policy the leg ends with (a Dyna leg may keep an earlier leg's)
    data_dirs: list[Path]
    grpo: dict | None = None  # this leg's own GRPO run's metrics (None: ``rl``'s)


def episodes_of(
    folders: list[Path], tasks, first_seed: int, per_task: int, shas: set[str] | None = None
) -> list[Path]:
    """The episode files under ``folders`` of ``tasks`` on seeds ``first_seed``.. (``per_task``
    of them), of the policies ``shas`` when given: a folder may hold more from an earlier run."""
    from pipeline.round.episodes import episode_paths
    from robot_bridge.episodes import read_episode_header

    wanted = {(t, first_seed + i) for t in tasks for i in range(per_task)}
    out = []
    for p in episode_paths(folders):
        h = read_episode_header(p)
        if (h.task, int(h.seed)) in wanted and (shas is None or h.policy_sha256 in shas):
            out.append(p)
    return out
