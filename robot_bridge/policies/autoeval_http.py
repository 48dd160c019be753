"""``policy_type: "autoeval_http"``: a station policy that asks an AutoEval-style HTTP server.

AutoEval (Zhou et al. 2025) evaluates policies that run as HTTP servers: ``POST /act`` with a
json-numpy body ``{"image": (256, 256, 3) uint8, "instruction": str, "proprio": (8,)}`` returns
an action ``(7,)`` or a chunk ``(K, 7)``; ``POST /reset`` (optional) clears the policy's state.
With this type a station evaluates any such server (another lab's baseline, or ours from
``gymnast serve``) with the same paired seeds, step limits and episode records as our own
checkpoints, without ever loading the policy's code: the checkpoint is one ``config.json``::

    {"policy_type": "autoeval_http", "url": "http://10.0.0.5:8000", "timeout_s": 8, "chunk": false}

Fields (``AutoEvalHTTPConfig``): ``url`` (http or https only; a path prefix is kept, credentials
are refused), ``timeout_s`` (connect and per-read timeout), ``chunk`` (add ``"return_chunk":
true`` to each request; whatever ``(K, 7)`` chunk the server returns is executed in order either
way), ``proprio`` (``"pos_euler_8"``: AutoEval's 8-D ``[x, y, z, roll, pitch, yaw, pad,
gripper]``, the default; ``"state_7"``: our 7-D state; ``"none"``), ``double_encode`` (send
``{"encoded": "<json>"}`` for servers without json-numpy), ``reset`` (``POST /reset`` at each
episode start; a 404 or 405 means the server has none and is ignored, as AutoEval does) and
``label`` (free text, e.g. the remote model's name and version: the checkpoint id is the hash of
this file, so a different label gives the same URL a different id in episode records).

Every failure (connection refused, timeout, non-200 reply, an answer that is not a finite
``(7,)`` / ``(K, 7)`` array) raises ``PolicyServerError`` naming the server: the station's job
runner ends the episode as ``error``, holds the arm and fails the job.

Connections go straight to the server (no proxies from the environment, no redirects followed)
and are kept alive between steps; a request is retried once on a fresh connection only when a
reused one turned out to be closed before any reply (never after a timeout).
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

from robot_bridge import jsonnumpy
from robot_bridge.policies.base import Policy, PolicyLoadError, write_policy_config
from robot_bridge.spec import ACTION_DIM, get_task

if TYPE_CHECKING:
    from robot_bridge.backends.base import Observation, RobotBackend

PROPRIO_MODES = ("pos_euler_8", "state_7", "none")
MAX_REPLY_BYTES = 4 * 1024 * 1024
MAX_CHUNK = 1024
_USER_AGENT = "gymnast-station autoeval_http"


class PolicyServerError(RuntimeError):
    """The policy server could not be reached or gave an unusable answer."""


@dataclass(frozen=True)
class AutoEvalHTTPConfig:
    url: str
    timeout_s: float = 8.0
    chunk: bool = False
    proprio: str = "pos_euler_8"
    double_encode: bool = False
    reset: bool = True
    label: str = ""

    def __post_init__(self) -> None:
        check_policy_url(self.url)
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)):
            raise ValueError(f"timeout_s must be a number of seconds, got {self.timeout_s!r}")
        if not 0 < self.timeout_s <= 600:
            raise ValueError(f"timeout_s must be in (0, 600] seconds, got {self.timeout_s}")
        for name in ("chunk", "double_encode", "reset"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.proprio not in PROPRIO_MODES:
            raise ValueError(f"proprio must be one of {PROPRIO_MODES}, got {self.proprio!r}")
        if not isinstance(self.label, str) or len(self.label) > 256:
            raise ValueError("label must be a string of at most 256 characters")


def check_policy_url(url: object) -> str:
    """An http(s) URL with a host, no credentials, no query or fragment; raises ValueError."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string like 'http://host:8000', got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"url has no host: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "url must not carry credentials: the checkpoint is stored on the station and its "
            "hash is recorded with every episode"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"url must not have a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as e:
        raise ValueError(f"url has a bad port: {url!r} ({e})") from None
    return url


def write_autoeval_http_config(checkpoint_dir: str | Path, url: str, **fields_) -> Path:
    """Write a config-only ``autoeval_http`` checkpoint (checked first) for ``url``."""
    config = AutoEvalHTTPConfig(url=url, **fields_)
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    return write_policy_config(checkpoint_dir, "autoeval_http", **values)


def to_proprio(state: np.ndarray, mode: str) -> np.ndarray | None:
    """Our 7-D state ``[x, y, z, roll, pitch, yaw, gripper]`` in the form the server expects."""
    state = np.asarray(state, dtype=np.float32)
    if mode == "none":
        return None
    if mode == "state_7":
        return state.copy()
    # Bridge / manipulator_gym POS_EULER: xyz, roll-pitch-yaw, one pad, gripper.
    return np.concatenate([state[:6], np.zeros(1, np.float32), state[6:7]])


def parse_action_reply(reply: object, where: str = "server") -> np.ndarray:
    """A ``/act`` reply to a float32 ``(K, 7)`` chunk: a json-numpy array or a plain list, a JSON
    string holding one (a double-encoded reply), or ``{"action": ...}``."""
    if isinstance(reply, str):  # double-encoded: the JSON document is a string of JSON
        try:
            reply = jsonnumpy.loads(reply)
        except ValueError as e:
            raise PolicyServerError(
                f"{where} replied with a string that is not JSON: {e}"
            ) from None
    if isinstance(reply, dict) and "action" in reply:
        reply = reply["action"]
    if not isinstance(reply, (np.ndarray, np.generic, list)):
        raise PolicyServerError(
            f"{where} did not return an action array (json-numpy or a list of numbers); got "
            f"{type(reply).__name__}: {str(reply)[:200]}"
        )
    try:
        arr = np.asarray(reply, dtype=np.float64)
    except (TypeError, ValueError):
        raise PolicyServerError(
            f"{where} returned an action that is not an array of numbers: {str(reply)[:200]}"
        ) from None
    if arr.ndim == 1 and arr.shape == (ACTION_DIM,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != ACTION_DIM or not 1 <= len(arr) <= MAX_CHUNK:
        raise PolicyServerError(
            f"{where} returned an action of shape {arr.shape}; expected ({ACTION_DIM},) or "
            f"(K, {ACTION_DIM}) with 1 <= K <= {MAX_CHUNK}"
        )
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise PolicyServerError(f"{where} returned a non-finite action: {arr.tolist()}")
    return out


class AutoEvalHTTPPolicy(Policy):
    """Each ``act`` is one ``POST /act``; each episode starts with ``POST /reset``."""

    policy_type = "autoeval_http"

    def __init__(self, config: AutoEvalHTTPConfig) -> None:
        self.config = config
        parts = urlsplit(config.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        self._pending_reset: dict | None = None

    @classmethod
    def from_checkpoint(
        cls, path: Path, config: dict, backend: RobotBackend | None
    ) -> AutoEvalHTTPPolicy:
        valid = {f.name for f in fields(AutoEvalHTTPConfig)}
        extra = set(config) - valid - {"policy_type"}
        if extra:
            raise PolicyLoadError(
                f"autoeval_http config has unknown keys {sorted(extra)}; valid keys: {sorted(valid)}"
            )
        if "url" not in config:
            raise PolicyLoadError("autoeval_http config needs a 'url' (http://host:port)")
        try:
            return cls(AutoEvalHTTPConfig(**{k: v for k, v in config.items() if k in valid}))
        except ValueError as e:
            raise PolicyLoadError(f"autoeval_http config: {e}") from None

    # ------------------------------------------------------------------ the policy contract

    def reset(self, task: str, instruction: str, seed: int | None = None) -> None:
        # Sent with the first act, inside the station's episode loop, so an unreachable server
        # ends the episode as an error (recorded, arm held) rather than failing before it starts.
        self._pending_reset = {"task": task, "instruction": instruction, "seed": seed}

    def act(self, obs: Observation, instruction: str) -> np.ndarray:
        if self._pending_reset is not None:
            if self.config.reset:
                self._reset_server(self._pending_reset)
            self._pending_reset = None
        payload: dict = {"image": obs.image, "instruction": instruction}
        proprio = to_proprio(obs.state, self.config.proprio)
        if proprio is not None:
            payload["proprio"] = proprio
        if self.config.chunk:
            payload["return_chunk"] = True
        body = jsonnumpy.dumps(payload)
        if self.config.double_encode:
            body = json.dumps({"encoded": body})
        status, data = self._post("/act", body.encode())
        where = f"policy server {self.config.url}"
        if status != 200:
            raise PolicyServerError(f"{where}: POST /act answered HTTP {status}: {_detail(data)}")
        try:
            reply = jsonnumpy.loads(data)
        except ValueError as e:
            raise PolicyServerError(
                f"{where}: POST /act reply is not json-numpy JSON ({e}): {data[:200]!r}"
            ) from None
        return parse_action_reply(reply, where)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP

    def _reset_server(self, info: dict) -> None:
        task = info.get("task")
        try:
            get_task(task)
        except (KeyError, TypeError):
            info = {**info, "task": None}
        status, data = self._post("/reset", json.dumps(info).encode())
        if status in (404, 405):  # the server has no /reset: AutoEval ignores that too
            return
        if not 200 <= status < 300:
            raise PolicyServerError(
                f"policy server {self.config.url}: POST /reset answered HTTP {status}: {_detail(data)}"
            )

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.config.timeout_s)
        return self._conn

    def _post(self, path: str, body: bytes) -> tuple[int, bytes]:
        url = f"{self.config.url.rstrip('/')}{path}"
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }
        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._connect()
            try:
                conn.request("POST", self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read(MAX_REPLY_BYTES + 1)
                if len(data) > MAX_REPLY_BYTES:
                    self.close()
                    raise PolicyServerError(
                        f"POST {url}: reply larger than {MAX_REPLY_BYTES} bytes; refused"
                    )
                if resp.will_close:
                    self.close()
                return resp.status, data
            except TimeoutError:
                self.close()
                raise PolicyServerError(
                    f"POST {url}: no answer within {self.config.timeout_s:g} s (timeout_s)"
                ) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if reused and attempt == 0:  # a kept-alive connection the server had closed
                    continue
                raise PolicyServerError(f"POST {url}: connection lost ({e})") from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                raise PolicyServerError(
                    f"POST {url} failed: {type(e).__name__}: {e}; is the policy server running "
                    "and reachable from the station?"
                ) from None
        raise AssertionError("unreachable")


def _detail(data: bytes) -> str:
    """The error message of an HTTP error reply (FastAPI's {"detail": ...}, ours), shortened."""
    text = data[:2000].decode("utf-8", "replace")
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and "detail" in doc:
            text = str(doc["detail"])
    except ValueError:
        pass
    return text[:500] or "(empty body)"
