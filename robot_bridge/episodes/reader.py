"""Reading episode files: whole episodes, headers (labels and frame 0) and listings.

A partial or crashed file is read up to its commit counters, so only committed steps are returned.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from robot_bridge.episodes.schema import (
    COMPLETE_SUFFIX,
    CORRUPT_SUFFIX,
    CRASHED_SUFFIX,
    UNFINISHED,
    Episode,
    EpisodeHeader,
    EpisodeMeta,
    EpisodeReadError,
    _is_incomplete_name,
    _note_path,
)


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
        extra=meta.extra,
    )


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
