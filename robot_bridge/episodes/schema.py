"""The episode file's schema: names, labels, metadata and the in-memory episode.

File layout (schema 1)::

    /frames             (N, H, W, 3) uint8, one chunk per frame, lzf by default
    /states             (N, 7) float32
    /timestamps         (N,) float64   station monotonic clock
    /seqs               (N,) int64     backend observation sequence numbers
    /actions            (N-1, 7) float32  executed (Bridge-clipped) action after frame t
    /actions_requested  (N-1, 7) float32  the policy's action before clipping
    attrs: schema_version, meta (JSON of EpisodeMeta), started_at, image_shape,
           num_observations, num_actions (commit counters), complete (bool),
           labels (JSON: success, success_source, termination, finished_at) once finished,
           content_sha256 once finished, unobserved_final_action{,_requested} when an aborted
           episode's last action was sent but its result never observed.

An episode file is named ``<episode_id><suffix>``: ``.h5`` complete, ``.partial.h5`` being written,
``.crashed.h5`` / ``.corrupt.h5`` flagged by ``recover_partials``, each of the last two with a JSON
note (``<episode_id>.crashed.json`` / ``.corrupt.json``) beside it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from robot_bridge.spec import ACTION_DIM, TASKS

SCHEMA_VERSION = 1
SUCCESS_SOURCES = ("sim_ground_truth", "detector", "operator", "none")
TERMINATIONS = (
    "success",
    "max_steps",
    "lease_expired",
    "estop",
    "cancelled",
    "client_ended",
    "error",
    "station_crashed",
)
# What `abort` accepts: the station stopped the episode early and holds the arm safe.
ABORT_TERMINATIONS = ("lease_expired", "estop", "cancelled", "client_ended", "error")
# A partial file read before it was finished or recovered carries this termination.
UNFINISHED = "unfinished"

COMPLETE_SUFFIX = ".h5"
PARTIAL_SUFFIX = ".partial.h5"
CRASHED_SUFFIX = ".crashed.h5"
CORRUPT_SUFFIX = ".corrupt.h5"
_NOT_COMPLETE_SUFFIXES = (PARTIAL_SUFFIX, CRASHED_SUFFIX, CORRUPT_SUFFIX)

# No dots, so the suffixes above parse unambiguously.
_EPISODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class EpisodeWriteError(RuntimeError):
    """Writing an episode file failed (disk full, file-size limit, I/O error).

    ``path`` is the file concerned; it is left on disk with every step written before the error.
    """

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class EpisodeReadError(RuntimeError):
    """An episode file cannot be opened or lacks the store's layout."""


@dataclass(frozen=True)
class EpisodeMeta:
    """What is known about an episode before its first step."""

    episode_id: str
    task: str
    instruction: str
    seed: int | None
    station_id: str
    policy_sha256: str
    backend: str
    job_id: str = ""
    extra: dict = field(default_factory=dict)  # JSON-serialisable, e.g. reset attempts

    def __post_init__(self) -> None:
        if not _EPISODE_ID.match(self.episode_id):
            raise ValueError(
                f"episode_id must match {_EPISODE_ID.pattern} (letters, digits, '_', '-'; no dots), "
                f"got {self.episode_id!r}"
            )
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid tasks: {', '.join(sorted(TASKS))}")
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {self.instruction!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be None or an int >= 0, got {self.seed!r}")
        for name in ("station_id", "policy_sha256", "backend", "job_id"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a str, got {getattr(self, name)!r}")
        json.dumps(self.extra)  # fails early, not at the first write

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EpisodeMeta:
        return cls(**json.loads(text))


class EpisodeLike(Protocol):
    """What training reads of an episode: an ``Episode``, an episode read from a LeRobotDataset,
    or a test's own. A reader that needs less (the world model: frames and actions) just ignores
    the rest."""

    instruction: str
    frames: np.ndarray  # (T+1, H, W, 3) uint8
    actions: np.ndarray  # (T, 7) float32


@dataclass
class Episode:
    """One recorded episode; ``read_episode(path)`` returns it.

    T actions and T + 1 observations: frame t is seen before action t, the last frame after the
    last action. For a partial or crashed file only the committed steps are returned.
    """

    episode_id: str
    task: str
    instruction: str
    seed: int | None
    frames: np.ndarray  # (T+1, H, W, 3) uint8
    states: np.ndarray  # (T+1, 7) float32
    timestamps: np.ndarray  # (T+1,) float64, station monotonic clock
    actions: np.ndarray  # (T, 7) float32, executed (Bridge-clipped) action after frame t
    success: bool | None
    success_source: str
    termination: str
    station_id: str
    policy_sha256: str
    complete: bool
    seqs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (T+1,)
    actions_requested: np.ndarray = field(
        default_factory=lambda: np.zeros((0, ACTION_DIM), np.float32)
    )  # (T, 7) before clipping
    backend: str = ""
    job_id: str = ""
    started_at: str = ""  # wall clock, ISO 8601 UTC
    finished_at: str | None = None
    path: Path | None = None
    schema_version: int = SCHEMA_VERSION
    content_sha256: str | None = None
    # An aborted episode whose last action was sent but whose result was never observed.
    unobserved_final_action: np.ndarray | None = None
    recovery: dict | None = None  # the note recover_partials wrote, for crashed files
    extra: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])

    @property
    def first_frame(self) -> np.ndarray:
        return self.frames[0]

    @property
    def meta(self) -> EpisodeMeta:
        return EpisodeMeta(
            episode_id=self.episode_id,
            task=self.task,
            instruction=self.instruction,
            seed=self.seed,
            station_id=self.station_id,
            policy_sha256=self.policy_sha256,
            backend=self.backend,
            job_id=self.job_id,
            extra=self.extra,
        )


@dataclass(frozen=True)
class EpisodeHeader:
    """What most readers need of an episode without decompressing its frames: labels, sizes and
    the first frame (a GRPO start). ``read_episode_header(path)`` returns it."""

    path: Path
    task: str
    instruction: str
    seed: int | None
    policy_sha256: str
    success: bool | None
    success_source: str
    termination: str
    num_frames: int  # T + 1 committed observations
    first_frame: np.ndarray | None  # (H, W, 3) uint8; None for an episode with no observation
    extra: dict = field(default_factory=dict)  # the meta's extra: scene variant, paraphrase set


def episode_id_of(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (*_NOT_COMPLETE_SUFFIXES, COMPLETE_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise ValueError(f"{path} is not an episode file (expected a name ending in {COMPLETE_SUFFIX})")


def _is_incomplete_name(path: Path) -> bool:
    return path.name.endswith(_NOT_COMPLETE_SUFFIXES)


def _note_path(path: Path) -> Path:
    """The JSON note recover_partials writes beside a crashed or corrupt file."""
    return path.with_name(path.name[: -len(".h5")] + ".json")


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _check_labels(success: bool | None, success_source: str, termination: str) -> None:
    if success is not None and not isinstance(success, bool | np.bool_):
        raise ValueError(f"success must be True, False or None, got {success!r}")
    if success_source not in SUCCESS_SOURCES:
        raise ValueError(f"success_source must be one of {SUCCESS_SOURCES}, got {success_source!r}")
    if termination not in TERMINATIONS or termination == "station_crashed":
        raise ValueError(
            f"termination must be one of {[t for t in TERMINATIONS if t != 'station_crashed']}, "
            f"got {termination!r}"
        )
    if (success is None) != (success_source == "none"):
        raise ValueError(
            f"success_source 'none' goes with success None and only with it; "
            f"got success={success!r}, success_source={success_source!r}"
        )
    if termination == "success" and success is not True:
        raise ValueError(f"termination 'success' needs success=True, got {success!r}")


def _episode_hash_update(
    h: hashlib._Hash,
    frame: np.ndarray,
    state: np.ndarray,
    timestamp: float,
    seq: int,
    action: np.ndarray | None,
    requested: np.ndarray | None,
) -> None:
    h.update(np.ascontiguousarray(frame).tobytes())
    h.update(np.asarray(state, np.float32).tobytes())
    h.update(np.float64(timestamp).tobytes())
    h.update(np.int64(seq).tobytes())
    if action is not None:
        h.update(np.asarray(action, np.float32).tobytes())
        h.update(np.asarray(requested, np.float32).tobytes())
