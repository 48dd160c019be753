"""Crash-safe HDF5 episode store: one file per episode, written step by step on the robot host.

Real-robot episodes are the most expensive data a lab has, so the store is built so that no
failure loses one:

- An episode is written to ``<episode_id>.partial.h5`` while it runs. Every ``append`` writes one
  observation (frame, state, timestamp, seq) and the action executed after it, bumps the commit
  counters ``num_observations`` / ``num_actions``, flushes HDF5's caches and fsyncs, so a killed
  station (or a power cut) leaves every completed step readable.
- ``finish`` / ``abort`` write the labels and a content checksum, fsync, close, and only then
  rename the file to ``<episode_id>.h5`` (and fsync the folder). The rename is the commit: a
  file named ``<episode_id>.h5`` is always complete.
- ``recover_partials`` (run at station start-up) renames a leftover partial file to
  ``<id>.crashed.h5`` (readable, termination ``station_crashed``) or ``<id>.corrupt.h5`` (HDF5
  cannot open it), each with a JSON note beside it. Their bytes are never modified and they are
  never listed as complete.
- Write failures (disk full, file-size limit, I/O errors) raise ``EpisodeWriteError`` naming the
  file; what was already written stays on disk.

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

This module runs on the robot host: it imports only numpy, h5py and the standard library (plus
``robot_bridge.spec``, which is numpy-only).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from robot_bridge.spec import ACTION_DIM, ACTION_HIGH, ACTION_LOW, IMAGE_SHAPE, STATE_DIM, TASKS

if TYPE_CHECKING:
    from robot_bridge.backends.base import Observation

log = logging.getLogger(__name__)

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
_ACTION_TOL = 1e-6
# Room reserved beyond one frame for HDF5's own metadata (chunk index nodes, attributes).
_RESERVE_MARGIN = 64 * 1024


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


def make_episode_id(station_id: str, task: str) -> str:
    """A unique, sortable id: ``<station>-<task>-<UTC time>-<random>``."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    safe_station = re.sub(r"[^A-Za-z0-9_-]", "_", station_id) or "station"
    return f"{safe_station}-{task}-{stamp}-{uuid.uuid4().hex[:8]}"


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename_no_clobber(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, refusing to replace an existing file (an episode id is unique)."""
    if dst.exists():
        raise FileExistsError(f"refusing to overwrite {dst} with {src}")
    os.rename(src, dst)
    _fsync_dir(dst.parent)


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


class EpisodeWriter:
    """Write one episode step by step; ``finish`` or ``abort`` commits it.

    Usage::

        with EpisodeWriter(root, meta) as w:
            w.append(obs, action, requested_action=raw)  # ... per step
            w.append(final_obs, None)
            path = w.finish(success=True, success_source="sim_ground_truth", termination="success")

    Leaving the ``with`` block through an exception aborts the episode with termination "error"
    (the episode is kept), or, if the file itself failed, closes it and leaves the partial file.

    ``fsync_every_step`` makes each step survive a power cut, not only a killed process (about
    0.5 ms per step on an SSD). ``compression`` is "lzf" (cheap, helps on rendered or smooth
    images) or None.
    """

    def __init__(
        self,
        root: str | Path,
        meta: EpisodeMeta,
        image_shape: tuple[int, int, int] = IMAGE_SHAPE,
        *,
        compression: str | None = "lzf",
        fsync_every_step: bool = True,
    ) -> None:
        if len(image_shape) != 3 or image_shape[2] != 3 or min(image_shape) <= 0:
            raise ValueError(f"image_shape must be (H, W, 3), got {image_shape}")
        if compression not in ("lzf", None):
            raise ValueError(f"compression must be 'lzf' or None, got {compression!r}")
        self.meta = meta
        self.image_shape = tuple(int(x) for x in image_shape)
        self.root = Path(root)
        self.partial_path = self.root / f"{meta.episode_id}{PARTIAL_SUFFIX}"
        self.final_path = self.root / f"{meta.episode_id}{COMPLETE_SUFFIX}"
        self._fsync_every_step = fsync_every_step
        self._hash = hashlib.sha256()
        self._num_obs = 0
        self._num_actions = 0
        self._last_seq: int | None = None
        self._last_timestamp: float | None = None
        self._failed: EpisodeWriteError | None = None
        self._closed = False
        self._file: h5py.File | None = None
        self._fd: int | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        for p in (
            self.final_path,
            *[self.root / f"{meta.episode_id}{s}" for s in _NOT_COMPLETE_SUFFIXES],
        ):
            if p.exists():
                raise FileExistsError(f"episode {meta.episode_id} already has a file: {p}")
        try:
            self._guard("create the file", lambda: self._create(compression))
        except BaseException:
            self.close()
            raise

    # -- writing -------------------------------------------------------------------------------

    def _create(self, compression: str | None) -> None:
        self._file = f = h5py.File(self.partial_path, "w-")
        h, w, c = self.image_shape
        comp = {"compression": compression} if compression else {}
        f.create_dataset(
            "frames",
            (0, h, w, c),
            maxshape=(None, h, w, c),
            chunks=(1, h, w, c),
            dtype=np.uint8,
            **comp,
        )
        for name, width, dtype in (
            ("states", STATE_DIM, np.float32),
            ("actions", ACTION_DIM, np.float32),
            ("actions_requested", ACTION_DIM, np.float32),
        ):
            f.create_dataset(
                name, (0, width), maxshape=(None, width), chunks=(128, width), dtype=dtype
            )
        f.create_dataset("timestamps", (0,), maxshape=(None,), chunks=(128,), dtype=np.float64)
        f.create_dataset("seqs", (0,), maxshape=(None,), chunks=(128,), dtype=np.int64)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["meta"] = self.meta.to_json()
        f.attrs["started_at"] = _utc_now()
        f.attrs["image_shape"] = np.array(self.image_shape, np.int64)
        f.attrs["num_observations"] = 0
        f.attrs["num_actions"] = 0
        f.attrs["complete"] = False
        # A second descriptor, only to reserve disk space ahead of HDF5 (see _reserve).
        self._fd = os.open(self.partial_path, os.O_RDWR)
        self._sync()
        _fsync_dir(self.root)  # the partial file's name must survive a power cut too

    def _guard(self, what: str, fn):
        """Run a write; turn any I/O failure into EpisodeWriteError and refuse later writes."""
        if self._failed is not None:
            raise EpisodeWriteError(
                f"episode {self.meta.episode_id}: cannot {what}, an earlier write to "
                f"{self.partial_path} failed ({self._failed}); the partial file is kept",
                self.partial_path,
            ) from self._failed
        if self._closed:
            raise RuntimeError(f"episode {self.meta.episode_id} is already closed; cannot {what}")
        try:
            return fn()
        except (OSError, RuntimeError) as e:
            err = EpisodeWriteError(
                f"episode {self.meta.episode_id}: could not {what} in {self.partial_path}: "
                f"{type(e).__name__}: {e}. Steps written before this one stay in that file "
                f"({self._num_obs} observations committed).",
                self.partial_path,
            )
            self._failed = err
            raise err from e

    def _reserve(self, nbytes: int) -> None:
        """Allocate disk space past HDF5's end of file before HDF5 writes into it.

        HDF5 cannot recover from a failed write: its dirty cache can then never be flushed,
        close fails and the process may crash at exit. Reserving first turns disk-full and
        file-size limits into an error raised while the file is still consistent. The file
        may end with up to one step of reserved, unused space.
        """
        os.posix_fallocate(self._fd, self._file.id.get_filesize(), nbytes)

    def _sync(self) -> None:
        self._file.flush()
        if self._fsync_every_step:
            os.fsync(self._file.id.get_vfd_handle())

    def append(
        self,
        obs: Observation,
        action: np.ndarray | None,
        requested_action: np.ndarray | None = None,
    ) -> int:
        """Record ``obs`` and the action executed after it (None for the final observation).

        ``requested_action`` is the policy's action before Bridge clipping (defaults to
        ``action``). Returns the number of committed observations.
        """
        if self._num_obs > self._num_actions:
            raise RuntimeError(
                f"episode {self.meta.episode_id}: the final observation (action=None) was already "
                "appended; call finish() or abort()"
            )
        image, state, action, requested = self._check_step(obs, action, requested_action)
        self._guard("append a step", lambda: self._write_step(obs, image, state, action, requested))
        return self._num_obs

    def prepare(
        self, obs: Observation, action: np.ndarray, requested_action: np.ndarray | None = None
    ) -> None:
        """Check a step and reserve its disk space without writing it: call before the arm
        moves, so that a step ``append`` would refuse (bad values, full disk) never moves it.
        Raises ValueError or EpisodeWriteError as ``append`` would."""
        if self._num_obs > self._num_actions:
            raise RuntimeError(
                f"episode {self.meta.episode_id}: the final observation was already appended"
            )
        image, *_ = self._check_step(obs, action, requested_action)
        self._guard(
            "reserve space for a step", lambda: self._reserve(image.nbytes + _RESERVE_MARGIN)
        )

    def _check_step(self, obs, action, requested):
        image = np.asarray(obs.image)
        if image.shape != self.image_shape or image.dtype != np.uint8:
            raise ValueError(
                f"episode {self.meta.episode_id}: frame must be {self.image_shape} uint8, "
                f"got {image.shape} {image.dtype}"
            )
        state = np.asarray(obs.state, np.float32)
        if state.shape != (STATE_DIM,) or not np.all(np.isfinite(state)):
            raise ValueError(f"state must be ({STATE_DIM},) and finite, got {state.tolist()}")
        if self._last_seq is not None and (
            obs.seq <= self._last_seq or obs.timestamp <= self._last_timestamp
        ):
            raise ValueError(
                f"observation must be newer than the last one: seq {obs.seq} after {self._last_seq}, "
                f"timestamp {obs.timestamp} after {self._last_timestamp}"
            )
        if action is None:
            if requested is not None:
                raise ValueError("requested_action given without an action")
            return image, state, None, None
        action = _check_action(action, "action")
        requested = action if requested is None else _check_action(requested, "requested_action")
        return image, state, action, requested

    def _write_step(self, obs, image, state, action, requested) -> None:
        self._reserve(image.nbytes + _RESERVE_MARGIN)
        f, n = self._file, self._num_obs
        for name, value in (
            ("frames", image),
            ("states", state),
            ("timestamps", obs.timestamp),
            ("seqs", obs.seq),
        ):
            f[name].resize(n + 1, axis=0)
            f[name][n] = value
        if action is not None:
            for name, value in (("actions", action), ("actions_requested", requested)):
                f[name].resize(n + 1, axis=0)
                f[name][n] = value
        # The counters are the commit: a reader trusts them over dataset lengths.
        f.attrs["num_observations"] = n + 1
        f.attrs["num_actions"] = n + 1 if action is not None else n
        self._sync()
        self._num_obs = n + 1
        self._num_actions = n + 1 if action is not None else n
        self._last_seq, self._last_timestamp = int(obs.seq), float(obs.timestamp)
        _episode_hash_update(self._hash, image, state, obs.timestamp, obs.seq, action, requested)

    # -- committing ----------------------------------------------------------------------------

    def finish(self, *, success: bool | None, success_source: str, termination: str) -> Path:
        """Write the labels, fsync, close and atomically rename to ``<episode_id>.h5``."""
        _check_labels(success, success_source, termination)
        if self._num_obs == 0 or self._num_obs == self._num_actions:
            raise RuntimeError(
                f"episode {self.meta.episode_id}: append the final observation with action=None "
                f"before finish() ({self._num_obs} observations, {self._num_actions} actions)"
            )
        return self._commit(success, success_source, termination)

    def abort(self, termination: str) -> Path | None:
        """Keep the episode, complete and unlabelled (success None), after a safe stop.

        A last action that was sent but whose result was never observed is kept in the
        ``unobserved_final_action`` attribute. With no observation recorded at all there is
        nothing to keep: the empty file is removed and None returned.
        """
        if termination not in ABORT_TERMINATIONS:
            raise ValueError(
                f"abort termination must be one of {', '.join(ABORT_TERMINATIONS)}, got {termination!r}"
            )
        if self._num_obs == 0 and self._failed is None:
            self.close()
            self.partial_path.unlink()
            return None
        if self._num_obs == self._num_actions:
            self._guard("keep the unobserved final action", self._move_dangling_action)
        return self._commit(None, "none", termination)

    def _move_dangling_action(self) -> None:
        f, n = self._file, self._num_actions
        f.attrs["unobserved_final_action"] = f["actions"][n - 1]
        f.attrs["unobserved_final_action_requested"] = f["actions_requested"][n - 1]
        for name in ("actions", "actions_requested"):
            f[name].resize(n - 1, axis=0)
        f.attrs["num_actions"] = n - 1
        self._num_actions = n - 1

    def _commit(self, success: bool | None, success_source: str, termination: str) -> Path:
        labels = {
            "success": None if success is None else bool(success),  # np.bool_ is not JSON
            "success_source": success_source,
            "termination": termination,
            "finished_at": _utc_now(),
        }

        def write_labels() -> None:
            self._reserve(_RESERVE_MARGIN)
            self._file.attrs["labels"] = json.dumps(labels)
            self._file.attrs["content_sha256"] = self._hash.hexdigest()
            self._file.attrs["complete"] = True
            self._file.flush()
            os.fsync(self._file.id.get_vfd_handle())
            self._file.close()
            os.close(self._fd)
            self._file, self._fd, self._closed = None, None, True

        self._guard("write the labels", write_labels)
        try:
            _rename_no_clobber(self.partial_path, self.final_path)
        except OSError as e:
            raise EpisodeWriteError(
                f"episode {self.meta.episode_id}: labels written but renaming {self.partial_path} "
                f"to {self.final_path} failed: {e}; recover_partials will finish it",
                self.partial_path,
            ) from e
        return self.final_path

    def close(self) -> None:
        """Release the file without committing; the partial file stays for recover_partials."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            with contextlib.suppress(Exception):  # the file may be broken after a failed write
                self._file.close()
        if self._fd is not None:
            os.close(self._fd)
        self._file, self._fd = None, None

    @property
    def num_observations(self) -> int:
        return self._num_obs

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
            log.warning("episode %s left unfinished; partial file kept", self.meta.episode_id)
        elif self._failed is not None:
            self.close()
        else:
            try:
                self.abort("error")
            except Exception:
                log.exception("could not abort episode %s; partial file kept", self.meta.episode_id)
                self.close()


def _check_action(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if (
        a.shape != (ACTION_DIM,)
        or not np.issubdtype(a.dtype, np.floating)
        or not np.all(np.isfinite(a))
    ):
        raise ValueError(f"{name} must be a finite float ({ACTION_DIM},) array, got {a!r}")
    return a.astype(np.float32)


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


# -- reading --------------------------------------------------------------------------------------


def episode_id_of(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (*_NOT_COMPLETE_SUFFIXES, COMPLETE_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise ValueError(f"{path} is not an episode file (expected a name ending in {COMPLETE_SUFFIX})")


def _note_path(path: Path) -> Path:
    """The JSON note recover_partials writes beside a crashed or corrupt file."""
    return path.with_name(path.name[: -len(".h5")] + ".json")


def _read_layout(path: Path, read):
    """``read(f)`` on the open episode file; a file HDF5 cannot open, or one without the store's
    layout, is an ``EpisodeReadError`` naming it."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise EpisodeReadError(f"cannot open episode file {path}: {e}") from e
    with f:
        try:
            return read(f)
        except (KeyError, OSError, ValueError) as e:
            raise EpisodeReadError(
                f"{path} lacks the episode layout: {type(e).__name__}: {e}"
            ) from e


def _labels(f: h5py.File, path: Path) -> dict:
    """The labels ``finish``/``abort`` wrote; an unfinished or crashed file has none yet."""
    if "labels" in f.attrs:
        return json.loads(f.attrs["labels"])
    crashed = path.name.endswith(CRASHED_SUFFIX)
    return {
        "success": None,
        "success_source": "none",
        "termination": "station_crashed" if crashed else UNFINISHED,
        "finished_at": None,
    }


def read_episode(path: str | Path) -> Episode:
    """Read a complete, partial or crashed episode file (only committed steps of unfinished ones)."""
    path = Path(path)

    def read(f: h5py.File):
        n_obs, n_act = _committed_counts(f)
        data = {
            name: f[name][:n]
            for name, n in (
                ("frames", n_obs),
                ("states", n_obs),
                ("timestamps", n_obs),
                ("seqs", n_obs),
                ("actions", n_act),
                ("actions_requested", n_act),
            )
        }
        attrs = {
            k: f.attrs[k]
            for k in ("started_at", "schema_version", "content_sha256")
            if k in f.attrs
        }
        meta = EpisodeMeta.from_json(f.attrs["meta"])
        complete = bool(f.attrs["complete"])
        return meta, _labels(f, path), data, complete, attrs, _dangling_action(f, n_obs)

    meta, labels, data, complete, attrs, dangling = _read_layout(path, read)
    recovery = None
    if path.name.endswith(CRASHED_SUFFIX):
        note = _note_path(path)
        recovery = json.loads(note.read_text()) if note.exists() else {}
    return Episode(
        episode_id=meta.episode_id,
        task=meta.task,
        instruction=meta.instruction,
        seed=meta.seed,
        frames=data["frames"],
        states=data["states"],
        timestamps=data["timestamps"],
        actions=data["actions"],
        success=labels["success"],
        success_source=labels["success_source"],
        termination=labels["termination"],
        station_id=meta.station_id,
        policy_sha256=meta.policy_sha256,
        complete=complete and not _is_incomplete_name(path),
        seqs=data["seqs"],
        actions_requested=data["actions_requested"],
        backend=meta.backend,
        job_id=meta.job_id,
        started_at=str(attrs.get("started_at", "")),
        finished_at=labels["finished_at"],
        path=path,
        schema_version=int(attrs.get("schema_version", -1)),
        content_sha256=str(attrs["content_sha256"]) if "content_sha256" in attrs else None,
        unobserved_final_action=None if dangling is None else np.asarray(dangling, np.float32),
        recovery=recovery,
        extra=meta.extra,
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


def read_episode_header(path: str | Path) -> EpisodeHeader:
    """Meta, labels and frame 0 of an episode file: one frame read instead of T + 1, so listing
    a few hundred episodes for their labels costs megabytes, not gigabytes."""
    path = Path(path)

    def read(f: h5py.File):
        n_obs, _ = _committed_counts(f)
        first = f["frames"][0] if n_obs else None
        return EpisodeMeta.from_json(f.attrs["meta"]), _labels(f, path), n_obs, first

    meta, labels, n_obs, first = _read_layout(path, read)
    return EpisodeHeader(
        path=path,
        task=meta.task,
        instruction=meta.instruction,
        seed=meta.seed,
        policy_sha256=meta.policy_sha256,
        success=labels["success"],
        success_source=labels["success_source"],
        termination=labels["termination"],
        num_frames=n_obs,
        first_frame=first,
    )


def _committed_counts(f: h5py.File) -> tuple[int, int]:
    """Observations and actions a reader may trust: the commit counters, capped by the data."""
    n_obs = min(
        int(f.attrs["num_observations"]),
        *(f[k].shape[0] for k in ("frames", "states", "timestamps", "seqs")),
    )
    n_act = min(int(f.attrs["num_actions"]), f["actions"].shape[0], f["actions_requested"].shape[0])
    # A crash after an action was sent leaves one action with no observation after it.
    return n_obs, min(n_act, max(n_obs - 1, 0))


def _dangling_action(f: h5py.File, n_obs: int) -> np.ndarray | None:
    """The last action sent whose result was never observed: moved to an attribute by ``abort``,
    or, in a file cut off by a crash, the committed action after the last observation."""
    if "unobserved_final_action" in f.attrs:
        return f.attrs["unobserved_final_action"]
    if n_obs > 0 and int(f.attrs["num_actions"]) >= n_obs and f["actions"].shape[0] >= n_obs:
        return f["actions"][n_obs - 1]
    return None


def _is_incomplete_name(path: Path) -> bool:
    return path.name.endswith(_NOT_COMPLETE_SUFFIXES)


def list_episodes(root: str | Path, include_partial: bool = False) -> list[Path]:
    """Episode files under ``root`` (recursively), sorted.

    By default only complete ones (``<id>.h5``); with ``include_partial`` also ``.partial.h5``
    and ``.crashed.h5`` files. Corrupt files are never listed (see ``list_corrupt``).
    """
    out = []
    for p in sorted(Path(root).rglob(f"*{COMPLETE_SUFFIX}")):
        if p.name.endswith(CORRUPT_SUFFIX):
            continue
        if not _is_incomplete_name(p) or include_partial:
            out.append(p)
    return out


def list_corrupt(root: str | Path) -> list[Path]:
    return sorted(Path(root).rglob(f"*{CORRUPT_SUFFIX}"))


# -- validation -----------------------------------------------------------------------------------

_DTYPES = {
    "frames": np.uint8,
    "states": np.float32,
    "timestamps": np.float64,
    "seqs": np.int64,
    "actions": np.float32,
    "actions_requested": np.float32,
}


def validate_episode(path: str | Path) -> list[str]:
    """Problems that make an episode unfit for training; an empty list means valid and complete."""
    return _validate_path(Path(path), check_name=True)


def _validate_path(path: Path, check_name: bool) -> list[str]:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return [f"cannot open as HDF5: {e}"]
    with f:
        try:
            return _validate_open(f, path, check_name)
        except (KeyError, OSError, ValueError, TypeError) as e:
            return [f"unreadable episode layout: {type(e).__name__}: {e}"]


def _validate_open(f: h5py.File, path: Path, check_name: bool) -> list[str]:
    problems = []
    if f.attrs.get("schema_version") != SCHEMA_VERSION:
        problems.append(
            f"schema_version {f.attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    try:
        meta = EpisodeMeta.from_json(f.attrs["meta"])
    except (KeyError, TypeError, ValueError) as e:
        problems.append(f"meta missing or invalid: {e}")
        meta = None
    if meta is not None and episode_id_of(path) != meta.episode_id:
        problems.append(f"file name {path.name} does not match episode_id {meta.episode_id}")
    missing = [k for k in _DTYPES if k not in f]
    if missing:
        return [*problems, f"missing datasets: {missing}"]
    problems += _validate_arrays(f)
    problems += _validate_labels(f)
    if not bool(f.attrs.get("complete", False)) or (check_name and _is_incomplete_name(path)):
        problems.append(
            f"episode is not complete (file {path.name}, complete={f.attrs.get('complete')})"
        )
    if not problems:
        problems += _validate_checksum(f)
    return problems


def _validate_arrays(f: h5py.File) -> list[str]:
    problems = []
    for name, dtype in _DTYPES.items():
        if f[name].dtype != dtype:
            problems.append(f"{name} dtype {f[name].dtype}, expected {np.dtype(dtype)}")
    n = f["frames"].shape[0]
    h, w, c = (int(x) for x in f.attrs.get("image_shape", IMAGE_SHAPE))
    expected = {
        "frames": (n, h, w, c),
        "states": (n, STATE_DIM),
        "timestamps": (n,),
        "seqs": (n,),
        "actions": (n - 1, ACTION_DIM),
        "actions_requested": (n - 1, ACTION_DIM),
    }
    for name, shape in expected.items():
        if f[name].shape != shape:
            problems.append(f"{name} shape {f[name].shape}, expected {shape} (T+1 = {n} frames)")
    if n < 1:
        problems.append("no observations")
    if (int(f.attrs.get("num_observations", -1)), int(f.attrs.get("num_actions", -1))) != (
        n,
        n - 1,
    ):
        problems.append(
            f"commit counters {f.attrs.get('num_observations')}/{f.attrs.get('num_actions')} "
            f"disagree with {n} frames"
        )
    if problems:
        return problems
    for name in ("states", "timestamps", "actions", "actions_requested"):
        bad = ~np.isfinite(f[name][()])
        if bad.any():
            problems.append(f"{name} has {int(bad.sum())} non-finite values")
    actions = f["actions"][()]
    if np.any(actions < ACTION_LOW - _ACTION_TOL) or np.any(actions > ACTION_HIGH + _ACTION_TOL):
        problems.append("actions outside the Bridge bounds (executed actions must be clipped)")
    for name in ("timestamps", "seqs"):
        if n > 1 and np.any(np.diff(f[name][()]) <= 0):
            problems.append(f"{name} not strictly increasing")
    return problems


def _validate_labels(f: h5py.File) -> list[str]:
    if "labels" not in f.attrs:
        return ["labels missing (success, success_source, termination)"]
    try:
        labels = json.loads(f.attrs["labels"])
        _check_labels(labels["success"], labels["success_source"], labels["termination"])
    except (KeyError, TypeError, ValueError) as e:
        return [f"invalid labels {f.attrs['labels']!r}: {e}"]
    return []


def _validate_checksum(f: h5py.File) -> list[str]:
    if "content_sha256" not in f.attrs:
        return ["content_sha256 missing"]
    h = hashlib.sha256()
    n = f["frames"].shape[0]
    states, ts, seqs = f["states"][()], f["timestamps"][()], f["seqs"][()]
    actions, requested = f["actions"][()], f["actions_requested"][()]
    dangling = f.attrs.get("unobserved_final_action")
    for t in range(n):
        a = r = None
        if t < n - 1:
            a, r = actions[t], requested[t]
        elif dangling is not None:
            a, r = dangling, f.attrs["unobserved_final_action_requested"]
        _episode_hash_update(h, f["frames"][t], states[t], ts[t], seqs[t], a, r)
    if h.hexdigest() != f.attrs["content_sha256"]:
        return ["content_sha256 mismatch: the recorded data changed after it was written"]
    return []


# -- recovery and summaries -------------------------------------------------------------------------


def _in_use(path: Path) -> bool:
    """True while a live process holds the file open for writing (HDF5 takes a flock on it)."""
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def recover_partials(root: str | Path, station_id: str) -> list[Path]:
    """Keep and flag the partial files a killed station left behind; call at station start-up.

    A readable partial file becomes ``<id>.crashed.h5`` (termination "station_crashed", its
    committed steps readable); one HDF5 cannot open becomes ``<id>.corrupt.h5``. Each gets a
    JSON note beside it. A partial file whose labels and checksum were fully written (the station
    died between closing the file and renaming it) is given the rename it was missing. File
    contents are never modified, and files still open by a live writer are skipped. Returns the
    new paths.
    """
    out = []
    for partial in sorted(Path(root).rglob(f"*{PARTIAL_SUFFIX}")):
        if _in_use(partial):
            log.warning("skipping %s: a live process is writing it", partial)
            continue
        try:
            out.append(_recover_one(partial, station_id))
        except (FileExistsError, OSError) as e:
            # never stop a station from starting: the partial stays untouched, flagged by its name
            log.error("could not flag %s (%s); it is kept as it is", partial, e)
    return out


def _recover_one(partial: Path, station_id: str) -> Path:
    episode_id = episode_id_of(partial)
    note: dict[str, Any] = {
        "original_path": str(partial),
        "recovered_by_station": station_id,
        "recovered_at": _utc_now(),
    }
    try:
        ep = read_episode(partial)
    except EpisodeReadError as e:
        target = partial.with_name(episode_id + CORRUPT_SUFFIX)
        note.update(status="corrupt", error=str(e))
        log.error("episode file %s cannot be read; kept as %s", partial, target)
    else:
        if ep.termination != UNFINISHED and not _validate_path(partial, check_name=False):
            target = partial.with_name(episode_id + COMPLETE_SUFFIX)
            _rename_no_clobber(partial, target)
            log.warning(
                "episode %s was finished but not renamed; committed as %s", episode_id, target
            )
            return target
        target = partial.with_name(episode_id + CRASHED_SUFFIX)
        note.update(
            status="crashed",
            termination="station_crashed",
            num_observations=int(ep.frames.shape[0]),
            num_actions=int(ep.actions.shape[0]),
        )
        log.error("episode %s was cut off by a station crash; kept as %s", episode_id, target)
    if target.exists():  # checked before the note, which would replace that file's note
        raise FileExistsError(f"refusing to overwrite {target} with {partial}")
    note_path = _note_path(target)
    note_path.write_text(json.dumps(note, indent=2))
    _rename_no_clobber(partial, target)
    return target


def summarize(paths: list[str | Path]) -> dict:
    """Counts per task, success rates (over labelled episodes) and terminations, for a listing."""
    per_task: dict[str, Counter] = {}
    terminations: Counter = Counter()
    unreadable = []
    steps = 0
    for p in paths:
        try:
            with h5py.File(p, "r") as f:
                meta = json.loads(f.attrs["meta"])
                labels = json.loads(f.attrs["labels"]) if "labels" in f.attrs else {}
                complete = bool(f.attrs["complete"]) and not _is_incomplete_name(Path(p))
                steps += int(f.attrs["num_actions"])
        except (OSError, KeyError, ValueError) as e:
            unreadable.append(f"{p}: {e}")
            continue
        termination = labels.get("termination") or (
            "station_crashed" if str(p).endswith(CRASHED_SUFFIX) else UNFINISHED
        )
        success = labels.get("success")
        c = per_task.setdefault(meta["task"], Counter())
        c["episodes"] += 1
        c["complete"] += complete
        c["success" if success else "failure" if success is False else "unlabelled"] += 1
        terminations[termination] += 1
    tasks = {
        task: {
            **{k: c[k] for k in ("episodes", "complete", "success", "failure", "unlabelled")},
            "success_rate": c["success"] / (c["success"] + c["failure"])
            if c["success"] + c["failure"]
            else None,
        }
        for task, c in sorted(per_task.items())
    }
    return {
        "episodes": sum(c["episodes"] for c in per_task.values()),
        "steps": steps,
        "tasks": tasks,
        "terminations": dict(sorted(terminations.items())),
        "unreadable": unreadable,
    }


def format_summary(summary: dict) -> str:
    lines = [f"{summary['episodes']} episodes, {summary['steps']} steps"]
    for task, s in summary["tasks"].items():
        rate = "n/a" if s["success_rate"] is None else f"{s['success_rate']:.0%}"
        lines.append(
            f"  {task:<20} {s['episodes']:>4} episodes ({s['complete']} complete)  "
            f"success {s['success']}/{s['success'] + s['failure']} = {rate}  unlabelled {s['unlabelled']}"
        )
    lines.append(
        "  terminations: " + ", ".join(f"{k}={v}" for k, v in summary["terminations"].items())
    )
    lines += [f"  unreadable: {u}" for u in summary["unreadable"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m robot_bridge.episodes {summary,validate,recover} ROOT``."""
    parser = argparse.ArgumentParser(
        prog="python -m robot_bridge.episodes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=("summary", "validate", "recover"))
    parser.add_argument("root", type=Path)
    parser.add_argument("--include-partial", action="store_true")
    parser.add_argument("--station-id", default="cli")
    args = parser.parse_args(argv)
    if args.command == "recover":
        for p in recover_partials(args.root, args.station_id):
            print(p)
        return 0
    paths = list_episodes(args.root, include_partial=args.include_partial)
    if args.command == "summary":
        print(format_summary(summarize(paths)))
        for p in list_corrupt(args.root):
            print(f"  corrupt (kept): {p}")
        return 0
    bad = 0
    for p in paths:
        problems = validate_episode(p)
        bad += bool(problems)
        print(f"{p}: {'ok' if not problems else '; '.join(problems)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
