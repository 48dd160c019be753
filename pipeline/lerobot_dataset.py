"""The loop's training data as one LeRobotDataset (v3.0), through lerobot's own writer and reader.

The station's HDF5 files stay the crash-safe record; this module turns them into the dataset the
world model, judge and SFT train from, and reads any LeRobot dataset back as in-memory
``Episode`` objects, so ``world_model/``, ``reward/`` and ``policy/`` never import lerobot.

- ``append_episodes``: adds the episodes the dataset does not hold yet (by episode id, kept in
  ``meta/gymnast_episodes.json``) through ``LeRobotDataset(root)`` + ``add_frame`` +
  ``save_episode``, lerobot's resume path: new episodes go to new data, video and episode-meta
  files, so the files of earlier appends are never rewritten and an append costs what its new
  episodes cost. Idempotent; one appender at a time (a lock file beside the dataset); a failed or
  killed append is rolled back to the last complete one (a journal of ``meta/`` and the file list).
- ``export_lerobot``: a new dataset from episode files (``gymnast episodes export``).
- ``load_lerobot_episodes``: episodes of a dataset (ours, or a lab's own in LeRobot format, e.g.
  Bridge) as ``Episode`` objects; ``ExternalDataset`` is how a round names a lab's dataset.

Training side only: lerobot (torch, datasets) is imported lazily, and never on the robot host.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.dataset_journal import journal, locked, recover
from robot_bridge.checkpoints import sha256_file
from robot_bridge.episodes import (
    Episode,
    episode_id_of,
    list_episodes,
    read_episode,
    validate_episode,
)
from robot_bridge.spec import ACTION_DIM, CONTROL_HZ, STATE_DIM, TASKS

# Datasets are local files; nothing here may reach the hub. huggingface_hub reads this at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
IMAGE_KEY = "observation.images.primary"
EPISODES_SIDECAR = "meta/gymnast_episodes.json"
ACTION_STATS_FILE = "meta/action_stats.json"
FINAL_OBSERVATION_NOTE = (
    "Each episode has T actions and T+1 observations; the final observation is exported as "
    "frame T with a hold action (zero deltas, the last gripper command) and next.done=True. "
    "Learn actions from frames with next.done=False only; actions from the final frame are "
    "padding. meta/action_stats.json covers executed actions only."
)


class EpisodeExportError(ValueError):
    """Some episodes cannot be exported (partial, crashed, or invalid); lists each with reasons."""


@dataclass
class AppendResult:
    root: Path
    added: list[str]  # episode ids appended by this call
    total_episodes: int  # in the dataset after it


@dataclass(frozen=True)
class ExternalDataset:
    """A LeRobot dataset a lab already has (a local folder) that joins the world model's and the
    judge's data. ``success`` labels every episode (e.g. ``True`` for teleoperated demonstrations);
    ``None`` takes labels from a ``next.success`` feature if the dataset has one, else leaves the
    episodes unlabelled (the world model uses them, the judge, which needs labels, does not).
    ``image_key``: the camera to use (default: the dataset's first)."""

    path: Path
    success: bool | None = None
    image_key: str | None = None

    @classmethod
    def parse(cls, spec: str | dict | ExternalDataset) -> ExternalDataset:
        """A folder path, or ``{"path": ..., "success": true, "image_key": ...}`` (JSON config)."""
        if isinstance(spec, ExternalDataset):
            return spec
        if isinstance(spec, str | Path):
            return cls(Path(spec))
        if (
            isinstance(spec, dict)
            and "path" in spec
            and set(spec) <= {"path", "success", "image_key"}
        ):
            return cls(Path(spec["path"]), spec.get("success"), spec.get("image_key"))
        raise ValueError(
            "an external dataset is a folder path or {'path': ..., 'success': true|false|null, "
            f"'image_key': ...}}; got {spec!r}"
        )

    def load(self) -> list[Episode]:
        if not is_lerobot_dataset(self.path):
            raise FileNotFoundError(
                f"external dataset {self.path} is not a LeRobot dataset (no meta/info.json there)"
            )
        return load_lerobot_episodes(self.path, image_key=self.image_key, success=self.success)


@dataclass(frozen=True)
class DatasetEpisodes:
    """Some episodes of a dataset of ours, by id (a round's training set: the dataset may hold
    later rounds' episodes too). ``load`` returns them in id order, as the HDF5 files sort."""

    root: Path
    episode_ids: tuple[str, ...]

    def load(self) -> list[Episode]:
        return sorted(
            load_lerobot_episodes(self.root, self.episode_ids), key=lambda e: e.episode_id
        )


def is_lerobot_dataset(path: str | Path) -> bool:
    return (Path(path) / "meta" / "info.json").is_file()


# --- writing ------------------------------------------------------------------------------------


def lerobot_features(image_shape: tuple[int, int, int], image_key: str, use_videos: bool) -> dict:
    return {
        image_key: {
            "dtype": "video" if use_videos else "image",
            "shape": tuple(image_shape),
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": STATE_NAMES},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": ACTION_NAMES},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
    }


def export_lerobot(
    episode_paths: Sequence[str | Path],
    out_dir: str | Path,
    repo_id: str = "gymnast/episodes",
    fps: int = int(CONTROL_HZ),
    use_videos: bool = True,
    image_key: str = IMAGE_KEY,
    vcodec: str = "libsvtav1",
) -> Path:
    """Write complete, valid episodes as a new LeRobotDataset at ``out_dir`` and return it.

    Frames: one LeRobot frame per observation. Frame t < T holds observation t and the action
    executed after it. The final observation (frame T, seen after the last action) is kept,
    because a world model learns from it what the last action did; its action is a *hold*
    placeholder (zero deltas, the last gripper command) and it is the only frame with
    ``next.done=True``. ``next.success`` is True on that frame of a successful episode only.
    The task string is the episode's instruction.

    Per-episode metadata (episode id, task name, success, success_source, termination, seed,
    policy_sha256, station_id, source file sha256) goes to ``meta/gymnast_episodes.json``,
    indexed by episode_index; per-dimension statistics of the executed actions go to
    ``meta/action_stats.json``.

    The dataset is built in a temporary sibling folder and renamed into place when finalized,
    so ``out_dir`` either holds a whole dataset or does not exist. Read it back with
    ``load_lerobot_episodes(out_dir)`` or ``LeRobotDataset(repo_id, root=out_dir)``.
    """
    paths = [Path(p) for p in episode_paths]
    out_dir = Path(out_dir)
    if not paths:
        raise EpisodeExportError("no episodes to export")
    if out_dir.exists():
        raise FileExistsError(f"export target {out_dir} already exists; choose a new folder")
    _check_exportable(paths)
    _create(paths, out_dir, repo_id, fps, use_videos, image_key, vcodec)
    return out_dir


def append_episodes(
    episode_paths: Sequence[str | Path],
    root: str | Path,
    repo_id: str = "gymnast/episodes",
    fps: int = int(CONTROL_HZ),
    use_videos: bool = True,
    image_key: str = IMAGE_KEY,
    vcodec: str = "libsvtav1",
) -> AppendResult:
    """Append the episodes ``root`` does not hold yet (creating the dataset on first use).

    Episodes already in (by episode id) are skipped without being read, so a re-run appends
    nothing and a round's append costs what its new episodes cost. Only the new episodes are
    validated; partial, crashed or invalid ones refuse the whole append. Earlier data and video
    files are never rewritten: lerobot resumes a dataset into new files (``meta/info.json``,
    ``stats.json``, ``tasks.parquet`` and this module's two JSON files are updated)."""
    paths = [Path(p) for p in episode_paths]
    root = Path(root)
    with locked(root, exclusive=True):
        recover(root)
        if is_lerobot_dataset(root) and not (root / EPISODES_SIDECAR).is_file():
            raise EpisodeExportError(
                f"{root} is a LeRobot dataset gymnast did not write (no {EPISODES_SIDECAR}); "
                "append to a dataset of ours, or name it as an external dataset"
            )
        known = set(dataset_episode_ids(root))
        new = [p for p in paths if episode_id_of(p) not in known]
        if new:
            _check_exportable(new)
            if known:
                with journal(root):
                    _resume(new, root, repo_id, image_key, vcodec)
            else:
                _create(new, root, repo_id, fps, use_videos, image_key, vcodec)
        total = len(dataset_episode_ids(root))
    return AppendResult(root, [episode_id_of(p) for p in new], total)


def _create(paths, out_dir, repo_id, fps, use_videos, image_key, vcodec) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    first = read_episode(paths[0])
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        ds = LeRobotDataset.create(
            repo_id=repo_id,
            fps=fps,
            features=lerobot_features(tuple(first.frames.shape[1:]), image_key, use_videos),
            root=tmp,
            robot_type="widowx",
            use_videos=use_videos,
            vcodec=vcodec,
        )
        entries = _write(ds, paths, image_key, first)
        _write_meta(tmp, entries)
        os.rename(tmp, out_dir)
    finally:
        if tmp.exists():  # a failed export leaves no half-written dataset behind
            shutil.rmtree(tmp)


def _resume(paths, root, repo_id, image_key, vcodec) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(repo_id, root=root, video_backend="pyav", vcodec=vcodec)
    if image_key not in ds.meta.features:
        raise EpisodeExportError(
            f"dataset {root} has no {image_key!r} camera (it has {ds.meta.camera_keys})"
        )
    entries = _write(ds, paths, image_key)
    _write_meta(root, _read_sidecar(root)["episodes"] + entries)


def _write(ds, paths: list[Path], image_key: str, first: Episode | None = None) -> list[dict]:
    """Each episode through ``add_frame`` + ``save_episode``; its sidecar entries."""
    shape = tuple(ds.meta.features[image_key]["shape"])
    entries = []
    try:
        for i, path in enumerate(paths):
            ep = first if i == 0 and first is not None else read_episode(path)
            if tuple(ep.frames.shape[1:]) != shape:
                raise EpisodeExportError(
                    f"{path}: frames are {tuple(ep.frames.shape[1:])}, the dataset's "
                    f"{image_key} is {shape}"
                )
            for frame in _episode_frames(ep, image_key):
                ds.add_frame(frame)
            ds.save_episode()
            entries.append(_sidecar_entry(ds.meta.total_episodes - 1, ep, path))
    except BaseException:
        # lerobot buffers episode metadata and flushes it when the object is collected: drop
        # it, so nothing of a failed append reaches the disk after the rollback
        ds.meta.metadata_buffer.clear()
        ds.finalize()
        raise
    ds.finalize()
    return entries


def _write_meta(root: Path, entries: list[dict]) -> None:
    _write_json(
        root / EPISODES_SIDECAR, {"final_observation": FINAL_OBSERVATION_NOTE, "episodes": entries}
    )
    _write_json(root / ACTION_STATS_FILE, action_stats(root))


def _check_exportable(paths: list[Path]) -> None:
    problems = {p: validate_episode(p) for p in paths}
    bad = {p: msgs for p, msgs in problems.items() if msgs}
    if bad:
        lines = [f"  {p}: {'; '.join(msgs)}" for p, msgs in bad.items()]
        raise EpisodeExportError(
            f"refusing to export {len(bad)} of {len(paths)} episodes (partial, crashed or "
            "invalid episodes are never exported):\n" + "\n".join(lines)
        )


def hold_action(ep: Episode) -> np.ndarray:
    """The placeholder action of the final frame: no motion, the gripper kept where it was sent."""
    hold = np.zeros(ACTION_DIM, np.float32)
    hold[6] = ep.actions[-1, 6] if ep.num_steps else ep.states[-1, 6]
    return hold


def _episode_frames(ep: Episode, image_key: str):
    last = ep.frames.shape[0] - 1
    for t in range(last + 1):
        action = ep.actions[t] if t < last else hold_action(ep)
        yield {
            image_key: ep.frames[t],
            "observation.state": ep.states[t].astype(np.float32),
            "action": action.astype(np.float32),
            "next.done": np.array([t == last]),
            "next.success": np.array([t == last and ep.success is True]),
            "task": ep.instruction,
        }


def _sidecar_entry(index: int, ep: Episode, path: Path) -> dict:
    return {
        "episode_index": index,
        "episode_id": ep.episode_id,
        "task": ep.task,
        "instruction": ep.instruction,
        "success": ep.success,
        "success_source": ep.success_source,
        "termination": ep.termination,
        "seed": ep.seed,
        "policy_sha256": ep.policy_sha256,
        "station_id": ep.station_id,
        "backend": ep.backend,
        "job_id": ep.job_id,
        "started_at": ep.started_at,
        "finished_at": ep.finished_at,
        "num_actions": ep.num_steps,
        "num_frames": int(ep.frames.shape[0]),
        "source_file": path.name,
        "source_sha256": sha256_file(path),
        "content_sha256": ep.content_sha256,
    }


def action_stats(root: str | Path) -> dict:
    """Per-dimension mean/std/min/max/q01/q99 of the executed actions in a dataset (final frames'
    hold placeholders excluded), for action tokenizers. Reads the action columns only."""
    import pyarrow.parquet as pq

    files = sorted((Path(root) / "data").glob("*/*.parquet"))
    tables = [pq.read_table(f, columns=["action", "next.done"]) for f in files]
    if not tables:
        raise EpisodeExportError(f"no data files in {root}; cannot compute action stats")
    a = np.concatenate(
        [np.asarray(t["action"].to_pylist(), np.float64).reshape(-1, ACTION_DIM) for t in tables]
    )
    done = np.concatenate(
        [np.asarray(t["next.done"].to_pylist(), bool).reshape(-1) for t in tables]
    )
    a = a[~done]  # (executed actions, 7)
    if a.shape[0] == 0:
        raise EpisodeExportError(f"no executed actions in {root}; cannot compute action stats")
    return {
        "names": ACTION_NAMES,
        "count": int(a.shape[0]),
        "episodes": int(done.sum()),
        "mean": a.mean(0).tolist(),
        "std": a.std(0).tolist(),
        "min": a.min(0).tolist(),
        "max": a.max(0).tolist(),
        "q01": np.quantile(a, 0.01, axis=0).tolist(),
        "q99": np.quantile(a, 0.99, axis=0).tolist(),
    }


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# --- reading ------------------------------------------------------------------------------------


def _read_sidecar(root: Path) -> dict:
    path = Path(root) / EPISODES_SIDECAR
    return json.loads(path.read_text()) if path.is_file() else {"episodes": []}


def dataset_entries(root: str | Path) -> dict[str, dict]:
    """Episode id -> what ``meta/gymnast_episodes.json`` records of it (task, labels, sizes)."""
    return {e["episode_id"]: e for e in _read_sidecar(Path(root))["episodes"]}


def dataset_episode_ids(root: str | Path) -> list[str]:
    """The episode ids a dataset of ours holds, in episode_index order."""
    return [e["episode_id"] for e in _read_sidecar(Path(root))["episodes"]]


def episode_ids_in(dirs: Sequence[str | Path]) -> list[str]:
    """Ids of the complete episode files under the folders (file names only; nothing is read)."""
    return sorted({episode_id_of(p) for d in dirs for p in list_episodes(d)})


def load_lerobot_episodes(
    root: str | Path,
    episode_ids: Sequence[str] | None = None,
    *,
    image_key: str | None = None,
    success: bool | None = None,
) -> list[Episode]:
    """Episodes of a LeRobotDataset as ``Episode`` objects, in episode_index order.

    A dataset of ours (it has ``meta/gymnast_episodes.json``) gives back what was appended: the
    same ids, labels and metadata, states and actions exactly, frames within the video codec's
    loss. ``episode_ids`` selects episodes of ours (an id it does not hold is an error).

    Any other LeRobot dataset (a lab's own, e.g. Bridge): N frames with N actions per episode
    become N observations and the first N - 1 actions (the last action's result is not
    recorded); an 8-d state is read as [x, y, z, roll, pitch, yaw, pad, gripper] (Bridge's
    proprio), a 7-d one as ours; actions must be 7-d. The task string is the instruction; the
    task name is ours when the instruction is one of our tasks', else the instruction. Labels:
    ``success`` for every episode if given, else a ``next.success`` feature if present, else
    unlabelled. Ids are ``<folder name>-<episode_index>``.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    sidecar = {e["episode_index"]: e for e in _read_sidecar(root)["episodes"]}
    indices = None
    if episode_ids is not None:
        by_id = {e["episode_id"]: i for i, e in sidecar.items()}
        missing = sorted(set(episode_ids) - set(by_id))
        if missing:
            raise KeyError(
                f"{len(missing)} episodes are not in the dataset {root} (run its dataset stage "
                f"first): {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            )
        indices = sorted(by_id[i] for i in set(episode_ids))
        if not indices:
            return []
    with locked(root, exclusive=False) if sidecar else nullcontext():
        ds = LeRobotDataset(f"local/{root.name}", root=root, episodes=indices, video_backend="pyav")
        key = image_key or (ds.meta.camera_keys[0] if ds.meta.camera_keys else None)
        if key not in ds.meta.camera_keys:
            raise KeyError(f"dataset {root} has no camera {key!r}; cameras: {ds.meta.camera_keys}")
        state_idx = _state_indices(ds.meta.features.get("observation.state"), root)
        if tuple(ds.meta.features.get("action", {}).get("shape", ())) != (ACTION_DIM,):
            raise ValueError(f"dataset {root}: action must be {ACTION_DIM}-d (Bridge's deltas)")
        columns = ["episode_index", "frame_index", "timestamp", "task_index"]
        columns += ["observation.state", "action"]
        columns += [c for c in ("next.success",) if c in ds.meta.features]
        columns += [key] if key in ds.meta.image_keys else []  # videos are decoded per episode
        rows = ds.hf_dataset.select_columns(columns).with_format("numpy")[:]
        order = np.lexsort((rows["frame_index"], rows["episode_index"]))  # by episode, then time
        rows = {k: np.asarray(v)[order] for k, v in rows.items()}
        rows["observation.state"] = rows["observation.state"][:, state_idx]  # (frames, 7)
        out = []
        for ep_idx in np.unique(rows["episode_index"]):
            ep_rows = {k: v[rows["episode_index"] == ep_idx] for k, v in rows.items()}
            entry = sidecar.get(int(ep_idx))
            out.append(_episode(ds, root, int(ep_idx), ep_rows, key, entry, success))
    return out


def _state_indices(feature: dict | None, root: Path) -> list[int]:
    """Which state dimensions are ours (x y z roll pitch yaw gripper): by name where the dataset
    names them, else a 7-d state as ours and an 8-d one as Bridge's proprio (x y z roll pitch
    yaw pad gripper)."""
    shape = tuple((feature or {}).get("shape", ()))
    names = (feature or {}).get("names")
    if isinstance(names, dict):  # {"motors": [...]}
        names = next(iter(names.values()), None)
    if len(shape) == 1 and isinstance(names, list) and set(STATE_NAMES) <= set(names):
        return [names.index(n) for n in STATE_NAMES]
    if shape == (STATE_DIM,):
        return list(range(STATE_DIM))
    if shape == (8,):
        return [0, 1, 2, 3, 4, 5, 7]
    raise ValueError(
        f"dataset {root}: observation.state must be 7-d (ours), 8-d (Bridge: x y z roll pitch "
        f"yaw pad gripper) or name {STATE_NAMES}; got shape {shape}, names {names}"
    )


def _episode(
    ds, root: Path, ep_idx: int, rows: dict, key: str, entry: dict | None, success
) -> Episode:
    frames = _frames(ds, ep_idx, rows, key)  # (N, H, W, 3) uint8
    states = np.asarray(rows["observation.state"], np.float32)  # (N, 7)
    actions = np.asarray(rows["action"], np.float32)[:-1]  # (N-1, 7): the last is a hold / unseen
    instruction = str(ds.meta.tasks.index[int(rows["task_index"][0])])
    common = dict(
        frames=frames,
        states=states,
        timestamps=np.asarray(rows["timestamp"], np.float64),
        actions=actions,
        complete=True,
        seqs=np.asarray(rows["frame_index"], np.int64),
    )
    if entry is not None:
        return Episode(
            episode_id=entry["episode_id"],
            task=entry["task"],
            instruction=entry["instruction"],
            seed=entry["seed"],
            success=entry["success"],
            success_source=entry["success_source"],
            termination=entry["termination"],
            station_id=entry["station_id"],
            policy_sha256=entry["policy_sha256"],
            backend=entry.get("backend", ""),
            job_id=entry.get("job_id", ""),
            started_at=entry.get("started_at", ""),
            finished_at=entry.get("finished_at"),
            content_sha256=entry.get("content_sha256"),
            extra={"lerobot_root": str(root), "episode_index": ep_idx},
            **common,
        )
    if success is None and "next.success" in rows:
        success = bool(np.asarray(rows["next.success"]).any())
    task = next((name for name, t in TASKS.items() if t.instruction == instruction), instruction)
    return Episode(
        episode_id=f"{root.name}-{ep_idx:06d}",
        task=task,
        instruction=instruction,
        seed=None,
        success=success,
        success_source="none" if success is None else "operator",
        termination="external",
        station_id=f"lerobot:{root.name}",
        policy_sha256="",
        extra={"lerobot_root": str(root), "episode_index": ep_idx},
        **common,
    )


def _frames(ds, ep_idx: int, rows: dict, key: str) -> np.ndarray:
    if key in rows:  # an image feature: decoded by datasets
        return np.stack([np.asarray(im, np.uint8) for im in rows[key]])  # (N, H, W, 3)
    start = ds.meta.episodes[ep_idx][f"videos/{key}/from_timestamp"]
    video = ds.root / ds.meta.get_video_file_path(ep_idx, key)
    return decode_frames(video, start + rows["timestamp"].astype(np.float64), ds.tolerance_s)


def decode_frames(video: Path, timestamps: np.ndarray, tolerance_s: float) -> np.ndarray:
    """The frames at ``timestamps`` (seconds in the file) of an episode's stretch of a video.

    PyAV directly, one sequential pass from the keyframe before the first: lerobot's pyav path
    (``decode_video_frames``, through torchvision's reader) took 8.1 s for 620 frames of 256x256
    that this decodes in 0.14 s, and every training stage reads the whole round's data."""
    import av

    first, last = float(timestamps.min()), float(timestamps.max())
    times, frames = [], []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        container.seek(int(first / stream.time_base), stream=stream)  # keyframe at or before
        for frame in container.decode(stream):
            if frame.time > last + tolerance_s:
                break
            if frame.time >= first - tolerance_s:
                times.append(frame.time)
                frames.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3) uint8
    if not times:
        raise ValueError(f"{video} has no frames between {first:.3f} s and {last:.3f} s")
    gap = np.abs(timestamps[:, None] - np.asarray(times)[None, :])  # (wanted, decoded)
    nearest = gap.argmin(1)
    off = gap[np.arange(len(timestamps)), nearest]
    if (off > tolerance_s).any():
        raise ValueError(
            f"{video}: no frame within {tolerance_s} s of {timestamps[off > tolerance_s][:5]} s"
        )
    return np.stack([frames[i] for i in nearest])  # (N, H, W, 3) uint8
