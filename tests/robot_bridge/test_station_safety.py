"""Station safety, tried as an outside reviewer would: against a real station process on 127.0.0.1.

One test (or a few) per defect of the safety review: code in uploaded checkpoints, actions that
overflow float32, replies cached across peers, path-like checkpoint ids, unbounded messages, long
work on the socket thread, opt-in authentication, uploads that never expire, and the nits.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth

from robot_bridge import protocol
from robot_bridge.auth import create_keys
from robot_bridge.checkpoints import build_manifest
from robot_bridge.client import StationClient, StationError
from robot_bridge.episodes import (
    EpisodeMeta,
    EpisodeWriter,
    list_episodes,
    read_episode,
    recover_partials,
)
from robot_bridge.launch import StationProcess
from robot_bridge.policies import PolicyLoadError, load_policy, write_policy_config
from robot_bridge.spec import ACTION_HIGH, ACTION_LOW

OPEN = np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.float32)
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    with StationProcess("instant", episodes_dir=root / "episodes", lease_timeout_s=1.0) as s:
        s.root = root
        yield s


@pytest.fixture
def client(station):
    c = StationClient(station.endpoint, timeout_s=5.0, name="test")
    yield c
    if c.lease:
        with contextlib.suppress(StationError):
            c.release_lease()
    c.close()


class RawPeer:
    """A bare DEALER socket: sends exactly the frames it is given."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, frames: list, timeout_ms: int = 5000) -> dict | None:
        self.sock.send_multipart([bytes(memoryview(f)) for f in frames])
        if not self.sock.poll(timeout_ms):
            return None
        header, _ = protocol.decode(self.sock.recv_multipart())
        return header

    def close(self) -> None:
        self.sock.close()


def evil_module(folder: Path, marker: Path) -> None:
    """A module that proves it ran by writing ``marker`` when imported."""
    (folder / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import ProcessorMixin as EvilProcessor\n"
    )


# --- 1. an uploaded checkpoint never runs code ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vla_dir(tmp_path_factory) -> Path:
    from policy.vla import VLAPolicy

    d = tmp_path_factory.mktemp("vla") / "ckpt"
    VLAPolicy.build().save_pretrained(d)
    return d


def test_a_checkpoint_with_code_is_refused_at_upload_naming_the_file(
    client, tiny_vla_dir, tmp_path
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_vla_dir, ckpt)
    evil_module(ckpt, tmp_path / "ran")
    with pytest.raises(StationError, match="refused file 'evil.py'") as e:
        client.upload_checkpoint(ckpt)
    assert e.value.code == "bad_checkpoint"


def test_a_checkpoint_naming_remote_code_is_refused_at_upload(client, tiny_vla_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_vla_dir, ckpt)
    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    pre["auto_map"] = {"AutoProcessor": "evil.EvilProcessor"}
    (ckpt / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(StationError, match="preprocessor_config.json.*remote code"):
        client.upload_checkpoint(ckpt)
    assert not client.hello()["estop"]


def test_a_job_never_imports_code_from_a_checkpoint_placed_in_the_store(
    station, client, tiny_vla_dir, tmp_path
):
    """Defence in depth: a checkpoint put in the store by hand (or by an older station) with an
    ``auto_map`` and the module it names is refused by the loader, and the module never runs."""
    marker = tmp_path / "ran"
    good_sha = client.upload_checkpoint(tiny_vla_dir)
    store = Path(client.wait_commit(good_sha, total_bytes=0)).parent
    planted = store / good_sha
    evil_module(planted, marker)
    pre = json.loads((planted / "preprocessor_config.json").read_text())
    pre["auto_map"] = {"AutoProcessor": "evil.EvilProcessor"}
    (planted / "preprocessor_config.json").write_text(json.dumps(pre))
    job = client.job_submit(good_sha, ["open_drawer"], episodes_per_task=1)
    status = client.wait_job(job, poll_s=0.1)
    assert status["state"] == "failed" and "refused file" in status["error"], status
    assert not marker.exists(), "code from a checkpoint ran inside the station"
    shutil.rmtree(planted)
    (store / f"{good_sha}.verified").unlink()


def test_the_vla_loader_refuses_remote_code_and_never_follows_base_model_path(
    tiny_vla_dir, tmp_path
):
    from policy.vla import CheckpointError, VLAPolicy

    base = tmp_path / "base"
    base.mkdir()
    evil_module(base, tmp_path / "ran")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_vla_dir, ckpt)
    hf_config = json.loads((ckpt / "config.json").read_text())
    hf_config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (ckpt / "config.json").write_text(json.dumps(hf_config))
    meta = json.loads((ckpt / "gymnast_vla.json").read_text())
    meta["base_model_path"] = str(base)
    (ckpt / "gymnast_vla.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="remote code"):
        VLAPolicy.from_pretrained(ckpt, trust_remote_code=False)
    with pytest.raises(CheckpointError, match="remote code"):
        VLAPolicy.from_pretrained(ckpt)  # the default follows the config: off
    with pytest.raises(PolicyLoadError, match="refused file 'config.json'.*auto_map"):
        load_policy(ckpt)
    assert not (tmp_path / "ran").exists()


def test_load_policy_refuses_pickles_and_symlinks(tmp_path):
    ckpt = write_policy_config(tmp_path / "p", "random", seed=0)
    (ckpt / "weights.bin").write_bytes(b"\x80\x04")
    with pytest.raises(PolicyLoadError, match="refused file 'weights.bin'"):
        load_policy(ckpt)
    (ckpt / "weights.bin").unlink()
    (ckpt / "extra.json").symlink_to("/etc/hostname")
    with pytest.raises(PolicyLoadError, match="symbolic link"):
        load_policy(ckpt)


# --- 2. an action that overflows float32 ------------------------------------------------------


def test_a_float64_action_beyond_float32_is_refused_and_nothing_moves(client):
    client.acquire_lease()
    _, info = client.reset("open_drawer", seed=1)
    huge = np.array([1e39, 0, 0, 0, 0, 0, 1], dtype=np.float64)
    with pytest.raises(StationError, match="float32") as e:
        client.step(huge)
    assert e.value.code == "bad_action"
    assert client.step(OPEN).step == 1  # the refused action did not move the arm
    path = client.end_episode()
    assert read_episode(path).actions.shape == (1, 7)


def test_every_reply_to_a_mutating_request_is_kept_errors_too(station, client):
    """A retry never runs a request twice, whatever its first answer was."""
    client.acquire_lease()
    client.reset("open_drawer", seed=2, record=False)
    peer = RawPeer(station.endpoint)
    try:
        frames = protocol.request("retry-1", "step", {}, client.lease, {"action": OPEN})
        first = peer.send(frames)
        assert first["ok"] and first["result"]["step"] == 1
        client.end_episode()
        again = peer.send(frames)  # the episode is gone: executed again it would fail
        assert again == first
    finally:
        peer.close()


# --- 3. replies are cached per peer ---------------------------------------------------------------


def test_another_peer_reusing_a_request_id_never_gets_the_first_ones_reply(station):
    a, b = RawPeer(station.endpoint), RawPeer(station.endpoint)
    try:
        frames = protocol.request("guessable-1", "acquire_lease", {"client": "a"})
        got = a.send(frames)
        assert got["ok"] and got["result"]["lease"]
        stolen = b.send(frames)
        assert not stolen["ok"] and stolen["error"]["code"] == "leased_by_other"
        assert "lease" not in json.dumps(stolen.get("result", {}))
        reused = a.send(
            protocol.request("guessable-1", "release_lease", {}, got["result"]["lease"])
        )
        assert (
            reused["error"]["code"] == "bad_request"
            and "already used" in reused["error"]["message"]
        )
        assert a.send(protocol.request("guessable-2", "release_lease", {}, got["result"]["lease"]))[
            "ok"
        ]
    finally:
        a.close()
        b.close()


# --- 4. checkpoint ids are content addresses only ---------------------------------------------


def test_checkpoint_ids_that_look_like_paths_are_refused(client, tmp_path):
    planted = write_policy_config(tmp_path / "planted", "random", seed=0)
    (tmp_path / "planted.verified").write_text("x")  # what has() looked for beside the folder
    for bad in (str(planted), "../" + "a" * 61, "A" * 64, "a" * 63):
        with pytest.raises(StationError, match="content address") as e:
            client.job_submit(bad, ["open_drawer"], 1)
        assert e.value.code == "bad_request"
        for op, args in (
            (
                "upload_begin",
                {"sha256": bad, "files": [{"path": "config.json", "size": 1, "sha256": "0" * 64}]},
            ),
            ("upload_chunk", {"sha256": bad, "path": "config.json", "offset": 0}),
            ("upload_commit", {"sha256": bad}),
        ):
            arrays = {"data": np.zeros(1, np.uint8)} if op == "upload_chunk" else None
            with pytest.raises(StationError, match="content address"):
                client.call(op, args, arrays)


# --- 5. a message's memory is bounded -------------------------------------------------------------


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_message_is_bounded_in_frames_and_bytes(tmp_path):
    with StationProcess("instant", episodes_dir=tmp_path / "ep") as s:
        peak = _peak_rss_mib(s.proc.pid)
        peer = RawPeer(s.endpoint)
        try:
            header = msgpack.packb({"v": 1, "id": "big", "op": "ping", "args": {}})
            # four 48 MiB frames: refused by the transport before it buffers them
            assert peer.send([header, *[b"\0" * (48 * MiB)] * 4], timeout_ms=2000) is None
            # many legal frames: refused by the station as it reads them
            peer2 = RawPeer(s.endpoint)
            refused = peer2.send([header, *[b"\0" * MiB] * 20])
            peer2.close()
            assert refused["error"]["code"] == "too_large"
            assert str(protocol.MAX_MESSAGE_FRAMES) in refused["error"]["message"]
            growth = _peak_rss_mib(s.proc.pid) - peak
            assert growth < 64, f"the station's peak memory grew by {growth:.0f} MiB"
        finally:
            peer.close()
        with StationClient(s.endpoint, timeout_s=3.0) as c:
            assert c.hello()["limits"]["max_message_bytes"] == protocol.MAX_MESSAGE_BYTES


def test_a_header_with_an_overflowing_shape_or_deep_nesting_is_a_bad_message(station):
    peer = RawPeer(station.endpoint)
    try:
        huge = msgpack.packb(
            {
                "v": 1,
                "id": "s",
                "op": "step",
                "args": {},
                "arrays": [["a", "float64", [2**62, 2**62]]],
            }
        )
        assert peer.send([huge, b""])["error"]["code"] == "bad_message"
        deep = b"\x91" * 1000 + msgpack.packb("x")  # [[[...["x"]...]]], 1000 lists deep
        nested = msgpack.packb({"v": 1, "id": "n", "op": "ping", "args": {"a": "@"}})
        reply = peer.send([nested.replace(msgpack.packb("@"), deep)])
        assert reply["error"]["code"] == "bad_message", reply
        deep_id = msgpack.packb({"v": 1, "id": "@", "op": "ping"}).replace(msgpack.packb("@"), deep)
        assert peer.send([deep_id])["error"]["code"] == "bad_message"
    finally:
        peer.close()


# --- 6. e-stop within a control period during the largest upload ---------------------------------


def test_estop_is_answered_within_a_control_period_during_the_largest_upload(tmp_path):
    """The station's store is capped at 1 GiB here, so 1 GiB is the largest allowed upload; at the
    32 GiB default the work on the socket thread per message is the same (one chunk)."""
    largest = 1024 * MiB
    ckpt = write_policy_config(tmp_path / "big", "random", seed=0)
    with open(ckpt / "model.safetensors", "wb") as f:
        f.truncate(largest - 1024)  # sparse: cheap to make and to read here
    sha, entries = build_manifest(ckpt)
    with (
        StationProcess(
            "instant", episodes_dir=tmp_path / "ep", station_args=["--checkpoint-store-gb", "1"]
        ) as s,
        StationClient(s.endpoint, timeout_s=30.0, name="uploader") as uploader,
        StationClient(s.endpoint, timeout_s=5.0, retries=0, name="operator") as operator,
    ):
        phase = {"now": "chunks"}

        def upload() -> None:
            uploader.call("upload_begin", {"sha256": sha, "files": [e.to_dict() for e in entries]})
            for e in entries:
                with open(ckpt / e.path, "rb") as f:
                    offset = 0
                    while data := f.read(4 * MiB):
                        uploader.upload_chunk(sha, e.path, offset, data)
                        offset += len(data)
            phase["now"] = "verifying"
            while uploader.call("upload_commit", {"sha256": sha})[0]["state"] != "done":
                time.sleep(0.01)
            phase["now"] = "done"

        thread = threading.Thread(target=upload)
        thread.start()
        latencies: dict[str, list[float]] = {"chunks": [], "verifying": []}
        while thread.is_alive():
            now = phase["now"]
            t0 = time.monotonic()
            operator.estop("drill")
            if now in latencies and phase["now"] == now:
                latencies[now].append(time.monotonic() - t0)
            time.sleep(0.02)
        thread.join()
        assert phase["now"] == "done" and uploader.hello()["estop"]
        assert latencies["chunks"] and latencies["verifying"], latencies
        worst = max(max(v) for v in latencies.values())
        assert worst < 0.2, f"e-stop took {worst * 1000:.0f} ms during an upload: {latencies}"
        operator.estop_clear()


# --- 7. authentication, roles and a persistent e-stop ---------------------------------------------


def test_an_unauthenticated_station_refuses_to_listen_beyond_loopback(tmp_path):
    with pytest.raises(RuntimeError, match="refusing to bind.*without authentication"):
        StationProcess("instant", episodes_dir=tmp_path / "ep", bind="tcp://0.0.0.0:*")
    with StationProcess(
        "instant",
        episodes_dir=tmp_path / "ep",
        bind="tcp://0.0.0.0:*",
        station_args=["--insecure-allow-unauthenticated-network"],
    ) as s:
        assert s.alive()


@pytest.fixture
def keys(tmp_path):
    d = tmp_path / "keys"
    create_keys(d)
    public, _ = zmq.auth.create_certificates(d, "second")
    shutil.copy(public, d / "authorized_clients" / "second.key")
    return d


def _as(endpoint: str, keys: Path, name: str, **kw) -> StationClient:
    return StationClient(
        endpoint, server_key=keys / "server.key", client_key=keys / f"{name}.key_secret", **kw
    )


def test_only_an_operator_clears_an_estop_and_it_survives_a_restart(tmp_path, keys):
    ep = tmp_path / "ep"
    s = StationProcess("instant", episodes_dir=ep, keys_dir=keys)
    with _as(s.endpoint, keys, "client", timeout_s=3.0) as c:
        assert c.hello()["role"] == "client"
        latched = c.estop("test drill")["latched"]
        with pytest.raises(StationError, match="operator") as e:
            c.estop_clear()
        assert e.value.code == "forbidden"
        deadline = time.monotonic() + 10  # the record is written off the socket thread
        while not latched and time.monotonic() < deadline:
            latched = c.hello()["estop_latched"]
        assert latched, "the e-stop never reached the disk"
    s.kill()  # no clean shutdown: the e-stop must still hold
    with StationProcess("instant", episodes_dir=ep, keys_dir=keys) as s2:
        with _as(s2.endpoint, keys, "client", timeout_s=3.0) as c:
            hello = c.hello()
            assert hello["estop"] and "test drill" in hello["estop_reason"]
            assert hello["estop_latched"]
            c.acquire_lease()
            with pytest.raises(StationError) as e:
                c.reset("open_drawer", seed=0)
            assert e.value.code == "estop_active"
            c.release_lease()
        with _as(s2.endpoint, keys, "operator", timeout_s=3.0) as op:
            assert op.hello()["role"] == "operator"
            op.estop_clear()
    with (
        StationProcess("instant", episodes_dir=ep, keys_dir=keys) as s3,
        _as(s3.endpoint, keys, "client", timeout_s=3.0) as c,
    ):
        assert not c.hello()["estop"]


def test_a_client_cannot_cancel_another_clients_job(tmp_path, keys):
    with StationProcess("instant", episodes_dir=tmp_path / "ep", keys_dir=keys) as s:
        with (
            _as(s.endpoint, keys, "client", timeout_s=3.0) as owner,
            _as(s.endpoint, keys, "second", timeout_s=3.0) as other,
            _as(s.endpoint, keys, "operator", timeout_s=3.0) as op,
        ):
            sha = owner.upload_checkpoint(write_policy_config(tmp_path / "r", "random", seed=1))
            job = owner.job_submit(sha, ["eggplant_in_basket"], episodes_per_task=1000)
            with pytest.raises(StationError, match="another client") as e:
                other.job_cancel(job)
            assert e.value.code == "forbidden"
            assert op.job_cancel(job)["job_id"] == job
            assert owner.wait_job(job, poll_s=0.05)["state"] == "cancelled"


# --- 8. uploads expire; the store has a cap -------------------------------------------------------


def test_an_abandoned_upload_expires_with_its_staging_folder(tmp_path):
    ckpt = write_policy_config(tmp_path / "p", "random", seed=3)
    sha, entries = build_manifest(ckpt)
    store = tmp_path / "station_checkpoints"
    with (
        StationProcess(
            "instant", episodes_dir=tmp_path / "ep", station_args=["--upload-ttl", "1"]
        ) as s,
        StationClient(s.endpoint, timeout_s=3.0) as c,
    ):
        c.call("upload_begin", {"sha256": sha, "files": [e.to_dict() for e in entries]})
        assert (store / f".upload-{sha}").is_dir()
        deadline = time.monotonic() + 10
        while (store / f".upload-{sha}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not (store / f".upload-{sha}").exists()
        with pytest.raises(StationError, match="no upload"):
            c.call(
                "upload_chunk",
                {"sha256": sha, "path": "config.json", "offset": 0},
                arrays={"data": np.zeros(1, np.uint8)},
            )


def test_the_store_evicts_least_recently_used_and_refuses_what_cannot_fit(tmp_path):
    def ckpt(name: str, mib: float) -> Path:
        d = write_policy_config(tmp_path / name, "random", seed=len(name))
        (d / "model.safetensors").write_bytes(
            np.random.default_rng(len(name)).bytes(int(mib * MiB))
        )
        return d

    gb = 3 / 1024  # a 3 MiB store
    with (
        StationProcess(
            "instant", episodes_dir=tmp_path / "ep", station_args=["--checkpoint-store-gb", str(gb)]
        ) as s,
        StationClient(s.endpoint, timeout_s=5.0) as c,
    ):
        first = c.upload_checkpoint(ckpt("a", 1.2))
        second = c.upload_checkpoint(ckpt("bb", 1.2))
        third = c.upload_checkpoint(ckpt("ccc", 1.2))  # evicts the least recently used: first
        store = tmp_path / "station_checkpoints"
        held = {p.name.removesuffix(".verified") for p in store.glob("*.verified")}
        assert held == {second, third}
        assert first not in held
        with pytest.raises(StationError, match="limit") as e:
            c.upload_checkpoint(ckpt("dddd", 4))
        assert e.value.code == "bad_checkpoint"


# --- 9. nits ----------------------------------------------------------------------------------


def test_recovery_conflicts_never_stop_a_station_from_starting(tmp_path):
    ep = tmp_path / "ep"
    meta = EpisodeMeta("20260101T000000-dup", "open_drawer", "x", 0, "s0", "remote_control", "sim")
    EpisodeWriter(ep, meta, image_shape=(8, 8, 3)).close()  # a partial file, as a crash leaves it
    (ep / "20260101T000000-dup.crashed.h5").write_bytes(b"an earlier recovery's file")
    with StationProcess("instant", episodes_dir=ep) as s, StationClient(s.endpoint) as c:
        assert c.hello()["recovered_partial_episodes"] == []
    assert (ep / "20260101T000000-dup.partial.h5").exists()  # kept untouched
    assert recover_partials(ep, "x") == []


def test_a_crashed_episode_shows_the_last_acknowledged_action(tmp_path):
    ep = tmp_path / "ep"
    s = StationProcess("instant", episodes_dir=ep)
    c = StationClient(s.endpoint, timeout_s=3.0)
    c.acquire_lease()
    c.reset("open_drawer", seed=4)
    sent = [OPEN * 0 + np.float32(0.01 * (i + 1)) for i in range(6)]
    for a in sent:
        c.step(a.astype(np.float32))
    s.kill()
    c.close()
    with StationProcess("instant", episodes_dir=ep) as s2, StationClient(s2.endpoint) as c2:
        (recovered,) = c2.hello()["recovered_partial_episodes"]
    got = read_episode(ep / recovered)
    assert got.actions.shape[0] + 1 == got.frames.shape[0]
    assert got.unobserved_final_action is not None
    np.testing.assert_allclose(
        got.unobserved_final_action, np.clip(sent[-1], ACTION_LOW, ACTION_HIGH)
    )
    assert list_episodes(ep) == []
