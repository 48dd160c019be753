"""AutoEval compatibility both ways: json-numpy, `gymnast serve`, and the autoeval_http policy."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from robot_bridge import jsonnumpy
from robot_bridge.autoeval_server import READY_PREFIX, make_server, state_from_proprio
from robot_bridge.backends.base import Observation
from robot_bridge.policies import PolicyLoadError, load_policy, write_policy_config
from robot_bridge.policies.autoeval_http import (
    AutoEvalHTTPPolicy,
    PolicyServerError,
    write_autoeval_http_config,
)
from robot_bridge.policies.scripted import RandomPolicy, RandomPolicyConfig
from robot_bridge.spec import TASKS

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


@contextmanager
def serving(policy, policy_type="random"):
    """Our AutoEval server for ``policy`` on a free loopback port, in a thread."""
    httpd, app = make_server(policy, "127.0.0.1", 0, policy_type)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def fake_server(reply: bytes, status: int = 200, delay_s: float = 0.0):
    """A server answering every POST with ``reply`` (to test what the station does with it)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            time.sleep(delay_s)
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def post(url: str, path: str, body: bytes | str, timeout: float = 8.0) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def random_policy(seed: int = 0, chunk_size: int = 1) -> RandomPolicy:
    return RandomPolicy(RandomPolicyConfig(seed=seed, chunk_size=chunk_size))


def zero_request(**extra) -> dict:
    """What AutoEval's scheduler sends before it accepts a policy server."""
    return {
        "image": np.zeros((256, 256, 3), np.uint8),
        "proprio": np.zeros(8, np.float32),
        "instruction": "test connection",
        **extra,
    }


def obs(state=None) -> Observation:
    return Observation(
        image=np.zeros((256, 256, 3), np.uint8),
        state=np.zeros(7, np.float32) if state is None else state,
        timestamp=0.0,
        seq=0,
    )


# --------------------------------------------------------------------------- json-numpy codec


def test_codec_round_trip():
    values = {
        "image": np.arange(256 * 256 * 3, dtype=np.int64).astype(np.uint8).reshape(256, 256, 3),
        "f64": np.linspace(-1, 1, 12).reshape(3, 4),
        "strided": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],  # not C-contiguous
        "bool": np.array([True, False]),
        "empty": np.zeros((0, 7), np.float32),
        "big_endian": np.arange(3, dtype=">i4"),
        "scalar": np.float32(2.5),
        "nested": [{"a": np.int16(-3)}, "text", 1, None],
    }
    back = jsonnumpy.loads(jsonnumpy.dumps(values))
    for key in ("image", "f64", "strided", "bool", "empty", "big_endian"):
        assert back[key].dtype == values[key].dtype and back[key].shape == values[key].shape
        np.testing.assert_array_equal(back[key], values[key])
        assert back[key].flags.writeable
    assert isinstance(back["scalar"], np.float32) and back["scalar"] == 2.5
    assert back["nested"][0]["a"] == -3 and back["nested"][1:] == ["text", 1, None]


def test_codec_matches_the_json_numpy_package():
    # json_numpy 2.1: {"__numpy__": b64encode(data).decode(), "dtype": dtype_to_descr(dtype),
    # "shape": shape}, with json.dumps' default separators; an empty shape is a scalar.
    package_text = (
        '{"image": {"__numpy__": "AQID", "dtype": "|u1", "shape": [1, 1, 3]}, '
        '"proprio": {"__numpy__": "AACAPwAAAMA=", "dtype": "<f4", "shape": [2]}, '
        '"t": {"__numpy__": "AACAPw==", "dtype": "<f4", "shape": []}, '
        '"instruction": "open the drawer"}'
    )
    doc = jsonnumpy.loads(package_text)
    np.testing.assert_array_equal(doc["image"], np.array([[[1, 2, 3]]], np.uint8))
    assert doc["image"].dtype == np.uint8
    np.testing.assert_array_equal(doc["proprio"], np.array([1.0, -2.0], np.float32))
    assert isinstance(doc["t"], np.float32) and doc["t"] == 1.0
    assert doc["instruction"] == "open the drawer"
    # ...and we write exactly what the package writes.
    assert jsonnumpy.dumps(doc) == package_text
    action = np.arange(7, dtype=np.float32)
    assert json.loads(jsonnumpy.dumps(action)) == {
        "__numpy__": base64.b64encode(action.tobytes()).decode(),
        "dtype": "<f4",
        "shape": [7],
    }


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"__numpy__": "AQID", "dtype": "|O", "shape": [3]}, "plain numeric"),
        ({"__numpy__": "AQID", "dtype": [["a", "<f4"]], "shape": [3]}, "type string"),
        ({"__numpy__": "AQID", "dtype": "|u1", "shape": [4]}, "do not hold"),
        ({"__numpy__": "not base64!", "dtype": "|u1", "shape": [3]}, "base64"),
        ({"__numpy__": "AQID", "dtype": "|u1", "shape": [-3]}, "non-negative"),
        ({"__numpy__": "AQID", "dtype": "nonsense", "shape": [3]}, "dtype"),
    ],
)
def test_codec_refuses_bad_arrays(obj, message):
    with pytest.raises(ValueError, match=message):
        jsonnumpy.loads(json.dumps(obj))


def test_codec_refuses_object_arrays():
    with pytest.raises(TypeError, match="numeric"):
        jsonnumpy.dumps(np.array([object()]))


# --------------------------------------------------------------------------- gymnast serve


def test_health_check_handshake_plain_and_double_encoded():
    """AutoEval posts a zero image and a zero 8-d proprio with an 8 s timeout and needs (7,)."""
    with serving(random_policy(chunk_size=4)) as url:
        t0 = time.monotonic()
        status, body = post(url, "/act", jsonnumpy.dumps(zero_request()), timeout=8)
        assert status == 200 and time.monotonic() - t0 < 8
        action = jsonnumpy.loads(body)  # what requests' .json() gives after json_numpy.patch()
        assert isinstance(action, np.ndarray) and action.shape == (7,)

        encoded = json.dumps({"encoded": jsonnumpy.dumps(zero_request())})
        status, body = post(url, "/act", encoded, timeout=8)
        assert status == 200
        reply = json.loads(body)  # double-encoded reply: a JSON string of json-numpy JSON
        assert isinstance(reply, str)
        assert jsonnumpy.loads(reply).shape == (7,)

        conn = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=8)
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {"status": "healthy", "policy_type": "random"}
        conn.close()
        assert post(url, "/reset", b"")[0] == 200  # AutoEval's /reset has no body


def test_chunk_only_when_asked():
    with serving(random_policy(chunk_size=4)) as url:
        single = jsonnumpy.loads(post(url, "/act", jsonnumpy.dumps(zero_request()))[1])
        chunk = jsonnumpy.loads(
            post(url, "/act", jsonnumpy.dumps(zero_request(return_chunk=True)))[1]
        )
        assert single.shape == (7,) and chunk.shape == (4, 7) and chunk.dtype == np.float32
        encoded = json.dumps({"encoded": jsonnumpy.dumps(zero_request(return_chunk=True))})
        assert jsonnumpy.loads(json.loads(post(url, "/act", encoded)[1])).shape == (4, 7)


@pytest.mark.parametrize(
    "body, message",
    [
        (zero_request(image=np.zeros((128, 128, 3), np.uint8)), "(256, 256, 3) uint8"),
        (zero_request(image=np.zeros((256, 256, 3), np.float32)), "float32"),
        ({"image": np.zeros((256, 256, 3), np.uint8)}, "missing required field 'instruction'"),
        ({"instruction": "x"}, "missing required field 'image'"),
        (zero_request(instruction=""), "non-empty string"),
        (zero_request(proprio=np.zeros(5)), "proprio"),
        (zero_request(return_chunk="yes"), "return_chunk"),
        ({"encoded": jsonnumpy.dumps(zero_request()), "extra": 1}, "only the field 'encoded'"),
        ({"encoded": "{not json"}, "not JSON"),
        ([1, 2, 3], "JSON object"),
    ],
)
def test_bad_requests_get_400_with_a_message(body, message):
    with serving(random_policy()) as url:
        status, reply = post(url, "/act", jsonnumpy.dumps(body))
        assert status == 400, reply
        assert message in json.loads(reply)["detail"]


def test_bad_bodies_and_paths():
    with serving(random_policy()) as url:
        status, reply = post(url, "/act", b"\x00not json")
        assert status == 400 and "not JSON" in json.loads(reply)["detail"]
        assert post(url, "/nothing", b"{}")[0] == 404
        assert post(url, "/reset", b'{"seed": -1}')[0] == 400


def test_proprio_mapping():
    pos_euler = np.array([1, 2, 3, 4, 5, 6, 99, 7], np.float32)  # x y z r p y pad gripper
    np.testing.assert_array_equal(state_from_proprio(pos_euler), [1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(state_from_proprio(list(range(7))), np.arange(7))
    np.testing.assert_array_equal(state_from_proprio(None), np.zeros(7))


def test_reset_seeds_the_served_policy_like_a_station_job():
    instruction = TASKS["open_drawer"].instruction
    local = random_policy(seed=9, chunk_size=2)
    local.reset("open_drawer", instruction, seed=5)
    expected = [local.act(obs(), instruction) for _ in range(3)]
    with serving(random_policy(seed=9, chunk_size=2)) as url:
        post(url, "/act", jsonnumpy.dumps(zero_request()))  # state from before the reset
        reset = {"task": "open_drawer", "instruction": instruction, "seed": 5}
        assert post(url, "/reset", json.dumps(reset))[0] == 200
        request = zero_request(instruction=instruction, return_chunk=True)
        got = [jsonnumpy.loads(post(url, "/act", jsonnumpy.dumps(request))[1]) for _ in range(3)]
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))


def test_scripted_expert_cannot_be_served(tmp_path):
    ckpt = write_policy_config(tmp_path / "expert", "scripted_expert")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve", str(ckpt), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "SimBackend" in proc.stderr


# --------------------------------------------------------------------------- autoeval_http policy


def test_http_policy_against_our_server(tmp_path):
    instruction = TASKS["close_drawer"].instruction
    with serving(random_policy(seed=1, chunk_size=3)) as url:
        for chunk, double in ((False, False), (True, False), (True, True)):
            ckpt = write_autoeval_http_config(
                tmp_path / f"c{chunk}{double}", url, chunk=chunk, double_encode=double
            )
            policy = load_policy(ckpt)
            assert isinstance(policy, AutoEvalHTTPPolicy)
            policy.reset("close_drawer", instruction, seed=4)
            actions = np.concatenate([policy.act(obs(), instruction) for _ in range(2)])
            local = random_policy(seed=1, chunk_size=3)
            local.reset("close_drawer", instruction, seed=4)
            expected = np.concatenate([local.act(obs(), instruction) for _ in range(2)])
            if not chunk:
                expected = expected[::3]  # the first action of each chunk
            np.testing.assert_array_equal(actions, expected)
            policy.close()


@pytest.mark.parametrize(
    "config, message",
    [
        ({"url": "ftp://example.com"}, "http:// or https://"),
        ({"url": "http://user:pw@example.com"}, "credentials"),
        ({"url": "http://"}, "no host"),
        ({"url": "http://h:8000", "timeout_s": 0}, "timeout_s"),
        ({"url": "http://h:8000", "proprio": "quat"}, "proprio"),
        ({"url": "http://h:8000", "code": "x"}, "unknown keys"),
        ({}, "needs a 'url'"),
    ],
)
def test_http_policy_config_is_checked(tmp_path, config, message):
    ckpt = write_policy_config(tmp_path / "c", "autoeval_http", **config)
    with pytest.raises(PolicyLoadError, match=message):
        load_policy(ckpt)


def test_http_policy_errors_are_clear(tmp_path):
    def policy_for(url, **kw):
        return load_policy(write_autoeval_http_config(tmp_path / str(time.monotonic()), url, **kw))

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(PolicyServerError, match="is the policy server running"):
        policy_for(f"http://127.0.0.1:{closed}").act(obs(), "x")

    with fake_server(b"{}", delay_s=1.5) as url:
        with pytest.raises(PolicyServerError, match="no answer within 0.3 s"):
            policy_for(url, timeout_s=0.3, reset=False).act(obs(), "x")
    with fake_server(jsonnumpy.dumps(np.zeros(6, np.float32)).encode()) as url:
        with pytest.raises(PolicyServerError, match=r"shape \(6,\)"):
            policy_for(url).act(obs(), "x")
    with fake_server(json.dumps([float("nan")] * 7).encode()) as url:
        with pytest.raises(PolicyServerError, match="non-finite"):
            policy_for(url).act(obs(), "x")
    with fake_server(b'{"detail": "model exploded"}', status=500) as url:
        with pytest.raises(PolicyServerError, match="HTTP 500: model exploded"):
            policy_for(url, reset=False).act(obs(), "x")
    # A server without /reset (404) is fine, as for AutoEval; plain lists are accepted.
    with fake_server(json.dumps([0.0] * 7).encode(), status=200) as url:
        p = policy_for(url)
        p.reset("open_drawer", "open the drawer", 0)
        assert p.act(obs(), "x").shape == (1, 7)


def test_http_policy_sends_autoeval_proprio():
    seen = {}

    class Spy(RandomPolicy):
        def act(self, o, instruction):
            seen["state"] = o.state
            return super().act(o, instruction)

    state = np.array([0.3, 0.0, 0.1, 0.1, 0.2, 0.3, 1.0], np.float32)
    with serving(Spy(RandomPolicyConfig())) as url:
        for mode, expected in (("pos_euler_8", state), ("state_7", state), ("none", np.zeros(7))):
            policy = AutoEvalHTTPPolicy.from_checkpoint(
                Path("."), {"url": url, "proprio": mode}, None
            )
            policy.act(obs(state), "x")
            np.testing.assert_array_equal(seen["state"], expected)


# --------------------------------------------------------------------------- end to end


def test_end_to_end_serve_station_dispatch(tmp_path, monkeypatch):
    """`gymnast serve` in a subprocess, a real station subprocess whose job calls it through the
    autoeval_http policy type, started with `gymnast dispatch URL`; the recorded episodes carry
    exactly the served policy's actions, seeded like a local run."""
    from pipeline import cli
    from robot_bridge.episodes import list_episodes, read_episode
    from robot_bridge.launch import StationProcess

    ckpt = write_policy_config(tmp_path / "served", "random", seed=11)
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", str(ckpt), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        url = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if line.startswith(READY_PREFIX):
                url = line.split()[-1]
                break
            if not line and server.poll() is not None:
                break
        assert url, f"server did not start: {server.stderr.read() if server.poll() else ''}"

        monkeypatch.setenv("GYMNAST_HOME", str(tmp_path / "home"))
        out = tmp_path / "out"
        with StationProcess("instant", episodes_dir=tmp_path / "station") as station:
            argv = ["dispatch", url, "--station", station.endpoint, "--tasks", "close_drawer"]
            argv += ["-n", "2", "--seed", "3", "--out", str(out)]
            assert cli.main(argv) == 0
    finally:
        server.terminate()
        server.wait(timeout=10)

    episodes = [read_episode(p) for p in list_episodes(out)]
    assert sorted(ep.seed for ep in episodes) == [3, 4]
    instruction = TASKS["close_drawer"].instruction
    for ep in episodes:
        assert ep.task == "close_drawer" and ep.termination == "max_steps" and ep.complete
        local = random_policy(seed=11)
        local.reset("close_drawer", instruction, seed=ep.seed)
        expected = np.concatenate([local.act(obs(), instruction) for _ in range(len(ep.actions))])
        np.testing.assert_array_equal(ep.actions, expected)
        np.testing.assert_array_equal(ep.actions_requested, expected)


def test_station_job_fails_safely_when_the_server_is_gone(tmp_path):
    """An unreachable policy server ends the episode as an error (recorded) and fails the job."""
    from robot_bridge.client import StationClient
    from robot_bridge.episodes import read_episode
    from robot_bridge.launch import StationProcess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    ckpt = write_autoeval_http_config(tmp_path / "gone", f"http://127.0.0.1:{closed}")
    with (
        StationProcess("instant", episodes_dir=tmp_path / "station") as station,
        StationClient(station.endpoint) as client,
    ):
        sha = client.upload_checkpoint(ckpt)
        status = client.wait_job(client.job_submit(sha, ["open_drawer"], 1), poll_s=0.05)
        assert status["state"] == "failed"
        assert (
            "PolicyServerError" in status["error"]
            and "is the policy server running" in (status["error"])
        )
        ep = read_episode(client.episode_fetch(status["episodes"][0], tmp_path / "fetched"))
    assert ep.termination == "error" and ep.policy_sha256 == sha and len(ep.actions) == 0
