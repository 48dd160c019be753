"""The loop's LeRobotDataset: written through lerobot's own writer, appended round by round
without rewriting earlier files, read back as the episodes training gets; a lab's own LeRobot
dataset (written here by lerobot's API with Bridge-like features) joins the world model's data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fake_episodes import episode_meta

from pipeline.dataset_journal import JOURNAL, journal
from pipeline.lerobot_dataset import (
    ACTION_STATS_FILE,
    EPISODES_SIDECAR,
    DatasetEpisodes,
    EpisodeExportError,
    ExternalDataset,
    action_stats,
    append_episodes,
    dataset_episode_ids,
    export_lerobot,
    hold_action,
    load_lerobot_episodes,
)
from robot_bridge.backends.base import Observation
from robot_bridge.episodes import (
    EpisodeWriter,
    episode_id_of,
    read_episode,
    recover_partials,
)
from robot_bridge.spec import TASKS

SHAPE = (64, 64, 3)
IMAGE_KEY = "observation.images.primary"
# libsvtav1 at lerobot's defaults (crf 30, yuv420p) on smooth 64x64 frames: measured mean
# absolute error 2.4-3.0 grey levels per frame; allow 5 (of 255). Consecutive frames differ by
# ~14, so a frame off by one step fails.
VIDEO_MEAN_ABS_TOL = 5.0


def smooth_frame(t: int, e: int, shape=SHAPE) -> np.ndarray:
    """Smooth, moving content: what a camera sees, and what a video codec can keep."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    chans = [
        128 + 90 * np.sin(xx / 9.0 + 0.4 * t + c) * np.cos(yy / 11.0 - 0.3 * e) for c in range(3)
    ]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)  # (H, W, 3)


def write(root, e: int, task: str, steps: int, how: str, shape=SHAPE):
    meta = episode_meta(e, task)
    rng = np.random.default_rng(e)
    w = EpisodeWriter(root, meta, image_shape=shape)
    for t in range(steps):
        state = rng.normal(size=7).astype(np.float32)
        action = np.concatenate([rng.uniform(-0.05, 0.05, 6), rng.uniform(0, 1, 1)]).astype(
            np.float32
        )
        w.append(Observation(smooth_frame(t, e, shape), state, 1.0 + 0.2 * t, t), action)
    if how in ("success", "failure"):
        final = smooth_frame(steps, e, shape)
        w.append(Observation(final, np.zeros(7, np.float32), 1.0 + 0.2 * steps, steps), None)
        return w.finish(
            success=how == "success",
            success_source="sim_ground_truth",
            termination="success" if how == "success" else "max_steps",
        )
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
        ("ep00", "open_drawer", True, "success", 100),
        ("ep01", "eggplant_in_sink", None, "estop", 101),
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
    assert stats["episodes"] == 2 and stats == action_stats(out)


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


# --- the loop's dataset: appended round by round, read back by training ----------------------------


def round_files(root):
    """Data and video files with their bytes and mtimes (what an append must leave alone)."""
    return {
        p.relative_to(root): (p.stat().st_mtime_ns, p.read_bytes())
        for sub in ("data", "videos")
        for p in sorted((root / sub).rglob("*"))
        if p.is_file()
    }


def assert_same_episode(got, want, exact_images: bool):
    """What training gets equals what the station wrote: ids, labels, states and actions exactly,
    frames exactly (images) or within the codec's loss (videos)."""
    assert (got.episode_id, got.task, got.instruction, got.seed) == (
        want.episode_id,
        want.task,
        want.instruction,
        want.seed,
    )
    assert (got.success, got.success_source, got.termination) == (
        want.success,
        want.success_source,
        want.termination,
    )
    assert (got.station_id, got.policy_sha256) == (want.station_id, want.policy_sha256)
    np.testing.assert_array_equal(got.states, want.states)
    np.testing.assert_array_equal(got.actions, want.actions)
    assert got.frames.shape == want.frames.shape and got.frames.dtype == np.uint8
    if exact_images:
        np.testing.assert_array_equal(got.frames, want.frames)
    else:
        err = np.abs(got.frames.astype(np.float32) - want.frames).mean(axis=(1, 2, 3))
        assert err.max() <= VIDEO_MEAN_ABS_TOL, f"{got.episode_id}: frame errors {err}"


@pytest.fixture
def two_rounds(tmp_path):
    """Two rounds' worth of finished episodes (successes and failures, two tasks)."""
    root = tmp_path / "episodes"
    first = [
        write(root / "r1", e, task, steps=5 + e, how=how)
        for e, (task, how) in enumerate(
            [("open_drawer", "success"), ("open_drawer", "failure"), ("close_drawer", "success")]
        )
    ]
    second = [
        write(root / "r2", e, task, steps=4 + e % 3, how=how)
        for e, (task, how) in enumerate(
            [("close_drawer", "failure"), ("open_drawer", "success"), ("close_drawer", "success")],
            start=3,
        )
    ]
    return first, second


def test_round_two_appends_without_touching_round_one(two_rounds, tmp_path):
    first, second = two_rounds
    ds = tmp_path / "dataset"
    assert append_episodes(first, ds).added == ["ep00", "ep01", "ep02"]
    round_one = round_files(ds)
    assert round_one and any(p.parts[0] == "videos" for p in round_one)

    added = append_episodes(first + second, ds)  # round 2's list holds round 1's episodes too
    assert added.added == ["ep03", "ep04", "ep05"] and added.total_episodes == 6
    after = round_files(ds)
    assert {p: after[p] for p in round_one} == round_one  # same bytes, same mtimes
    assert len(after) > len(round_one)  # round 2 went to files of its own
    assert dataset_episode_ids(ds) == [f"ep{e:02d}" for e in range(6)]

    again = append_episodes(first + second, ds)  # a re-run of round 2: nothing to add
    assert again.added == [] and again.total_episodes == 6
    assert round_files(ds) == after
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    lr = LeRobotDataset("gymnast/episodes", root=ds, video_backend="pyav")
    assert lr.num_episodes == 6
    assert lr.num_frames == sum(read_episode(p).frames.shape[0] for p in first + second)
    stats = json.loads((ds / ACTION_STATS_FILE).read_text())
    assert stats["count"] == sum(read_episode(p).num_steps for p in first + second)


def test_training_reads_back_what_was_written(two_rounds, tmp_path):
    first, second = two_rounds
    ds = tmp_path / "dataset"
    append_episodes(first, ds)
    append_episodes(second, ds)
    got = load_lerobot_episodes(ds)
    assert [g.episode_id for g in got] == [f"ep{e:02d}" for e in range(6)]
    for g, p in zip(got, first + second, strict=True):
        assert_same_episode(g, read_episode(p), exact_images=False)
    # a round's training set: its ids only, though the dataset holds more
    chosen = DatasetEpisodes(ds, ("ep04", "ep01")).load()
    assert [e.episode_id for e in chosen] == ["ep01", "ep04"]
    with pytest.raises(KeyError, match="not in the dataset"):
        load_lerobot_episodes(ds, ["ep01", "nope"])


def test_images_dataset_reads_back_exactly(two_rounds, tmp_path):
    first, second = two_rounds
    ds = tmp_path / "dataset"
    append_episodes(first, ds, use_videos=False)
    append_episodes(second, ds, use_videos=False)
    for g, p in zip(load_lerobot_episodes(ds), first + second, strict=True):
        assert_same_episode(g, read_episode(p), exact_images=True)


def test_a_failed_append_is_rolled_back(two_rounds, tmp_path):
    """An append that fails part-way (here: round 2's last episode has another camera size)
    leaves the dataset as the last complete append left it, and the next append works."""
    first, second = two_rounds
    ds = tmp_path / "dataset"
    append_episodes(first, ds)
    before = {p.relative_to(ds): p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    odd = write(tmp_path / "episodes" / "odd", 9, "close_drawer", 3, "success", shape=(32, 32, 3))
    with pytest.raises(EpisodeExportError, match=r"frames are \(32, 32, 3\)"):
        append_episodes(second + [odd], ds)
    assert {p.relative_to(ds): p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before
    assert append_episodes(second, ds).added == ["ep03", "ep04", "ep05"]
    assert len(load_lerobot_episodes(ds)) == 6


def test_a_killed_append_is_rolled_back_by_the_next(two_rounds, tmp_path):
    """A process killed mid-append leaves its journal; the next append restores the dataset
    from it before adding anything."""
    from pipeline import lerobot_dataset

    first, second = two_rounds
    ds = tmp_path / "dataset"
    append_episodes(first, ds)
    before = {p.relative_to(ds): p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    # the dataset as a kill after some of round 2 was saved leaves it: journal still there
    killed, at_kill = tmp_path / "killed", tmp_path / "at_kill"
    shutil.copytree(ds, killed)
    with pytest.raises(RuntimeError, match="killed"):
        with journal(killed):
            lerobot_dataset._resume(second[:2], killed, "gymnast/episodes", IMAGE_KEY, "libsvtav1")
            shutil.copytree(killed, at_kill)
            raise RuntimeError("killed")
    shutil.rmtree(killed)
    shutil.copytree(at_kill, killed)
    assert (killed / JOURNAL).is_dir()
    assert len(dataset_episode_ids(killed)) == 5  # the half-done append's sidecar
    assert append_episodes([], killed).total_episodes == 3  # rolled back first
    assert {
        p.relative_to(killed): p.read_bytes() for p in killed.rglob("*") if p.is_file()
    } == before
    assert append_episodes(second, killed).added == ["ep03", "ep04", "ep05"]


def test_append_refuses_a_dataset_it_did_not_write(tmp_path, two_rounds):
    external = bridge_like_dataset(tmp_path / "bridge", episodes=1, steps=3)
    with pytest.raises(EpisodeExportError, match="did not write"):
        append_episodes(two_rounds[0], external)


# --- a lab's own LeRobot dataset -----------------------------------------------------------------

BRIDGE_SHAPE = (48, 48, 3)
BRIDGE_STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "pad", "gripper"]
ACTION_NAMES_BRIDGE = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]


def bridge_like_dataset(root, episodes: int, steps: int, with_success: bool = False):
    """Written by lerobot's own API with Bridge's features (as lerobot's Bridge port names them):
    a third-person camera, an 8-d state with a pad dimension, 7-d delta actions, the task string."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.images.image": {
            "dtype": "video",
            "shape": BRIDGE_SHAPE,
            "names": ["height", "width", "channels"],
        },
        "observation.state": {
            "dtype": "float32",
            "shape": (8,),
            "names": {"motors": BRIDGE_STATE_NAMES},
        },
        "action": {"dtype": "float32", "shape": (7,), "names": ACTION_NAMES_BRIDGE},
    }
    if with_success:
        features["next.success"] = {"dtype": "bool", "shape": (1,), "names": None}
    ds = LeRobotDataset.create("lab/bridge_like", fps=5, features=features, root=root)
    for e in range(episodes):
        for t in range(steps):
            frame = {
                "observation.images.image": smooth_frame(t, 50 + e, BRIDGE_SHAPE),
                "observation.state": np.arange(8, dtype=np.float32) + 10 * e + t,
                "action": np.full(7, 0.01 * (t + 1), np.float32),
                "task": "put the spoon on the towel" if e % 2 else TASKS["open_drawer"].instruction,
            }
            if with_success:
                frame["next.success"] = np.array([t == steps - 1 and e == 0])
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return root


def test_external_bridge_like_dataset_reads_as_episodes(tmp_path):
    root = bridge_like_dataset(tmp_path / "bridge", episodes=2, steps=4, with_success=True)
    eps = ExternalDataset.parse(str(root)).load()
    assert [e.episode_id for e in eps] == ["bridge-000000", "bridge-000001"]
    first, second = eps
    assert first.frames.shape == (4, *BRIDGE_SHAPE) and first.actions.shape == (3, 7)
    np.testing.assert_array_equal(second.states[1], [11, 12, 13, 14, 15, 16, 18])  # pad dropped
    np.testing.assert_allclose(first.actions[:, 0], [0.01, 0.02, 0.03], rtol=1e-6)
    err = np.abs(first.frames[2].astype(np.float32) - smooth_frame(2, 50, BRIDGE_SHAPE)).mean()
    assert err <= VIDEO_MEAN_ABS_TOL
    assert (first.task, first.instruction) == ("open_drawer", TASKS["open_drawer"].instruction)
    assert (second.task, second.instruction) == ("put the spoon on the towel",) * 2
    assert (first.success, second.success) == (True, False)  # from next.success
    labelled = ExternalDataset.parse({"path": str(root), "success": True}).load()
    assert [e.success for e in labelled] == [True, True]
    with pytest.raises(ValueError, match="external dataset is a folder path"):
        ExternalDataset.parse({"root": str(root)})
    with pytest.raises(FileNotFoundError, match="not a LeRobot dataset"):
        ExternalDataset.parse(str(tmp_path)).load()


def test_world_model_stage_trains_from_the_dataset_and_the_external_one(
    two_rounds, tmp_path, monkeypatch
):
    """The dataset stage appends round by round; the world-model stage gets the round's episodes
    from the LeRobotDataset (not the HDF5 files) plus the lab's external dataset, in training."""
    import world_model.train
    from pipeline.round.config import RoundConfig
    from pipeline.round.stages import build_dataset, refresh_world_model

    first, second = two_rounds
    ds = tmp_path / "dataset"
    info1 = build_dataset([first[0].parent], ds)
    assert (info1.n_episodes, info1.new_episodes) == (3, 3)
    info2 = build_dataset([first[0].parent, second[0].parent], ds)
    assert (info2.n_episodes, info2.new_episodes) == (6, 3)
    assert info2.per_task["close_drawer"] == {"episodes": 3, "successes": 2, "failures": 1}
    external = bridge_like_dataset(tmp_path / "bridge", episodes=2, steps=6)

    seen = []
    real_train = world_model.train.train_world_model

    def spy(cfg, episodes, *args, **kw):
        seen.extend(episodes)
        return real_train(cfg, episodes, *args, **kw)

    monkeypatch.setattr(world_model.train, "train_world_model", spy)
    cfg = RoundConfig.from_preset(
        "smoke", world_model_steps=2, external_datasets=({"path": str(external)},)
    )
    ids = tuple(episode_id_of(p) for p in info1.episode_files)  # round 1's training set
    art = refresh_world_model([DatasetEpisodes(ds, ids)], None, tmp_path / "wm", cfg, False)
    assert (art.path / "preview.mp4").is_file()
    ours = [e for e in seen if e.station_id == "station-a"]
    assert {e.episode_id for e in ours} < set(ids)  # round 1's only, less the held-out one(s)
    for e in ours:
        assert_same_episode(e, read_episode(first[int(e.episode_id[2:])]), exact_images=False)
    assert {e.episode_id for e in seen if e.station_id == "lerobot:bridge"} == {
        "bridge-000000",
        "bridge-000001",
    }
