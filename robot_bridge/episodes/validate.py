"""Checking an episode file before training on it, and flagging what a killed station left.

``validate_episode`` lists what makes a file unfit (layout, dtypes, shapes, finiteness, Bridge
bounds, labels, checksum). ``recover_partials`` renames leftover partial files to ``.crashed.h5``
or ``.corrupt.h5`` (or finishes the rename of one whose labels were fully written), never
modifying their bytes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from robot_bridge.episodes.reader import read_episode
from robot_bridge.episodes.schema import (
    COMPLETE_SUFFIX,
    CORRUPT_SUFFIX,
    CRASHED_SUFFIX,
    PARTIAL_SUFFIX,
    SCHEMA_VERSION,
    UNFINISHED,
    EpisodeMeta,
    EpisodeReadError,
    _check_labels,
    _episode_hash_update,
    _is_incomplete_name,
    _note_path,
    _utc_now,
    episode_id_of,
)
from robot_bridge.episodes.writer import _rename_no_clobber
from robot_bridge.spec import ACTION_DIM, ACTION_HIGH, ACTION_LOW, IMAGE_SHAPE, STATE_DIM

log = logging.getLogger(__name__)

_ACTION_TOL = 1e-6
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


# -- recovery -------------------------------------------------------------------------------------


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


def _in_use(path: Path) -> bool:
    """True while a live process holds the file open for writing (HDF5 takes a flock on it)."""
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


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
