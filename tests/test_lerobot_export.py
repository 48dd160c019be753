"""Export to LeRobot v3 through lerobot's own writer and read it back with LeRobotDataset (pyav)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robot_bridge.backends.base import Observation
from robot_bridge.episodes import EpisodeMeta, EpisodeWriter, read_episode, recover_partials
from robot_bridge.lerobot_export import (
    ACTION_STATS_FILE,
    EPISODES_SIDECAR,
    EpisodeExportError,
    action_stats,
    export_lerobot,
    hold_action,
)
from robot_bridge.spec import TASKS

SHAPE = (64, 64, 3)
IMAGE_KEY = "observation.images.primary"
# libsvtav1 at lerobot's defaults (crf 30, yuv420p) on smooth 64x64 frames: measured mean
# absolute error 2.4-3.0 grey levels per frame; allow 5 (of 255). Consecutive frames differ by
# ~14, so a frame off by one step fails.
VIDEO_MEAN_ABS_TOL = 5.0


def smooth_frame(t: int, e: int) -> np.ndarray:
    """Smooth, moving content: what a camera sees, and what a video codec can keep."""
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(np.float32)
    chans = [
        128 + 90 * np.sin(xx / 9.0 + 0.4 * t + c) * np.cos(yy / 11.0 - 0.3 * e) for c in range(3)
    ]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)  # (H, W, 3)


def write(root, e: int, task: str, steps: int, how: str):
    meta = EpisodeMeta(
        episode_id=f"ep{e}",
        task=task,
        instruction=TASKS[task].instruction,
        seed=100 + e,
        station_id="station-a",
        policy_sha256=f"{e:064x}",
        backend="instant",
    )
    rng = np.random.default_rng(e)
    w = EpisodeWriter(root, meta, image_shape=SHAPE)
    for t in range(steps):
        state = rng.normal(size=7).astype(np.float32)
        action = np.concatenate([rng.uniform(-0.05, 0.05, 6), rng.uniform(0, 1, 1)]).astype(
            np.float32
        )
        w.append(Observation(smooth_frame(t, e), state, 1.0 + 0.2 * t, t), action)
    if how == "success":
        w.append(
            Observation(smooth_frame(steps, e), np.zeros(7, np.float32), 1.0 + 0.2 * steps, steps),
            None,
        )
        return w.finish(success=True, success_source="sim_ground_truth", termination="success")
    if how == "estop":  # last action sent, result never observed
        return w.abort("estop")
    w.close()  # left partial, as by a crash
    return w.partial_path


@pytest.fixture
def episodes(tmp_path):
    root = tmp_path / "episodes"
    return [
        write(root, 0, "open_drawer", steps=4, how="success"),
        write(root, 1, "eggplant_in_sink", steps=3, how="estop"),
    ]


def check_round_trip(out, paths, exact_images: bool):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("gymnast/episodes", root=out, video_backend="pyav")
    eps = [read_episode(p) for p in paths]
    assert ds.num_episodes == len(eps)
    assert ds.num_frames == len(ds) == sum(ep.frames.shape[0] for ep in eps)
    assert set(ds.meta.tasks.index) == {ep.instruction for ep in eps}
    for i in range(len(ds)):
        item = ds[i]
        ep = eps[int(item["episode_index"])]
        t, last = int(item["frame_index"]), ep.frames.shape[0] - 1
        image = (
            item[IMAGE_KEY].numpy().transpose(1, 2, 0) * 255.0
        )  # (C, H, W) in [0, 1] -> (H, W, C)
        if exact_images:
            np.testing.assert_array_equal(np.round(image).astype(np.uint8), ep.frames[t])
        else:
            err = np.abs(image - ep.frames[t].astype(np.float32)).mean()
            assert err <= VIDEO_MEAN_ABS_TOL, (
                f"episode {ep.episode_id} frame {t}: mean abs error {err:.2f}"
            )
        np.testing.assert_array_equal(item["observation.state"].numpy(), ep.states[t])
        expected_action = ep.actions[t] if t < last else hold_action(ep)
        np.testing.assert_array_equal(item["action"].numpy(), expected_action)
        assert bool(item["next.done"]) == (t == last)
        assert bool(item["next.success"]) == (t == last and ep.success is True)
        assert item["task"] == ep.instruction
    return eps


def test_export_images_round_trip_exactly(episodes, tmp_path):
    out = export_lerobot(episodes, tmp_path / "ds", use_videos=False)
    eps = check_round_trip(out, episodes, exact_images=True)
    sidecar = json.loads((out / EPISODES_SIDECAR).read_text())["episodes"]
    assert [
        (s["episode_id"], s["task"], s["success"], s["termination"], s["seed"]) for s in sidecar
    ] == [
        ("ep0", "open_drawer", True, "success", 100),
        ("ep1", "eggplant_in_sink", None, "estop", 101),
    ]
    assert (
        sidecar[1]["policy_sha256"] == eps[1].policy_sha256
        and sidecar[0]["station_id"] == "station-a"
    )
    stats = json.loads((out / ACTION_STATS_FILE).read_text())
    executed = np.concatenate([ep.actions for ep in eps])  # hold padding excluded
    assert stats["count"] == executed.shape[0] == 4 + 2
    np.testing.assert_allclose(stats["mean"], executed.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["q99"], np.quantile(executed.astype(np.float64), 0.99, axis=0))
    assert stats == action_stats(episodes)


def test_export_videos_round_trip_within_tolerance(episodes, tmp_path):
    out = export_lerobot(episodes, tmp_path / "ds", use_videos=True)
    assert list((out / "videos" / IMAGE_KEY).rglob("*.mp4"))
    check_round_trip(out, episodes, exact_images=False)


def test_export_refuses_partial_and_crashed_episodes(episodes, tmp_path):
    root = tmp_path / "episodes"
    write(root, 3, "close_drawer", steps=2, how="partial")
    (crashed,) = recover_partials(root, "station-a")
    partial = write(root, 2, "close_drawer", steps=2, how="partial")
    out = tmp_path / "ds"
    with pytest.raises(EpisodeExportError, match="refusing to export 2 of 4 episodes") as info:
        export_lerobot([*episodes, partial, crashed], out, use_videos=False)
    assert str(partial) in str(info.value) and str(crashed) in str(info.value)
    assert "not complete" in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".ds.tmp-*"))
