"""Serve one of our policy checkpoints as an AutoEval policy server (``gymnast serve``).

AutoEval (Zhou et al. 2025) drives a real WidowX and asks a policy server for actions over HTTP.
This server speaks that protocol, as AutoEval's own reference servers do
(``auto_eval/policy_server/template.py``):

``POST /act``
    Body: json-numpy JSON ``{"image": (256, 256, 3) uint8, "instruction": str,
    "proprio": optional (8,) or (7,)}``, or the double-encoded form ``{"encoded": "<that JSON as a
    string>"}`` for clients without json-numpy. Reply: the first action of the policy's chunk,
    a json-numpy float32 ``(7,)`` array (AutoEval requires exactly that); the whole ``(K, 7)``
    chunk only when the request has ``"return_chunk": true``. A double-encoded request gets a
    double-encoded reply (a JSON string holding the json-numpy JSON), as in the reference servers.
    A malformed request gets HTTP 400 ``{"detail": "<what is wrong>"}``.
``POST /reset``
    Starts a new episode at the next ``/act``. The body is optional; ``{"task", "instruction",
    "seed"}`` (sent by our ``autoeval_http`` station policy) seeds the policy like a station job.
``GET /health``
    ``{"status": "healthy", "policy_type": ...}``.

The policy's observation: the image as sent; the state from ``proprio``: an 8-D AutoEval /
Bridge ``POS_EULER`` vector ``[x, y, z, roll, pitch, yaw, pad, gripper]`` loses its pad, a 7-D
one is taken as our ``[x, y, z, roll, pitch, yaw, gripper]``; without ``proprio`` the state is
zeros (our VLA policies read the image and instruction only).

The server is the standard library's ``ThreadingHTTPServer``: the robot host and a policy box
need no web framework, and requests are serialised through one lock anyway (a policy is not
thread-safe and AutoEval asks for one action at a time). It loads checkpoints with
``load_policy``, which refuses code in a checkpoint; nothing in a request can name a file.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from robot_bridge import jsonnumpy
from robot_bridge.backends.base import Observation
from robot_bridge.policies.base import Policy, load_policy, read_policy_config
from robot_bridge.spec import ACTION_DIM, IMAGE_SHAPE, STATE_DIM, TASKS, get_task

log = logging.getLogger("gymnast.autoeval_server")

MAX_BODY_BYTES = 16 * 1024 * 1024  # a 256x256x3 frame is ~260 kB as json-numpy, ~1 MB as a list
MAX_INSTRUCTION_CHARS = 1024
READY_PREFIX = "AUTOEVAL SERVER READY "


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status (400 unless said)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- requests


def _image(value: object) -> np.ndarray:
    if value is None:
        raise RequestError("missing required field 'image': a (256, 256, 3) uint8 array")
    if isinstance(value, list):  # a client without json-numpy may send nested lists of ints
        try:
            arr = np.asarray(value)
        except ValueError:
            raise RequestError("field 'image' is a ragged list, not an image array") from None
        if arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise RequestError(
                f"field 'image' as a list must hold integers 0..255, got dtype {arr.dtype}"
            )
        value = arr.astype(np.uint8)
    if not isinstance(value, np.ndarray):
        raise RequestError(
            f"field 'image' must be a json-numpy array (256, 256, 3) uint8, got {type(value).__name__}"
        )
    if value.dtype != np.uint8 or value.shape != IMAGE_SHAPE:
        raise RequestError(
            f"field 'image' must be a {IMAGE_SHAPE} uint8 array, got {value.shape} {value.dtype}"
        )
    return value


def state_from_proprio(value: object) -> np.ndarray:
    """AutoEval's 8-D ``POS_EULER`` proprio (or our 7-D state, or nothing) as our 7-D state."""
    if value is None:
        return np.zeros(STATE_DIM, np.float32)
    if isinstance(value, np.generic) or not isinstance(value, (np.ndarray, list)):
        raise RequestError(f"field 'proprio' must be an array of 7 or 8 numbers, got {value!r}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RequestError("field 'proprio' must be an array of numbers") from None
    if arr.shape == (8,):
        arr = np.concatenate([arr[:6], arr[7:]])  # drop POS_EULER's pad
    elif arr.shape != (STATE_DIM,):
        raise RequestError(
            "field 'proprio' must have shape (8,) [x, y, z, roll, pitch, yaw, pad, gripper] or "
            f"(7,) [x, y, z, roll, pitch, yaw, gripper], got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise RequestError("field 'proprio' contains NaN or inf")
    return arr.astype(np.float32)


def parse_act_request(body: bytes) -> tuple[dict, bool]:
    """A ``/act`` body to ``({"image", "instruction", "state", "return_chunk"}, double_encoded)``."""
    try:
        payload = jsonnumpy.loads(body)
    except ValueError as e:
        raise RequestError(f"body is not JSON with json-numpy arrays: {e}") from None
    if not isinstance(payload, dict):
        raise RequestError("body must be a JSON object {'image', 'instruction', 'proprio'?}")
    double = "encoded" in payload
    if double:
        if len(payload) != 1:
            raise RequestError("a double-encoded request holds only the field 'encoded'")
        if not isinstance(payload["encoded"], str):
            raise RequestError("field 'encoded' must be a string of json-numpy JSON")
        try:
            payload = jsonnumpy.loads(payload["encoded"])
        except ValueError as e:
            raise RequestError(f"field 'encoded' is not JSON with json-numpy arrays: {e}") from None
        if not isinstance(payload, dict):
            raise RequestError("field 'encoded' must hold a JSON object")
    instruction = payload.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise RequestError(
            "missing required field 'instruction': a non-empty string"
            if instruction is None
            else f"field 'instruction' must be a non-empty string, got {instruction!r}"
        )
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise RequestError(f"field 'instruction' is longer than {MAX_INSTRUCTION_CHARS} chars")
    return_chunk = payload.get("return_chunk", False)
    if not isinstance(return_chunk, (bool, np.bool_)):
        raise RequestError(f"field 'return_chunk' must be true or false, got {return_chunk!r}")
    return {
        "image": _image(payload.get("image")),
        "instruction": instruction,
        "state": state_from_proprio(payload.get("proprio")),
        "return_chunk": bool(return_chunk),
    }, double


def _task_for(instruction: str, hint: object) -> str:
    """A task name for ``Policy.reset``: the hint if it is one of ours, else the task with this
    instruction, else the instruction itself (our learned policies read only the instruction)."""
    if isinstance(hint, str):
        try:
            return get_task(hint).name
        except KeyError:
            pass
    for task in TASKS.values():
        if task.instruction == instruction:
            return task.name
    return instruction


# --------------------------------------------------------------------------- the server


class AutoEvalPolicyServer:
    """The protocol without the transport: ``act`` / ``reset`` / ``health`` on bytes."""

    def __init__(self, policy: Policy, policy_type: str = "") -> None:
        self.policy = policy
        self.policy_type = policy_type
        self._lock = threading.Lock()
        self._reset_info: dict | None = {}  # not None: reset the policy at the next /act
        self._instruction: str | None = None
        self._seq = 0

    def act(self, body: bytes) -> tuple[int, bytes]:
        request, double = parse_act_request(body)
        with self._lock:
            instruction = request["instruction"]
            if self._reset_info is not None or instruction != self._instruction:
                info = self._reset_info or {}
                seed = (
                    info.get("seed")
                    if info.get("instruction", instruction) == instruction
                    else None
                )
                self.policy.reset(_task_for(instruction, info.get("task")), instruction, seed)
                self._reset_info, self._instruction = None, instruction
            obs = Observation(
                image=request["image"],
                state=request["state"],
                timestamp=time.monotonic(),
                seq=self._seq,
            )
            self._seq += 1
            chunk = np.asarray(self.policy.act(obs, instruction), dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or len(chunk) == 0:
            raise RuntimeError(
                f"the policy returned shape {chunk.shape}; expected (K, {ACTION_DIM})"
            )
        action = chunk if request["return_chunk"] else chunk[0]
        text = jsonnumpy.dumps(action)
        return 200, (json.dumps(text) if double else text).encode()

    def reset(self, body: bytes) -> tuple[int, bytes]:
        info: dict = {}
        if body.strip():
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError):
                raise RequestError("/reset body must be empty or a JSON object") from None
            if not isinstance(doc, dict):
                raise RequestError("/reset body must be empty or a JSON object")
            seed = doc.get("seed")
            if seed is not None and (
                isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62
            ):
                raise RequestError(f"/reset field 'seed' must be a non-negative int, got {seed!r}")
            info = {k: doc[k] for k in ("task", "instruction", "seed") if doc.get(k) is not None}
        with self._lock:
            self._reset_info = info
        return 200, json.dumps({"status": "reset successful"}).encode()

    def health(self) -> tuple[int, bytes]:
        return 200, json.dumps({"status": "healthy", "policy_type": self.policy_type}).encode()

    def warmup(self) -> float:
        """One action on a zero frame (loads kernels, fills caches) so AutoEval's first request,
        with its 8 s timeout, does not pay for it. Returns the seconds it took."""
        t0 = time.monotonic()
        zero = {
            "image": np.zeros(IMAGE_SHAPE, np.uint8),
            "instruction": "test connection",
            "proprio": np.zeros(8, np.float32),
        }
        self.act(jsonnumpy.dumps(zero).encode())
        with self._lock:
            self._reset_info, self._instruction = {}, None
        return time.monotonic() - t0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: AutoEval's client reuses one requests.Session
    timeout = 120  # idle keep-alive connections are dropped after this (uvicorn's default too)
    server_version = "gymnast-autoeval"
    app: AutoEvalPolicyServer  # set on the subclass made by make_server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        self._send(status, json.dumps({"detail": message}).encode(), close)

    def _route(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self._error(411, "send the body with a Content-Length, not chunked", close=True)
            return None
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self._error(400, "bad Content-Length", close=True)
            return None
        if length < 0 or length > MAX_BODY_BYTES:
            self._error(413, f"body larger than {MAX_BODY_BYTES} bytes", close=True)
            return None
        return self.rfile.read(length)

    def do_GET(self) -> None:
        if self._route() == "/health":
            self._send(*self.app.health())
        else:
            self._error(
                404, f"no GET {self._route()}; endpoints: POST /act, POST /reset, GET /health"
            )

    def do_POST(self) -> None:
        route = self._route()
        body = self._body()
        if body is None:
            return
        handler = {"/act": self.app.act, "/reset": self.app.reset}.get(route)
        if handler is None:
            self._error(404, f"no POST {route}; endpoints: POST /act, POST /reset, GET /health")
            return
        try:
            self._send(*handler(body))
        except RequestError as e:
            self._error(e.status, str(e))
        except Exception as e:
            log.exception("POST %s failed", route)
            self._error(500, f"policy error: {type(e).__name__}: {e}")


def make_server(
    policy: Policy, host: str = "127.0.0.1", port: int = 8000, policy_type: str = ""
) -> tuple[ThreadingHTTPServer, AutoEvalPolicyServer]:
    """An HTTP server (not yet serving; call ``serve_forever``) for ``policy``; port 0 picks one."""
    app = AutoEvalPolicyServer(policy, policy_type)
    handler = type("AutoEvalHandler", (_Handler,), {"app": app})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    return httpd, app


def serve_checkpoint(
    checkpoint_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, warmup: bool = True
) -> int:
    """Load a checkpoint (no backend: privileged scripted policies cannot be served) and serve it
    until interrupted. Prints ``AUTOEVAL SERVER READY http://host:port`` once it answers."""
    policy_type = read_policy_config(checkpoint_dir)["policy_type"]
    policy = load_policy(checkpoint_dir, backend=None)
    httpd, app = make_server(policy, host, port, policy_type)
    if warmup:
        print(f"warm-up action took {app.warmup():.2f} s", flush=True)
    bound_host, bound_port = httpd.server_address[:2]
    print(f"{READY_PREFIX}http://{bound_host}:{bound_port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0
