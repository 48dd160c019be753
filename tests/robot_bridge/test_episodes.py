"""The episode store through real h5py files, real killed processes and a real file-size limit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from robot_bridge.backends.base import Observation
from robot_bridge.checkpoints import sha256_file
from robot_bridge.episodes import (
    CRASHED_SUFFIX,
    Episode,
    EpisodeMeta,
    EpisodeReadError,
    EpisodeWriter,
    list_corrupt,
    list_episodes,
    read_episode,
    read_episode_header,
    recover_partials,
    summarize,
    validate_episode,
)
from robot_bridge.spec import ACTION_HIGH, ACTION_LOW

REPO = Path(__file__).resolve().parents[2]
SHAPE = (64, 64, 3)


def frame(t: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(t).integers(0, 256, size=shape, dtype=np.uint8)


def state(t: int) -> np.ndarray:
    return np.array([0.3, 0.0, 0.1, 0.0, 0.0, 0.0, 1.0], np.float32) + np.float32(0.001 * t)


def requested(t: int) -> np.ndarray:
    a = np.random.default_rng(1000 + t).uniform(-0.1, 1.1, size=7)
    return a.astype(np.float32)


def executed(t: int) -> np.ndarray:
    return np.clip(requested(t), ACTION_LOW, ACTION_HIGH).astype(np.float32)


def obs(t: int, shape=SHAPE) -> Observation:
    return Observation(image=frame(t, shape), state=state(t), timestamp=100.0 + 0.2 * t, seq=10 + t)


def make_meta(episode_id: str = "ep-0001", task: str = "open_drawer") -> EpisodeMeta:
    return EpisodeMeta(
        episode_id=episode_id,
        task=task,
        instruction="open the drawer",
        seed=7,
        station_id="station-a",
        policy_sha256="ab" * 32,
        backend="instant",
        job_id="job-1",
        extra={"reset_attempts": 1},
    )


def write_episode(root: Path, steps: int = 4, episode_id: str = "ep-0001", **finish) -> Path:
    w = EpisodeWriter(root, make_meta(episode_id), image_shape=SHAPE)
    for t in range(steps):
        w.append(obs(t), executed(t), requested_action=requested(t))
    w.append(obs(steps), None)
    labels = {"success": True, "success_source": "sim_ground_truth", "termination": "success"}
    return w.finish(**{**labels, **finish})


def test_round_trip_every_field(tmp_path):
    path = write_episode(tmp_path, steps=4)
    assert path == tmp_path / "ep-0001.h5"
    assert not (tmp_path / "ep-0001.partial.h5").exists()
    ep = read_episode(path)
    assert isinstance(ep, Episode)
    assert (ep.episode_id, ep.task, ep.instruction, ep.seed) == (
        "ep-0001",
        "open_drawer",
        "open the drawer",
        7,
    )
    assert (ep.station_id, ep.policy_sha256, ep.backend, ep.job_id) == (
        "station-a",
        "ab" * 32,
        "instant",
        "job-1",
    )
    assert (ep.success, ep.success_source, ep.termination, ep.complete) == (
        True,
        "sim_ground_truth",
        "success",
        True,
    )
    assert ep.extra == {"reset_attempts": 1}
    assert ep.num_steps == 4
    np.testing.assert_array_equal(ep.frames, np.stack([frame(t) for t in range(5)]))
    assert ep.frames.dtype == np.uint8 and ep.frames.shape == (5, *SHAPE)
    np.testing.assert_array_equal(ep.states, np.stack([state(t) for t in range(5)]))
    np.testing.assert_array_equal(ep.timestamps, [100.0 + 0.2 * t for t in range(5)])
    np.testing.assert_array_equal(ep.seqs, np.arange(10, 15))
    np.testing.assert_array_equal(ep.actions, np.stack([executed(t) for t in range(4)]))
    np.testing.assert_array_equal(ep.actions_requested, np.stack([requested(t) for t in range(4)]))
    assert (ep.states.dtype, ep.timestamps.dtype, ep.actions.dtype) == (
        np.float32,
        np.float64,
        np.float32,
    )
    assert ep.unobserved_final_action is None and ep.recovery is None
    assert ep.started_at and ep.finished_at and ep.content_sha256
    assert validate_episode(path) == []
    assert list_episodes(tmp_path) == [path]
    assert len(sha256_file(path)) == 64 and sha256_file(path) == sha256_file(path)


def test_abort_keeps_episode_and_the_unobserved_last_action(tmp_path):
    w = EpisodeWriter(tmp_path, make_meta(), image_shape=SHAPE)
    for t in range(3):
        w.append(obs(t), executed(t), requested_action=requested(t))
    path = w.abort("lease_expired")
    ep = read_episode(path)
    assert (ep.complete, ep.success, ep.success_source, ep.termination) == (
        True,
        None,
        "none",
        "lease_expired",
    )
    assert ep.frames.shape[0] == 3 and ep.num_steps == 2
    np.testing.assert_array_equal(ep.unobserved_final_action, executed(2))
    assert validate_episode(path) == []


def _header_matches(path: Path) -> None:
    """The header reader agrees with the full reader on labels, sizes and frame 0."""
    ep, head = read_episode(path), read_episode_header(path)
    got = (head.task, head.instruction, head.seed, head.policy_sha256, head.success)
    assert got == (ep.task, ep.instruction, ep.seed, ep.policy_sha256, ep.success)
    assert head.success_source == ep.success_source
    assert (head.termination, head.num_frames, head.path) == (
        ep.termination,
        ep.frames.shape[0],
        path,
    )
    np.testing.assert_array_equal(head.first_frame, ep.first_frame)


def test_header_reads_labels_and_first_frame_of_finished_aborted_and_unfinished_files(tmp_path):
    done = write_episode(tmp_path / "done", steps=5, success=False, termination="max_steps")
    _header_matches(done)
    assert read_episode_header(done).success is False and read_episode_header(done).num_frames == 6

    w = EpisodeWriter(tmp_path / "aborted", make_meta(), image_shape=SHAPE)
    for t in range(3):
        w.append(obs(t), executed(t), requested_action=requested(t))
    aborted = w.abort("lease_expired")
    _header_matches(aborted)
    assert read_episode_header(aborted).termination == "lease_expired"

    live = EpisodeWriter(tmp_path / "live", make_meta("ep-live"), image_shape=SHAPE)
    live.append(obs(0), executed(0), requested_action=requested(0))
    live.append(obs(1), executed(1), requested_action=requested(1))
    partial = live.partial_path
    _header_matches(partial)  # only committed steps, no labels yet
    assert read_episode_header(partial).success is None
    live.abort("error")

    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(EpisodeReadError, match="cannot open"):
        read_episode_header(tmp_path / "junk.h5")


def test_exception_inside_with_block_aborts_with_error(tmp_path):
    with (
        pytest.raises(ZeroDivisionError),
        EpisodeWriter(tmp_path, make_meta(), image_shape=SHAPE) as w,
    ):
        w.append(obs(0), executed(0))
        w.append(obs(1), None)
        _ = 1 / 0
    ep = read_episode(tmp_path / "ep-0001.h5")
    assert (ep.termination, ep.success, ep.frames.shape[0]) == ("error", None, 2)


def test_numpy_bool_labels_are_written_as_json(tmp_path):
    w = EpisodeWriter(tmp_path, make_meta(), image_shape=SHAPE)
    w.append(obs(0), executed(0))
    w.append(obs(1), None)
    path = w.finish(
        success=np.bool_(False), success_source="sim_ground_truth", termination="max_steps"
    )
    ep = read_episode(path)
    assert ep.success is False and ep.complete


def test_writer_refuses_bad_use(tmp_path):
    w = EpisodeWriter(tmp_path, make_meta(), image_shape=SHAPE)
    with pytest.raises(ValueError, match=r"frame must be \(64, 64, 3\) uint8"):
        w.append(obs(0, shape=(32, 32, 3)), executed(0))
    w.append(obs(0), executed(0))
    with pytest.raises(ValueError, match="newer than the last one"):
        w.append(obs(0), executed(0))
    with pytest.raises(RuntimeError, match="final observation with action=None"):
        w.finish(success=True, success_source="sim_ground_truth", termination="success")
    w.append(obs(1), None)
    with pytest.raises(ValueError, match="termination must be one of"):
        w.finish(success=True, success_source="sim_ground_truth", termination="done")
    with pytest.raises(ValueError, match="success_source 'none' goes with success None"):
        w.finish(success=False, success_source="none", termination="max_steps")
    w.finish(success=False, success_source="detector", termination="max_steps")
    with pytest.raises(FileExistsError, match="ep-0001"):
        EpisodeWriter(tmp_path, make_meta(), image_shape=SHAPE)
    with pytest.raises(
        ValueError, match="unknown task 'fly'; valid tasks: blue_cup_on_plate, close_drawer"
    ):
        make_meta(task="fly")


def _corrupt_states_shape(f):
    del f["states"]
    f["states"] = np.zeros((5, 6), np.float32)


def _corrupt_nan(f):
    f["states"][2, 1] = np.nan


def _corrupt_labels(f):
    del f.attrs["labels"]


def _corrupt_task(f):
    meta = json.loads(f.attrs["meta"])
    f.attrs["meta"] = json.dumps({**meta, "task": "fly"})


def _corrupt_pixel(f):
    f["frames"][3, 0, 0, 0] ^= 0xFF


def _corrupt_actions_unclipped(f):
    f["actions"][0, 0] = 0.5


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_corrupt_states_shape, "states shape (5, 6), expected (5, 7)"),
        (_corrupt_nan, "states has 1 non-finite values"),
        (_corrupt_labels, "labels missing"),
        (_corrupt_task, "unknown task 'fly'"),
        (_corrupt_pixel, "content_sha256 mismatch"),
        (_corrupt_actions_unclipped, "outside the Bridge bounds"),
    ],
)
def test_validate_catches_hand_corrupted_file(tmp_path, corrupt, message):
    path = write_episode(tmp_path)
    assert validate_episode(path) == []
    with h5py.File(path, "r+") as f:
        corrupt(f)
    problems = validate_episode(path)
    assert any(message in p for p in problems), problems


_KILLED_WRITER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_episodes import executed, make_meta, obs, requested, SHAPE
from robot_bridge.episodes import EpisodeWriter

w = EpisodeWriter(Path(sys.argv[1]), make_meta("killed-ep"), image_shape=SHAPE)
for t in range(10_000):
    w.append(obs(t), executed(t), requested_action=requested(t))
    if t + 1 == int(sys.argv[2]):
        print("written", t + 1, flush=True)
    time.sleep(0.002)
"""


def _run_child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_kill_9_mid_episode_leaves_a_partial_file_that_is_kept_and_flagged(tmp_path):
    n = 8
    child = _run_child(
        _KILLED_WRITER.format(tests=str(Path(__file__).resolve().parent)), str(tmp_path), str(n)
    )
    try:
        assert child.stdout.readline().split() == ["written", str(n)]
        time.sleep(0.05)  # let it keep writing, so the kill lands mid-episode
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    partial = tmp_path / "killed-ep.partial.h5"
    assert partial.exists() and not (tmp_path / "killed-ep.h5").exists()
    assert list_episodes(tmp_path) == []
    size = partial.stat().st_size

    recovered = recover_partials(tmp_path, station_id="station-a")
    assert len(recovered) == 1 and not partial.exists()
    assert list_episodes(tmp_path) == []  # never listed as complete
    if recovered[0].name.endswith(CRASHED_SUFFIX):
        ep = read_episode(recovered[0])
        assert (ep.complete, ep.termination, ep.success) == (False, "station_crashed", None)
        assert ep.recovery["recovered_by_station"] == "station-a"
        _header_matches(recovered[0])
        t_obs = ep.frames.shape[0]
        assert t_obs >= n and ep.num_steps == t_obs - 1
        np.testing.assert_array_equal(ep.frames, np.stack([frame(t) for t in range(t_obs)]))
        np.testing.assert_array_equal(ep.states, np.stack([state(t) for t in range(t_obs)]))
        np.testing.assert_array_equal(ep.actions, np.stack([executed(t) for t in range(t_obs - 1)]))
        assert any("not complete" in p for p in validate_episode(recovered[0]))
        assert list_episodes(tmp_path, include_partial=True) == recovered
    else:  # HDF5 could not open it: flagged corrupt, bytes kept
        assert recovered[0] == tmp_path / "killed-ep.corrupt.h5"
        assert recovered[0].stat().st_size == size and list_corrupt(tmp_path) == recovered
    assert recover_partials(tmp_path, station_id="station-a") == []


_DISK_FULL_WRITER = """
import json, resource, signal, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {tests!r})
from test_episodes import executed, make_meta, obs, write_episode
from robot_bridge.episodes import EpisodeWriteError, EpisodeWriter

root = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
w = EpisodeWriter(root, make_meta("big-ep"), image_shape=(256, 256, 3), compression=None)
out = {{}}
try:
    for t in range(100):
        w.append(obs(t, shape=(256, 256, 3)), executed(t))
    out["error"] = None
except EpisodeWriteError as e:
    out.update(error=str(e), path=str(e.path), committed=w.num_observations)
try:
    w.abort("error")
    out["abort"] = "succeeded"
except EpisodeWriteError as e:
    out["abort"] = str(e)
w.close()
out["other_episode"] = str(write_episode(root, steps=3, episode_id="small-ep"))
print(json.dumps(out), flush=True)
"""


def test_disk_full_raises_episode_write_error_and_keeps_partial_file(tmp_path):
    child = _run_child(
        _DISK_FULL_WRITER.format(tests=str(Path(__file__).resolve().parent)), str(tmp_path)
    )
    stdout, _ = child.communicate(timeout=60)
    assert child.returncode == 0, stdout
    out = json.loads(stdout.strip().splitlines()[-1])
    partial = tmp_path / "big-ep.partial.h5"
    assert out["error"] is not None, "a 1 MB file-size limit must stop a 256x256 episode"
    assert "big-ep" in out["error"] and str(partial) in out["error"]
    assert "could not" in out["error"] and out["path"] == str(partial)
    assert 1 <= out["committed"] < 6  # 196 kB per raw frame under a 1 MB limit
    assert "earlier write" in out["abort"] and "partial file is kept" in out["abort"]
    # The process went on to record another episode; the failed one never looks complete.
    assert out["other_episode"] == str(tmp_path / "small-ep.h5")
    assert list_episodes(tmp_path) == [tmp_path / "small-ep.h5"]
    assert validate_episode(tmp_path / "small-ep.h5") == []
    assert partial.exists() and not (tmp_path / "big-ep.h5").exists()
    # Space is reserved before HDF5 writes, so the failure leaves the HDF5 file consistent.
    (recovered,) = recover_partials(tmp_path, station_id="station-a")
    assert recovered == tmp_path / "big-ep.crashed.h5"
    ep = read_episode(recovered)
    assert ep.frames.shape[0] == out["committed"] and not ep.complete
    big = (256, 256, 3)
    np.testing.assert_array_equal(
        ep.frames, np.stack([frame(t, big) for t in range(out["committed"])])
    )
    assert list_episodes(tmp_path) == [tmp_path / "small-ep.h5"]


def test_recover_flags_unreadable_file_corrupt_and_keeps_its_bytes(tmp_path):
    partial = tmp_path / "garbled.partial.h5"
    partial.write_bytes(b"not an hdf5 file" * 100)
    (recovered,) = recover_partials(tmp_path, station_id="station-a")
    assert recovered == tmp_path / "garbled.corrupt.h5"
    assert recovered.read_bytes() == b"not an hdf5 file" * 100
    note = json.loads((tmp_path / "garbled.corrupt.json").read_text())
    assert note["status"] == "corrupt" and "cannot open" in note["error"]
    assert list_episodes(tmp_path, include_partial=True) == []
    with pytest.raises(EpisodeReadError, match="garbled"):
        read_episode(recovered)


def test_recover_skips_live_writer_and_commits_finished_but_unrenamed(tmp_path):
    live = EpisodeWriter(tmp_path, make_meta("live-ep"), image_shape=SHAPE)
    live.append(obs(0), executed(0))
    # A station that died between closing a finished file and renaming it.
    done = write_episode(tmp_path, episode_id="done-ep")
    shutil.move(done, tmp_path / "done-ep.partial.h5")
    assert recover_partials(tmp_path, station_id="station-a") == [done]
    assert validate_episode(done) == [] and (tmp_path / "live-ep.partial.h5").exists()
    live.append(obs(1), None)
    live.finish(success=False, success_source="operator", termination="max_steps")
    assert list_episodes(tmp_path) == [done, tmp_path / "live-ep.h5"]


def test_summarize_counts_tasks_successes_and_terminations(tmp_path):
    write_episode(tmp_path, episode_id="a")
    write_episode(
        tmp_path, episode_id="b", success=False, success_source="detector", termination="max_steps"
    )
    w = EpisodeWriter(tmp_path, make_meta("c"), image_shape=SHAPE)
    w.append(obs(0), executed(0))
    w.abort("estop")
    s = summarize(list_episodes(tmp_path))
    assert s["episodes"] == 3 and s["steps"] == 4 + 4 + 0
    assert s["tasks"]["open_drawer"] == {
        "episodes": 3,
        "complete": 3,
        "success": 1,
        "failure": 1,
        "unlabelled": 1,
        "success_rate": 0.5,
    }
    assert s["terminations"] == {"estop": 1, "max_steps": 1, "success": 1}
