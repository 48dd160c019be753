"""Dispatch a checkpoint to a station and bring its episodes home.

``run_on_station`` is the one path the CLI (``gymnast collect`` / ``gymnast dispatch``) and the
pipeline use: upload (skipped if the station has it), submit a job, copy every episode here as soon
as it appears (so a station that drops mid-job loses nothing already recorded), and resume an
interrupted round without driving the arm again for episodes already collected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from robot_bridge.backends.scenes import BASE_SCENE
from robot_bridge.client import StationClient, StationError
from robot_bridge.episodes import list_episodes, read_episode_header


class DispatchError(RuntimeError):
    """The job did not finish; ``episodes`` lists what was recorded and copied before it stopped."""

    def __init__(self, message: str, episodes: list[Path]) -> None:
        super().__init__(message)
        self.episodes = episodes


@dataclass
class TaskResult:
    task: str
    episodes: int
    successes: int
    labelled: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.labelled if self.labelled else float("nan")

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.labelled)


@dataclass
class DispatchResult:
    checkpoint_sha256: str
    episodes: list[Path]
    per_task: dict[str, TaskResult] = field(default_factory=dict)
    skipped: int = 0


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0 and n)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# A job episode ends by itself in one of these; an e-stop, cancel, error or lease expiry cuts it
# short. A cut-short episode is kept on disk (never deleted) but is not an evaluation sample: it
# neither counts in the success rates nor stops a resumed job from running its (task, seed) again.
RAN_TO_THE_END = ("success", "max_steps")


def episode_condition(extra: dict) -> tuple[str, str]:
    """(scene, instruction set) an episode ran under, from its metadata's ``extra``; episodes
    recorded before variants existed ran in the base scene with the task's own instruction."""
    return extra.get("scene", BASE_SCENE), extra.get("instruction_set", "default")


def _condition(scene: str | None, instruction_set: str | None) -> tuple[str, str]:
    return scene or BASE_SCENE, instruction_set or "default"


def already_collected(
    dest: Path,
    checkpoint_sha256: str,
    *,
    scene: str | None = None,
    instruction_set: str | None = None,
) -> dict[str, list[int]]:
    """(task -> seeds) of this checkpoint's episodes in ``dest`` that ran to their natural end in
    this scene with this instruction set (a seed run in the base scene is not one of the
    distractor scene's)."""
    want = _condition(scene, instruction_set)
    done: dict[str, list[int]] = {}
    for path in list_episodes(dest):
        ep = read_episode_header(path)
        if (
            ep.policy_sha256 == checkpoint_sha256
            and ep.seed is not None
            and ep.termination in RAN_TO_THE_END
            and episode_condition(ep.extra) == want
        ):
            done.setdefault(ep.task, []).append(ep.seed)
    return done


def run_on_station(
    client: StationClient,
    checkpoint_dir: str | Path,
    tasks: Iterable[str],
    episodes_per_task: int,
    dest: str | Path,
    *,
    seed: int = 0,
    progress: bool = False,
    poll_s: float = 0.25,
    skip: dict[str, list[int]] | None = None,
    scene: str | None = None,
    instruction_set: str | None = None,
) -> DispatchResult:
    """``skip``: (task -> seeds) already collected; default: this checkpoint's finished episodes
    in ``dest`` (a fleet passes those of every arm's folder) of the same scene and instruction set.
    ``scene``: a scene variant of the station's backend; ``instruction_set``: ``"train"`` or
    ``"heldout"`` paraphrases, one per episode seed."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tasks = list(tasks)
    sha = client.upload_checkpoint(checkpoint_dir, progress=progress)
    done = (
        already_collected(dest, sha, scene=scene, instruction_set=instruction_set)
        if skip is None
        else skip
    )
    fetched: list[Path] = []
    try:
        job_id = client.job_submit(
            sha,
            tasks,
            episodes_per_task,
            seed=seed,
            skip=done,
            scene=scene,
            instruction_set=instruction_set,
        )
        status = client.wait_job(
            job_id,
            poll_s=poll_s,
            progress=progress,
            on_episode=lambda name: fetched.append(client.episode_fetch(name, dest)),
        )
    except StationError as e:
        raise DispatchError(
            f"station {client.endpoint} failed during the job: {e}; {len(fetched)} episode(s) of this "
            f"run were copied to {dest} before it stopped and will not be collected again",
            fetched,
        ) from e
    if status["state"] != "done":
        raise DispatchError(
            f"job {status['job_id']} on {client.endpoint} ended {status['state']}: {status['error']}; "
            f"{len(fetched)} episode(s) of this run were copied to {dest} and will not be collected again",
            fetched,
        )
    return summarize_dispatch(
        dest,
        sha,
        tasks,
        episodes_per_task,
        seed,
        skipped=sum(map(len, done.values())),
        scene=scene,
        instruction_set=instruction_set,
    )


def summarize_dispatch(
    dest: Path,
    sha: str,
    tasks: list[str],
    episodes_per_task: int,
    seed: int,
    skipped: int = 0,
    *,
    scene: str | None = None,
    instruction_set: str | None = None,
) -> DispatchResult:
    wanted = {(t, seed + i) for t in tasks for i in range(episodes_per_task)}
    condition = _condition(scene, instruction_set)
    result = DispatchResult(sha, [], skipped=skipped)
    for t in tasks:
        result.per_task[t] = TaskResult(t, 0, 0, 0)
    for path in list_episodes(dest):
        ep = read_episode_header(path)
        if (
            ep.policy_sha256 != sha
            or (ep.task, ep.seed) not in wanted
            or ep.termination not in RAN_TO_THE_END
            or episode_condition(ep.extra) != condition
        ):
            continue
        result.episodes.append(path)
        r = result.per_task[ep.task]
        r.episodes += 1
        if ep.success is not None:
            r.labelled += 1
            r.successes += int(ep.success)
    return result


def format_result(result: DispatchResult) -> str:
    lines = ["| task | episodes | success | 95% CI |", "|---|---|---|---|"]
    for r in result.per_task.values():
        lo, hi = r.ci95
        rate = f"{100 * r.success_rate:.0f}%" if r.labelled else "unlabelled"
        ci = f"[{100 * lo:.0f}, {100 * hi:.0f}]" if r.labelled else "-"
        lines.append(f"| {r.task} | {r.episodes} | {rate} | {ci} |")
    return "\n".join(lines)
