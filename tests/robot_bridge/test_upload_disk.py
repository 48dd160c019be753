"""Uploads against a disk that stalls or fills: the station answers an e-stop at once, the client
waits out a busy disk, and a failed write drops the upload with the reason, nothing half-stored.

A real station serves on 127.0.0.1 in this process (the simulated arm, no renderer); only its
disk is made to misbehave, by wrapping the store's chunk write: the hardware we cannot make stall
on demand.
"""

import errno
import threading
import time

import numpy as np
import pytest

from robot_bridge.backends.sim import SimBackend
from robot_bridge.client import StationClient, StationError
from robot_bridge.station import Station, StationConfig
from robot_bridge.uploads import MAX_QUEUED_BYTES

CHECKPOINT_BYTES = MAX_QUEUED_BYTES + 8 * 2**20  # more than the writer's queue holds


@pytest.fixture
def station(tmp_path):
    backend = SimBackend(image_size=32, render=False)
    station = Station(
        backend, StationConfig(bind="tcp://127.0.0.1:0", episodes_dir=tmp_path / "episodes")
    )
    bound: list[str] = []
    ready = threading.Event()
    server = threading.Thread(
        target=station.serve, args=(lambda e: (bound.append(e), ready.set()),), daemon=True
    )
    server.start()
    assert ready.wait(30)
    station.endpoint = bound[0]
    yield station
    station.stop()
    server.join(30)
    backend.close()


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    rng = np.random.default_rng(0)
    (folder / "model.safetensors").write_bytes(rng.bytes(CHECKPOINT_BYTES))
    (folder / "config.json").write_text('{"kind": "test"}')
    return folder


@pytest.fixture
def disk_back(station):
    """Every chunk write waits until this event is set, as on a stalled disk. Set again at
    teardown: a test that fails before it brings the disk back must not leave the writer thread
    stalled, or the interpreter waits for it at exit and the whole test run hangs."""
    back = threading.Event()
    write = station.checkpoints.write_chunk

    def stalled(*args, **kwargs):
        back.wait()
        return write(*args, **kwargs)

    station.checkpoints.write_chunk = stalled
    yield back
    back.set()


def test_estop_is_answered_at_once_while_the_disk_stalls_mid_upload(station, checkpoint, disk_back):
    uploaded: list = []
    with StationClient(station.endpoint, timeout_s=30) as uploader:

        def upload():
            try:
                uploaded.append(uploader.upload_checkpoint(checkpoint))
            except Exception as e:  # noqa: BLE001 - the assertion below reports it
                uploaded.append(e)

        sender = threading.Thread(target=upload)
        sender.start()
        # the writer's queue fills while the disk stalls; the uploader is then told "busy"
        deadline = time.monotonic() + 30
        while station.uploads._queued_bytes < MAX_QUEUED_BYTES - 2**20:
            assert time.monotonic() < deadline, "the upload never filled the writer's queue"
            time.sleep(0.02)
        with StationClient(station.endpoint, timeout_s=5, retries=0) as operator:
            answered = []
            for _ in range(5):
                start = time.monotonic()
                operator.estop("disk stall drill")
                answered.append(time.monotonic() - start)
                operator.estop_clear()
        assert sender.is_alive(), "the upload finished although the disk never wrote a byte"
        assert max(answered) < 0.2, answered  # one control period
        disk_back.set()
        sender.join(60)
    assert isinstance(uploaded[0], str), uploaded
    stored = station.checkpoints.path(uploaded[0]) / "model.safetensors"
    assert stored.read_bytes() == (checkpoint / "model.safetensors").read_bytes()


def test_the_client_gives_up_on_a_disk_that_never_comes_back(
    station, checkpoint, disk_back, monkeypatch
):
    monkeypatch.setattr("robot_bridge.client.BUSY_PATIENCE_S", 0.5)
    with StationClient(station.endpoint, timeout_s=30) as client:
        with pytest.raises(StationError) as e:
            client.upload_checkpoint(checkpoint)
    assert e.value.code == "busy" and "waiting for the disk" in e.value.message
    disk_back.set()


def test_a_full_disk_drops_the_upload_and_says_why(station, checkpoint):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    station.checkpoints.write_chunk = full
    with StationClient(station.endpoint, timeout_s=30) as client:
        with pytest.raises(StationError) as e:
            client.upload_checkpoint(checkpoint)
        assert e.value.code == "bad_checkpoint"
        assert "No space left on device" in e.value.message
        assert "start it again" in e.value.message
        assert client.hello()["station_id"] == "station-0"  # the station goes on serving
    deadline = time.monotonic() + 10
    while list(station.checkpoints.root.glob(".upload-*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the writer thread deletes the staging folder after its queued writes
    assert not [p for p in station.checkpoints.root.iterdir() if not p.name.startswith(".trash")]
