"""The client side of the station protocol: what the pipeline (or a person) uses to drive an arm.

Requests carry ids; a request that times out is re-sent with the *same* id, so the station answers
a retry from its cache and never executes a step twice. Replies to earlier attempts that arrive
late are recognised by id and dropped.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from robot_bridge import protocol
from robot_bridge.backends.base import Observation
from robot_bridge.checkpoints import CHUNK_BYTES, build_manifest, sha256_file

# how long a chunk is sent again while the station's disk is behind: 32 MiB of queued chunks
# drain in well under a second on a healthy disk; a minute of "busy" means it is not healthy
BUSY_PATIENCE_S = 60.0


class StationError(RuntimeError):
    """The station answered with an error; ``code`` says which kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class StationTimeout(StationError):
    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class StationAuthError(StationError):
    def __init__(self, message: str) -> None:
        super().__init__("auth", message)


_HANDSHAKE_FAILURES = {
    getattr(zmq, name)
    for name in (
        "EVENT_HANDSHAKE_FAILED_AUTH",
        "EVENT_HANDSHAKE_FAILED_PROTOCOL",
        "EVENT_HANDSHAKE_FAILED_NO_DETAIL",
    )
    if hasattr(zmq, name)
}


@dataclass
class StepReply:
    observation: Observation
    step: int
    executed_action: np.ndarray
    clipped: dict
    success: bool | None
    done: bool
    termination: str | None
    episode_file: str | None
    station_time: float

    @property
    def age_s(self) -> float:
        """How old the frame was when the station replied."""
        return self.station_time - self.observation.timestamp


class StationClient:
    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        keys_dir: str | Path | None = None,
        server_key: str | Path | None = None,
        client_key: str | Path | None = None,
        name: str = "gymnast-client",
    ) -> None:
        if keys_dir is not None:
            server_key = server_key or Path(keys_dir) / "server.key"
            client_key = client_key or Path(keys_dir) / "client.key_secret"
        if (server_key is None) != (client_key is None):
            raise ValueError(
                "CURVE needs both server_key (server.key) and client_key (*.key_secret)"
            )
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.retries = retries
        self.name = name
        self.lease: str | None = None
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # The station keeps replies per (peer, request id); a routing id of our own keeps this
        # client the same peer across a reconnect, so a retried request is still recognised.
        self._sock.setsockopt(zmq.ROUTING_ID, b"g" + secrets.token_bytes(15))
        if server_key is not None:
            from robot_bridge.auth import configure_client

            configure_client(self._sock, server_key, client_key)
        self._monitor = self._sock.get_monitor_socket()
        self._sock.connect(endpoint)
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = 0

    # --- transport ---------------------------------------------------------------------------

    def call(
        self,
        op: str,
        args: dict | None = None,
        arrays: dict | None = None,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
        request_id: str | None = None,
    ) -> tuple[dict, dict[str, np.ndarray]]:
        """Send one request (re-sent with the same id on timeout); raise StationError on an error reply."""
        self._counter += 1
        rid = request_id or f"{self._prefix}-{self._counter}"
        frames = protocol.request(rid, op, args or {}, lease=self.lease, arrays=arrays)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        attempts = 1 + (self.retries if retries is None else retries)
        for _ in range(attempts):
            self._sock.send_multipart(frames, copy=False)
            reply = self._wait_for(rid, timeout)
            if reply is not None:
                header, out = reply
                if not header.get("ok"):
                    err = header.get("error") or {}
                    raise StationError(err.get("code", "unknown"), err.get("message", "no message"))
                return header.get("result", {}), out
        self._raise_if_auth_failed()
        raise StationTimeout(
            f"no reply to {op!r} from {self.endpoint} after {attempts} attempt(s) of {timeout:.1f} s "
            "(is the station running and reachable?)"
        )

    def _wait_for(self, rid: str, timeout: float) -> tuple[dict, dict] | None:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._sock.poll(int(remaining * 1000) + 1):
                continue
            frames = self._sock.recv_multipart(copy=False)
            try:
                header, arrays = protocol.decode(frames)
            except protocol.ProtocolError as e:
                raise StationError(
                    "bad_reply", f"station sent an undecodable reply: {e.message}"
                ) from None
            if header.get("id") == rid:
                return header, arrays
            # a late reply to an earlier attempt or request: drop it
        return None

    def _raise_if_auth_failed(self) -> None:
        while self._monitor.poll(0):
            event = parse_monitor_message(self._monitor.recv_multipart())
            if event["event"] in _HANDSHAKE_FAILURES:
                raise StationAuthError(
                    f"the station at {self.endpoint} rejected the connection during the CURVE handshake "
                    "(missing, wrong or unauthorized client key?)"
                )

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def __enter__(self) -> StationClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- step-by-step control ------------------------------------------------------------------

    def hello(self) -> dict:
        return self.call("hello")[0]

    def acquire_lease(self) -> str:
        result, _ = self.call("acquire_lease", {"client": self.name})
        self.lease = result["lease"]
        return self.lease

    def heartbeat(self) -> float:
        return self.call("heartbeat")[0]["remaining_s"]

    def release_lease(self) -> str | None:
        result, _ = self.call("release_lease")
        self.lease = None
        return result.get("closed_episode")

    def reset(
        self,
        task: str,
        seed: int | None = None,
        *,
        record: bool = True,
        instruction: str | None = None,
        scene: str | None = None,
        instruction_set: str | None = None,
    ) -> tuple[Observation, dict]:
        """``scene``: a scene variant of the station's backend (an unknown one is refused with
        the list of valid ones); ``instruction_set``: ``"train"`` or ``"heldout"`` for a
        paraphrase picked by ``seed`` (the reply's ``instruction``)."""
        args: dict[str, Any] = {"task": task, "seed": seed, "record": record}
        if instruction is not None:
            args["instruction"] = instruction
        if scene is not None:
            args["scene"] = scene
        if instruction_set is not None:
            args["instruction_set"] = instruction_set
        result, arrays = self.call("reset", args)
        return _observation(result["obs"], arrays), result

    def observe(self) -> Observation:
        result, arrays = self.call("observe")
        return _observation(result["obs"], arrays)

    def step(self, action: np.ndarray) -> StepReply:
        result, arrays = self.call("step", arrays={"action": np.asarray(action)})
        return StepReply(
            observation=_observation(result["obs"], arrays),
            step=result["step"],
            executed_action=np.asarray(result["executed_action"], dtype=np.float32),
            clipped=result["clipped"],
            success=result["success"],
            done=result["done"],
            termination=result["termination"],
            episode_file=result["episode_file"],
            station_time=result["obs"]["station_time"],
        )

    def end_episode(self, success: bool | None = None) -> str | None:
        return self.call("end_episode", {"success": success})[0]["episode_file"]

    def estop(self, reason: str = "e-stop requested") -> dict:
        return self.call("estop", {"reason": reason}, timeout_s=2.0, retries=5)[0]

    def estop_clear(self) -> None:
        self.call("estop_clear")

    # --- checkpoints, jobs, episodes -------------------------------------------------------------

    def upload_checkpoint(self, checkpoint_dir: str | Path, progress: bool = False) -> str:
        """Send a checkpoint directory in chunks; the station verifies every sha256. Returns its id."""
        sha, entries = build_manifest(checkpoint_dir)
        result, _ = self.call(
            "upload_begin", {"sha256": sha, "files": [e.to_dict() for e in entries]}
        )
        if result["present"]:
            return sha
        chunk = min(CHUNK_BYTES, result.get("chunk_bytes", CHUNK_BYTES))
        bar = _bar(sum(e.size for e in entries), "upload", progress)
        for entry in entries:
            with open(Path(checkpoint_dir) / entry.path, "rb") as f:
                offset = 0
                while data := f.read(chunk):
                    self.upload_chunk(sha, entry.path, offset, data)
                    offset += len(data)
                    bar.update(len(data))
        bar.close()
        self.wait_commit(sha, total_bytes=sum(e.size for e in entries))
        return sha

    def upload_chunk(self, sha: str, path: str, offset: int, data: bytes) -> None:
        """One chunk; sent again while the station's disk is behind (``busy``), for as long as
        a healthy disk would take to drain its queue many times over."""
        deadline = time.monotonic() + BUSY_PATIENCE_S
        pause = 0.01
        while True:
            try:
                self.call(
                    "upload_chunk",
                    {"sha256": sha, "path": path, "offset": offset},
                    arrays={"data": np.frombuffer(data, dtype=np.uint8)},
                )
                return
            except StationError as e:
                if e.code != "busy" or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, 0.5)

    def wait_commit(self, sha: str, total_bytes: int, poll_s: float = 0.05) -> str:
        """Ask the station to verify an upload, and wait until it has; returns its path there.
        The station hashes every byte off its socket thread (tens of seconds for a 7B model)."""
        deadline = time.monotonic() + 60.0 + total_bytes / 50e6  # >= 50 MB/s of sha256 and disk
        while True:
            result, _ = self.call("upload_commit", {"sha256": sha})
            if result["state"] == "done":
                return result["path"]
            if time.monotonic() > deadline:
                raise StationTimeout(f"the station is still verifying checkpoint {sha[:12]}")
            time.sleep(poll_s)

    def job_submit(
        self,
        checkpoint_sha256: str,
        tasks: Iterable[str],
        episodes_per_task: int,
        *,
        seed: int = 0,
        skip: dict[str, list[int]] | None = None,
        instructions: dict[str, str] | None = None,
        scene: str | None = None,
        instruction_set: str | None = None,
    ) -> str:
        """``scene``: run every episode in this scene variant of the station's backend;
        ``instruction_set``: ``"train"`` or ``"heldout"`` paraphrases, one per episode seed (not
        with ``instructions``). Both are recorded in each episode's ``extra``."""
        args: dict[str, Any] = {
            "checkpoint": checkpoint_sha256,
            "tasks": list(tasks),
            "episodes_per_task": episodes_per_task,
            "seed": seed,
            "skip": skip or {},
            "instructions": instructions or {},
        }
        if scene is not None:
            args["scene"] = scene
        if instruction_set is not None:
            args["instruction_set"] = instruction_set
        result, _ = self.call("job_submit", args)
        return result["job_id"]

    def job_status(self, job_id: str, since: int = 0, limit: int | None = None) -> dict:
        """The job's counts, and its finished episodes from ``since`` on, a page at a time."""
        args = {"job_id": job_id, "since": since} | ({} if limit is None else {"limit": limit})
        return self.call("job_status", args)[0]

    def job_cancel(self, job_id: str) -> dict:
        return self.call("job_cancel", {"job_id": job_id})[0]

    def wait_job(
        self,
        job_id: str,
        *,
        poll_s: float = 0.5,
        progress: bool = False,
        on_episode: Any = None,
        page: int | None = None,
    ) -> dict:
        """Poll until the job ends; ``on_episode(name)`` is called as each episode file appears.
        Returns the last status with every episode and result of the job (gathered page by page).
        """
        episodes: list[str] = []
        results: list[dict] = []
        bar = None
        while True:
            status = self.job_status(job_id, since=len(episodes), limit=page)
            if bar is None:
                bar = _bar(status["total"], f"job {job_id}", progress, unit="ep")
            for name in status["episodes"]:
                bar.update(1)
                if on_episode is not None:
                    on_episode(name)
            episodes += status["episodes"]
            results += status["results"]
            if len(episodes) < status["listed"]:
                continue  # more pages now: no need to wait
            if status["state"] not in ("queued", "running"):
                bar.close()
                return status | {"since": 0, "episodes": episodes, "results": results}
            time.sleep(poll_s)

    def episode_fetch(self, name: str, dest_dir: str | Path, chunk: int = 4 * 1024 * 1024) -> Path:
        """Copy one episode file here, verify its sha256, and move it into place atomically."""
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        final, tmp = dest / name, dest / f".{name}.download"
        digest, offset, size = None, 0, None
        with open(tmp, "wb") as f:
            while size is None or offset < size:
                result, arrays = self.call(
                    "episode_fetch", {"name": name, "offset": offset, "length": chunk}
                )
                size = result["size"]
                digest = result.get("sha256", digest)
                f.write(arrays["data"])
                offset += arrays["data"].nbytes
                if arrays["data"].nbytes == 0:
                    break
            f.flush()
            os.fsync(f.fileno())
        if sha256_file(tmp) != digest:
            tmp.unlink()
            raise StationError("bad_transfer", f"sha256 mismatch for episode {name}; not kept")
        os.replace(tmp, final)
        return final


def _observation(meta: dict, arrays: dict[str, np.ndarray]) -> Observation:
    return Observation(
        image=arrays["image"], state=arrays["state"], timestamp=meta["timestamp"], seq=meta["seq"]
    )


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, enabled: bool, unit: str = "B"):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # not a station dependency: a robot host without it shows no bar
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=False)
