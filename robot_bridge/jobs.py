"""Jobs: the station runs a policy checkpoint for N episodes per task on its own, in closed loop.

This is how checkpoints are dispatched (AutoEval-style): the client uploads a checkpoint, submits
a job, polls its progress and fetches the recorded episodes. The loop runs next to the arm, so a
slow network never stretches a control period.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robot_bridge.backends.base import Observation, RobotBackend
from robot_bridge.backends.scenes import BASE_SCENE
from robot_bridge.episodes import EpisodeMeta, EpisodeWriteError, EpisodeWriter
from robot_bridge.policies.base import Policy, load_policy
from robot_bridge.protocol import ProtocolError
from robot_bridge.protocol import field as arg
from robot_bridge.spec import (
    INSTRUCTION_SETS,
    TASKS,
    UnknownTaskError,
    clip_action,
    get_task,
    pick_instruction,
    validate_action,
)

if TYPE_CHECKING:
    from robot_bridge.checkpoints import CheckpointStore
    from robot_bridge.station import StationConfig

log = logging.getLogger("gymnast.station.jobs")


class JobStopped(Exception):
    """Raised inside the episode loop when an e-stop or cancel arrives."""

    def __init__(self, termination: str) -> None:
        super().__init__(termination)
        self.termination = termination


@dataclass
class JobSpec:
    checkpoint_sha256: str
    tasks: list[str]
    episodes_per_task: int
    seed: int = 0
    # (task -> seeds) already collected in an earlier, interrupted run: not driven again.
    skip_seeds: dict = field(default_factory=dict)
    instructions: dict = field(default_factory=dict)  # task -> instruction override
    scene: str | None = None  # a scene variant of the backend; None: the base scene
    instruction_set: str = "default"  # or "train" / "heldout": a paraphrase per episode seed

    def plan(self) -> list[tuple[str, int]]:
        skip = {task: set(seeds) for task, seeds in self.skip_seeds.items()}
        return [
            (task, self.seed + i)
            for task in self.tasks
            for i in range(self.episodes_per_task)
            if self.seed + i not in skip.get(task, ())
        ]

    @classmethod
    def from_wire(cls, args: dict) -> JobSpec:
        """A job_submit request's arguments, checked; raises ProtocolError naming the field."""
        tasks = arg(
            args, "tasks", list, check=lambda t: 0 < len(t) <= 16, what="a list of 1..16 task names"
        )
        for t in tasks:
            _task_name(t)
        skip = arg(args, "skip", dict, default={})
        for task, seeds in skip.items():  # tasks outside this job may be listed; they are unused
            _task_name(task)
            if not isinstance(seeds, list) or len(seeds) > MAX_EPISODES:
                raise ProtocolError(
                    "bad_request",
                    f"field 'skip' maps a task to a list of at most {MAX_EPISODES} seeds, got {task!r}",
                )
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
                raise ProtocolError("bad_request", f"field 'skip': seeds of {task!r} must be ints")
        instructions = arg(args, "instructions", dict, default={})
        for task, text in instructions.items():
            _task_name(task)
            if not (isinstance(text, str) and 0 < len(text) <= 512):
                raise ProtocolError(
                    "bad_request",
                    f"field 'instructions' maps a task to 1..512 chars, got {task!r}: {text!r}",
                )
        instruction_set = instruction_set_arg(args)
        if instructions and instruction_set != "default":
            raise ProtocolError(
                "bad_request",
                f"fields 'instructions' and 'instruction_set' ({instruction_set!r}) exclude each "
                "other: name the instructions, or let the station pick paraphrases",
            )
        return cls(
            checkpoint_sha256=args["checkpoint"],
            tasks=list(tasks),
            episodes_per_task=arg(
                args,
                "episodes_per_task",
                int,
                check=lambda n: 1 <= n <= MAX_EPISODES,
                what=f"1..{MAX_EPISODES}",
            ),
            seed=arg(
                args,
                "seed",
                int,
                default=0,
                check=lambda s: 0 <= s < 2**62,
                what="a non-negative int",
            ),
            skip_seeds=skip,
            instructions=instructions,
            scene=scene_arg(args),
            instruction_set=instruction_set,
        )

    def instruction(self, task: str, seed: int) -> str:
        if task in self.instructions:
            return self.instructions[task]
        return pick_instruction(task, self.instruction_set, seed)


MAX_EPISODES = 1000  # per task in one job


def scene_arg(args: dict) -> str | None:
    """The optional ``scene`` field: None for the base scene (also when named ``"base"``). Whether
    the backend has the variant is checked by ``check_scene``."""
    scene = arg(
        args, "scene", str, default=None, check=lambda s: 0 < len(s) <= 64, what="1..64 chars"
    )
    return None if scene == BASE_SCENE else scene


def instruction_set_arg(args: dict) -> str:
    return arg(
        args,
        "instruction_set",
        str,
        default="default",
        check=lambda s: s in INSTRUCTION_SETS,
        what=f"one of {', '.join(INSTRUCTION_SETS)}",
    )


def backend_scenes(backend: RobotBackend) -> tuple[str, ...]:
    """Every scene the backend can reset into: the base scene and its named variants."""
    return (BASE_SCENE, *backend.scene_variants)


def check_tasks(backend: RobotBackend, tasks) -> None:
    """Refuse a task whose objects the backend's scene lacks (``unknown_task``): a real arm's
    table has no cups, so a language task there would run an episode nobody can succeed at."""
    missing = [t for t in tasks if t not in backend.tasks]
    if missing:
        raise ProtocolError(
            "unknown_task",
            f"backend {backend.info.name!r} has no scene for task(s) {missing}; its tasks: "
            f"{', '.join(backend.tasks)}",
        )


def check_scene(backend: RobotBackend, scene: str | None) -> None:
    """Refuse a scene the backend does not have (``unknown_scene``, naming the valid ones)."""
    valid = backend_scenes(backend)
    if scene is None or scene in valid:
        return
    name = backend.info.name
    if len(valid) == 1:
        raise ProtocolError(
            "unknown_scene",
            f"backend {name!r} has no scene variants (only {BASE_SCENE!r}); got scene {scene!r}",
        )
    raise ProtocolError(
        "unknown_scene",
        f"unknown scene {scene!r} for backend {name!r}; valid scenes: {', '.join(valid)}",
    )


def reset_in_scene(backend: RobotBackend, task: str, seed: int | None, scene: str | None):
    """``backend.reset`` in ``scene``; the base scene is a plain ``reset(task, seed)``, so a
    backend without variants never sees the argument."""
    if scene is None:
        return backend.reset(task, seed)
    return backend.reset(task, seed, scene=scene)


def scene_extra(backend: RobotBackend, scene: str | None, instruction_set: str) -> dict:
    """What an episode's metadata records of its scene variant and paraphrase set (nothing for
    the base scene and the task's own instruction, so those episodes are as they always were)."""
    extra: dict = {}
    if scene is not None:
        extra["scene"] = scene
        extra["scene_params"] = getattr(backend, "scene_params", None)
    if instruction_set != "default":
        extra["instruction_set"] = instruction_set
    return extra


def _task_name(name: object) -> str:
    if not isinstance(name, str):
        raise ProtocolError("bad_request", f"task names must be strings, got {name!r}")
    try:
        return get_task(name).name
    except UnknownTaskError as e:
        raise ProtocolError("unknown_task", str(e)) from None


# at most this many finished episodes per job_status reply (~200 bytes each, header limit 64 KiB)
JOB_STATUS_PAGE = 128


@dataclass
class Job:
    job_id: str
    spec: JobSpec
    owner: str | None = None  # the submitter's public key (None without CURVE)
    state: str = "queued"  # queued | running | done | failed | cancelled | estopped
    error: str | None = None
    episode_files: list[str] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    current: dict | None = None
    total: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: str) -> None:
        if self.state in ("queued", "running"):
            self.error = reason
            self._cancel.set()

    def status(self, since: int = 0, limit: int = JOB_STATUS_PAGE) -> dict:
        """Counts and per-task results of the whole job, and the finished episodes (names and
        results) ``since`` .. ``since + limit``: a reply stays small whatever the job's size (a
        400-episode job listed in full overflowed the 64 KiB header limit). ``listed`` is how many
        can be paged; both lists are sliced at the same count, so they stay aligned."""
        state = self.state  # first: a job that has ended has appended its last episode
        listed = min(len(self.episode_files), len(self.results))
        upto = min(listed, since + min(limit, JOB_STATUS_PAGE))
        per_task: dict[str, dict] = {}
        for r in self.results:
            t = per_task.setdefault(r["task"], {"episodes": 0, "successes": 0, "labelled": 0})
            t["episodes"] += 1
            if r["success"] is not None:
                t["labelled"] += 1
                t["successes"] += int(r["success"])
        return {
            "job_id": self.job_id,
            "state": state,
            "error": self.error,
            "done": len(self.results),
            "total": self.total,
            "current": self.current,
            "listed": listed,
            "since": since,
            "episodes": [Path(p).name for p in self.episode_files[since:upto]],
            "results": self.results[since:upto],
            "per_task": per_task,
            "elapsed_s": (self.finished_at or time.monotonic()) - self.started_at
            if self.started_at
            else 0.0,
        }


class JobRunner:
    """Runs at most one job at a time in a worker thread."""

    def __init__(
        self,
        backend: RobotBackend,
        arm: threading.RLock,
        estop: threading.Event,
        checkpoints: CheckpointStore,
        config: StationConfig,
    ) -> None:
        self.backend = backend
        self.arm = arm
        self.estop = estop
        self.checkpoints = checkpoints
        self.config = config
        self._jobs: dict[str, Job] = {}
        self._thread: threading.Thread | None = None
        self._active: Job | None = None

    def running(self) -> Job | None:
        job = self._active
        return job if job is not None and job.state in ("queued", "running") else None

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def submit(self, spec: JobSpec, owner: str | None = None) -> Job:
        check_scene(self.backend, spec.scene)
        check_tasks(self.backend, spec.tasks)
        if self.running() is not None:
            raise RuntimeError(f"job {self._active.job_id} is still running; one job at a time")
        job = Job(job_id=uuid.uuid4().hex[:12], spec=spec, owner=owner, total=len(spec.plan()))
        self._jobs[job.job_id] = job
        self._active = job
        self._thread = threading.Thread(
            target=self._run, args=(job,), name=f"job-{job.job_id}", daemon=True
        )
        self._thread.start()
        return job

    def cancel_all(self, reason: str) -> None:
        job = self.running()
        if job is not None:
            job.cancel(reason)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, job: Job) -> None:
        job.state, job.started_at = "running", time.monotonic()
        try:
            policy = load_policy(self.checkpoints.path(job.spec.checkpoint_sha256), self.backend)
            for task, seed in job.spec.plan():
                job.current = {"task": task, "seed": seed}
                self._episode(job, policy, task, seed)
            job.current = None
            job.state = "done"
        except JobStopped as stop:
            if stop.termination == "estop":
                job.error = "e-stop during the job"
            job.state = "estopped" if stop.termination == "estop" else "cancelled"
        except Exception as e:
            job.error = f"{type(e).__name__}: {e}"  # before the state, which pollers watch
            job.state = "failed"
            log.error("job %s failed:\n%s", job.job_id, traceback.format_exc())
            with self.arm:
                self.backend.hold_safe()
        finally:
            job.current = None
            job.finished_at = time.monotonic()

    def _check(self, job: Job) -> None:
        if self.estop.is_set():
            raise JobStopped("estop")
        if job._cancel.is_set():
            raise JobStopped("cancelled")

    def _episode(self, job: Job, policy: Policy, task: str, seed: int) -> None:
        self._check(job)
        instruction = job.spec.instruction(task, seed)
        with self.arm:
            obs = reset_in_scene(self.backend, task, seed, job.spec.scene)
            extra = scene_extra(self.backend, job.spec.scene, job.spec.instruction_set)
        writer = EpisodeWriter(
            self.config.episodes_dir,
            EpisodeMeta(
                episode_id=f"{time.strftime('%Y%m%dT%H%M%S')}-{job.job_id}-{task}-{seed}",
                task=task,
                instruction=instruction,
                seed=seed,
                station_id=self.config.station_id,
                policy_sha256=job.spec.checkpoint_sha256,
                backend=self.backend.info.name,
                extra=extra,
            ),
            image_shape=obs.image.shape,
        )
        termination, error, cursor = "error", None, [obs]
        try:
            policy.reset(
                task, instruction, seed
            )  # inside: a failing reset still closes the episode
            termination = self._drive(job, policy, writer, task, instruction, cursor)
        except JobStopped as stop:
            termination, error = stop.termination, stop
        except EpisodeWriteError:
            with self.arm:
                self.backend.hold_safe()
            writer.close()  # release the HDF5 handle; the partial file stays, flagged by its name
            raise  # the partial file stays on disk; the job fails with the writer's message
        except Exception as e:
            termination, error = "error", e
        self._finish(job, writer, task, seed, termination, cursor[0])
        if error is not None:
            raise error

    def _drive(
        self,
        job: Job,
        policy: Policy,
        writer: EpisodeWriter,
        task: str,
        instruction: str,
        cursor: list[Observation],
    ) -> str:
        """Closed loop until success or the step limit; ``cursor[0]`` is always the latest frame."""
        max_steps, steps = TASKS[task].max_steps, 0
        while True:
            self._check(job)
            chunk = np.asarray(policy.act(cursor[0], instruction))
            if chunk.ndim != 2 or chunk.shape[1] != 7 or len(chunk) == 0:
                raise ValueError(
                    f"policy returned an action chunk of shape {chunk.shape}; expected (K, 7)"
                )
            for requested in chunk:
                self._check(job)
                requested = validate_action(requested)  # NaN/inf from a policy stops the episode
                action, _ = clip_action(requested)
                with self.arm:
                    self._check(job)
                    writer.prepare(cursor[0], action, requested)  # the arm moves only if recordable
                    outcome = self.backend.step(action)
                    success = self.backend.success()
                writer.append(cursor[0], action, requested_action=requested)
                cursor[0], steps = outcome.observation, steps + 1
                if success:
                    return "success"
                if steps >= max_steps:
                    return "max_steps"

    def _finish(
        self,
        job: Job,
        writer: EpisodeWriter,
        task: str,
        seed: int,
        termination: str,
        obs: Observation,
    ) -> None:
        if termination in ("estop", "error", "cancelled"):
            with self.arm:
                self.backend.hold_safe()
        writer.append(obs, None)
        truth = self.backend.success()
        source = "sim_ground_truth" if truth is not None else "none"
        path = writer.finish(success=truth, success_source=source, termination=termination)
        job.episode_files.append(str(path))
        job.results.append(
            {
                "task": task,
                "seed": seed,
                "success": truth,
                "termination": termination,
                "episode": Path(path).name,
            }
        )
