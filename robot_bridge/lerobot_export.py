"""Export recorded episodes to a LeRobot (v3.0) dataset through lerobot's own writer.

Runs on the training side, not the robot host: lerobot (torch, datasets) is imported lazily.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from robot_bridge.checkpoints import sha256_file
from robot_bridge.episodes import Episode, read_episode, validate_episode
from robot_bridge.spec import ACTION_DIM, CONTROL_HZ, STATE_DIM

# Exports are local files; nothing here may reach the hub. huggingface_hub reads this at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
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


def export_lerobot(
    episode_paths: Sequence[str | Path],
    out_dir: str | Path,
    repo_id: str = "gymnast/episodes",
    fps: int = int(CONTROL_HZ),
    use_videos: bool = True,
    image_key: str = "observation.images.primary",
    vcodec: str = "libsvtav1",
) -> Path:
    """Write complete, valid episodes as a LeRobotDataset at ``out_dir`` and return it.

    Frames: one LeRobot frame per observation. Frame t < T holds observation t and the action
    executed after it. The final observation (frame T, seen after the last action) is kept,
    because a world model learns from it what the last action did; its action is a *hold*
    placeholder (zero deltas, the last gripper command) and it is the only frame with
    ``next.done=True``. ``next.success`` is True on that frame of a successful episode only.
    The task string is the episode's instruction.

    Per-episode metadata (task name, success, success_source, termination, seed,
    policy_sha256, station_id, source episode id and file sha256) goes to
    ``meta/gymnast_episodes.json``, indexed by episode_index; per-dimension statistics of the
    executed actions (``action_stats``) go to ``meta/action_stats.json``.

    The dataset is built in a temporary sibling folder and renamed into place when finalized,
    so ``out_dir`` either holds a whole dataset or does not exist. Read it back with
    ``LeRobotDataset(repo_id, root=out_dir, video_backend="pyav")``.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    paths = [Path(p) for p in episode_paths]
    out_dir = Path(out_dir)
    if not paths:
        raise EpisodeExportError("no episodes to export")
    if out_dir.exists():
        raise FileExistsError(f"export target {out_dir} already exists; choose a new folder")
    _check_exportable(paths)
    episodes = [read_episode(p) for p in paths]
    image_shape = _common_image_shape(episodes)

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        dataset = LeRobotDataset.create(
            repo_id=repo_id,
            fps=fps,
            features=lerobot_features(image_shape, image_key, use_videos),
            root=tmp,
            robot_type="widowx",
            use_videos=use_videos,
            vcodec=vcodec,
        )
        for ep in episodes:
            for frame in _episode_frames(ep, image_key):
                dataset.add_frame(frame)
            dataset.save_episode()
        dataset.finalize()
        _write_json(tmp / EPISODES_SIDECAR, _sidecar(episodes, paths))
        _write_json(tmp / ACTION_STATS_FILE, action_stats(paths))
        os.rename(tmp, out_dir)
    finally:
        if tmp.exists():  # a failed export leaves no half-written dataset behind
            shutil.rmtree(tmp)
    return out_dir


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


def _check_exportable(paths: list[Path]) -> None:
    problems = {p: validate_episode(p) for p in paths}
    bad = {p: msgs for p, msgs in problems.items() if msgs}
    if bad:
        lines = [f"  {p}: {'; '.join(msgs)}" for p, msgs in bad.items()]
        raise EpisodeExportError(
            f"refusing to export {len(bad)} of {len(paths)} episodes (partial, crashed or "
            "invalid episodes are never exported):\n" + "\n".join(lines)
        )


def _common_image_shape(episodes: list[Episode]) -> tuple[int, int, int]:
    shapes = {ep.episode_id: tuple(ep.frames.shape[1:]) for ep in episodes}
    if len(set(shapes.values())) != 1:
        raise EpisodeExportError(f"episodes have different image shapes: {shapes}")
    return next(iter(shapes.values()))


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


def _sidecar(episodes: list[Episode], paths: list[Path]) -> dict:
    return {
        "final_observation": FINAL_OBSERVATION_NOTE,
        "episodes": [
            {
                "episode_index": i,
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
            for i, (ep, path) in enumerate(zip(episodes, paths, strict=True))
        ],
    }


def action_stats(episode_paths: Sequence[str | Path]) -> dict:
    """Per-dimension mean/std/min/max/q01/q99 of the executed actions, for action tokenizers."""
    actions = [read_episode(p).actions for p in episode_paths]
    a = np.concatenate(actions, axis=0).astype(np.float64)  # (sum T, 7)
    if a.shape[0] == 0:
        raise EpisodeExportError("no actions in the given episodes; cannot compute action stats")
    return {
        "names": ACTION_NAMES,
        "count": int(a.shape[0]),
        "episodes": len(actions),
        "mean": a.mean(0).tolist(),
        "std": a.std(0).tolist(),
        "min": a.min(0).tolist(),
        "max": a.max(0).tolist(),
        "q01": np.quantile(a, 0.01, axis=0).tolist(),
        "q99": np.quantile(a, 0.99, axis=0).tolist(),
    }


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
