"""The station: a ZMQ ROUTER server next to the arm.

One thread owns the socket and answers every request; episodes that the station runs on its own
(jobs) run in a worker thread. Both go through ``_arm``, a lock around the backend, so an e-stop
from the socket thread lands between two control steps of a job (within one 200 ms period).

Safety rules, in order: an active e-stop refuses every motion until an operator clears it (it
survives a station restart); one controlling client holds the lease and must keep talking; a
silent lease holder gets the arm held safe and its episode closed as ``lease_expired`` with
everything recorded kept; a job and a lease never drive the arm at the same time.

A request id is executed at most once per peer: every reply to a mutating request, error or not,
is kept under (peer, id), and a retry (the same bytes from the same peer) gets that reply back
after the peer's role is checked again. Nothing that grows with an upload or writes its bytes runs
on the socket thread (see ``robot_bridge.uploads``), so an e-stop is answered within a control
period even while the disk stalls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from robot_bridge import protocol
from robot_bridge.access import LOCAL_PEER, OPERATOR, AccessError, Peer, check_bind, require_role
from robot_bridge.backends.base import RobotBackend
from robot_bridge.checkpoints import CheckpointError, CheckpointStore, check_checkpoint_id
from robot_bridge.episodes import recover_partials
from robot_bridge.episodes.writer import fsync_dir
from robot_bridge.folders import claim_dir
from robot_bridge.jobs import JOB_STATUS_PAGE, Job, JobRunner, JobSpec, backend_scenes
from robot_bridge.protocol import ProtocolError
from robot_bridge.protocol import field as arg
from robot_bridge.spec import (
    ACTION_HIGH,
    ACTION_LOW,
    CONTROL_HZ,
    TASKS,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
)
from robot_bridge.step_control import Lease, StepControl, StepEpisode
from robot_bridge.uploads import UploadBusy, Uploads

log = logging.getLogger("gymnast.station")

# Replies to operations that change the world are kept so a retried request id is answered
# from here and never executed twice.
MUTATING_OPS = frozenset(
    {
        "acquire_lease",
        "release_lease",
        "reset",
        "step",
        "end_episode",
        "estop",
        "estop_clear",
        "upload_begin",
        "upload_chunk",
        "upload_commit",
        "job_submit",
        "job_cancel",
    }
)


LATCH_WAIT_S = 0.05  # how long an e-stop reply waits for its record to reach the disk


@dataclass
class StationConfig:
    bind: str = "tcp://127.0.0.1:5555"
    episodes_dir: Path = Path("episodes")
    checkpoints_dir: Path | None = None
    station_id: str = "station-0"
    lease_timeout_s: float = 2.0
    idempotency_cache: int = 64
    keys_dir: Path | None = None  # CURVE: server.key_secret + authorized_clients/ + operators/
    record_step_control: bool = True
    # Serving an unauthenticated station beyond loopback must be asked for by name.
    allow_unauthenticated_network: bool = False
    checkpoint_store_bytes: int = 128 * 1024**3
    upload_ttl_s: float = 900.0  # an upload with no chunk for this long is dropped
    state_dir: Path | None = None  # where the e-stop latch lives; default: next to the episodes

    def __post_init__(self) -> None:
        self.episodes_dir = Path(self.episodes_dir)
        if self.checkpoints_dir is None:
            self.checkpoints_dir = self.episodes_dir.parent / "station_checkpoints"
        self.checkpoints_dir = Path(self.checkpoints_dir)
        self.state_dir = Path(self.state_dir or self.episodes_dir.parent)
        if self.checkpoint_store_bytes < 1:
            raise ValueError(
                f"checkpoint_store_bytes must be >= 1, got {self.checkpoint_store_bytes}"
            )
        if not 1 <= self.upload_ttl_s <= 7 * 86400:
            raise ValueError(f"upload_ttl_s must be within [1, 604800] s, got {self.upload_ttl_s}")
        if not 0.05 <= self.lease_timeout_s <= 600:
            raise ValueError(
                f"lease_timeout_s must be within [0.05, 600] s, got {self.lease_timeout_s}"
            )
        if self.idempotency_cache < 1:
            raise ValueError(f"idempotency_cache must be >= 1, got {self.idempotency_cache}")
        if self.keys_dir is not None:
            self.keys_dir = Path(self.keys_dir)
        check_bind(self.bind, self.keys_dir is not None, self.allow_unauthenticated_network)

    @property
    def estop_file(self) -> Path:
        return self.state_dir / "estop.json"


@dataclass
class CachedReply:
    digest: bytes  # of the request's bytes: a retry is the same request, not a reused id
    op: str
    reply: list


def _write_latch(path: Path, reason: str) -> bool:
    """Record an e-stop durably (write, fsync, rename, fsync the folder); False if it failed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"reason": reason, "at": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return True
    except OSError:
        log.exception("could not record the e-stop in %s (it holds until this process ends)", path)
        return False


def _remove_latch(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _digest(frames: list) -> bytes:
    h = hashlib.sha256()
    for f in frames:
        b = protocol.frame_bytes(f)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.digest()


class Station(StepControl):
    def __init__(self, backend: RobotBackend, config: StationConfig) -> None:
        self.backend = backend
        self.config = config
        self.config.episodes_dir.mkdir(parents=True, exist_ok=True)
        self._dir_locks = [claim_dir(d) for d in (config.episodes_dir, config.checkpoints_dir)]
        self.recovered = recover_partials(self.config.episodes_dir, self.config.station_id)
        for p in self.recovered:
            log.warning("kept partial episode from an earlier crash: %s", p)
        self.checkpoints = CheckpointStore(
            self.config.checkpoints_dir, max_bytes=self.config.checkpoint_store_bytes
        )
        self._arm = threading.RLock()
        self._estop = threading.Event()
        self._estop_reason = ""
        self._latch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="estop-latch")
        self._latched: Future | None = None
        self._restore_estop()
        self._lease: Lease | None = None
        self._episode: StepEpisode | None = None
        self._cache: OrderedDict[tuple, CachedReply] = OrderedDict()
        self._peer: Peer = LOCAL_PEER  # the sender of the request being handled
        self._keyring = None
        self._stop = threading.Event()
        self.jobs = JobRunner(backend, self._arm, self._estop, self.checkpoints, self.config)
        self.uploads = Uploads(self.checkpoints, self.config.upload_ttl_s, self._checkpoints_in_use)
        self._handlers: dict[str, Callable[[dict, dict, dict], tuple[dict, dict]]] = {
            "hello": self._hello,
            "ping": self._ping,
            "acquire_lease": self._acquire_lease,
            "heartbeat": self._heartbeat,
            "release_lease": self._release_lease,
            "reset": self._reset,
            "observe": self._observe,
            "step": self._step,
            "end_episode": self._end_episode,
            "estop": self._estop_op,
            "estop_clear": self._estop_clear,
            "upload_begin": self._upload_begin,
            "upload_chunk": self._upload_chunk,
            "upload_commit": self._upload_commit,
            "job_submit": self._job_submit,
            "job_status": self._job_status,
            "job_cancel": self._job_cancel,
            "episode_list": self._episode_list,
            "episode_fetch": self._episode_fetch,
        }

    # --- serving ---------------------------------------------------------------------------

    def serve(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve until ``stop()``; ``ready`` receives the bound endpoint."""
        ctx = zmq.Context.instance()
        auth = None
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.TRANSPORT_MAX_FRAME_BYTES)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if self.config.keys_dir is not None:
            from robot_bridge.auth import configure_server

            auth, self._keyring = configure_server(ctx, sock, self.config.keys_dir)
        elif self.config.allow_unauthenticated_network:
            log.warning(
                "UNAUTHENTICATED station on %s: anyone who can reach it can drive the arm",
                self.config.bind,
            )
        sock.bind(self.config.bind)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info(
            "station %s serving %s on %s (auth: %s)",
            self.config.station_id,
            self.backend.info.name,
            endpoint,
            "curve" if auth else "none",
        )
        if ready is not None:
            ready(endpoint)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_expiry = 0.0
        try:
            while not self._stop.is_set():
                if poller.poll(timeout=20):
                    self._serve_one(sock)
                self._check_lease()
                if time.monotonic() > next_expiry:
                    self.uploads.expire()
                    next_expiry = time.monotonic() + 1.0
        finally:
            self.shutdown()
            sock.close(linger=0)
            if auth is not None:
                auth.stop()

    def _serve_one(self, sock: zmq.Socket) -> None:
        routing_id, frames, refusal = protocol.recv_bounded(sock)
        if refusal is not None:
            reply = protocol.error_reply(None, refusal.code, refusal.message)
        else:
            peer = self._identify(routing_id, frames)
            if peer is None:
                return  # authenticated by CURVE but in no key list: cannot happen; say nothing
            reply = self.handle(frames, peer)
        sock.send_multipart([routing_id, *reply], copy=False)

    def _identify(self, routing_id: bytes, frames: list) -> Peer | None:
        if self._keyring is None:
            return Peer(routing_id, None, OPERATOR)  # loopback only: the host's users are trusted
        key = frames[0].get("User-Id") if frames else None
        role = self._keyring.role(key)
        return None if role is None else Peer(routing_id, key, role)

    def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        """Stop jobs, hold the arm, and close any open episode so nothing is lost."""
        self.jobs.cancel_all("station shutting down")
        with self._arm:
            self._safe_hold()
            self._close_episode("cancelled")
        self.uploads.close()
        self._latch.shutdown(wait=True)  # a pending e-stop record reaches the disk

    def handle(self, frames: list, peer: Peer = LOCAL_PEER) -> list:
        """Answer one request (without the routing frame) from ``peer``. Never raises."""
        delimiter = []
        if frames and len(frames[0]) == 0:  # a REQ peer sends an empty delimiter first
            delimiter, frames = [b""], frames[1:]
        request_id: str | None = None
        cache_key: tuple | None = None
        try:
            header, arrays = protocol.decode(frames)
            if isinstance(header.get("id"), str):
                request_id = header["id"][: protocol.MAX_REQUEST_ID_CHARS]
            op = self._check_header(header)
            key = (*peer.identity, request_id)
            digest = _digest(frames)
            if op in MUTATING_OPS and key in self._cache:
                return delimiter + self._from_cache(key, digest, peer)
            cache_key = key if op in MUTATING_OPS else None
            self._peer = peer
            require_role(peer, op)
            result, out_arrays = self._handlers[op](header.get("args", {}), arrays, header)
            reply = protocol.ok_reply(request_id, result, out_arrays)
        except ProtocolError as e:
            reply = protocol.error_reply(request_id, e.code, e.message)
        except AccessError as e:
            reply = protocol.error_reply(request_id, "forbidden", str(e))
        except Exception as e:  # a bug must not take the arm's server down
            log.exception("internal error handling request %r", request_id)
            reply = protocol.error_reply(request_id, "internal", f"{type(e).__name__}: {e}")
        finally:
            self._peer = LOCAL_PEER
        if cache_key is not None:  # errors too: a request that moved the arm never runs twice
            self._cache[cache_key] = CachedReply(digest, op, reply)
            while len(self._cache) > self.config.idempotency_cache:
                self._cache.popitem(last=False)
        return delimiter + reply

    def _from_cache(self, key: tuple, digest: bytes, peer: Peer) -> list:
        cached = self._cache[key]
        if cached.digest != digest:
            raise ProtocolError(
                "bad_request",
                f"request id {key[-1]!r} was already used for another request; use a new id",
            )
        require_role(peer, cached.op)
        self._cache.move_to_end(key)
        return cached.reply

    def _check_header(self, header: dict) -> str:
        if header.get("v") != protocol.PROTOCOL_VERSION:
            raise ProtocolError(
                "unsupported_version",
                f"protocol version {header.get('v')!r} is not supported; this station speaks {protocol.PROTOCOL_VERSION}",
            )
        rid = header.get("id")
        if not isinstance(rid, str) or not 0 < len(rid) <= protocol.MAX_REQUEST_ID_CHARS:
            raise ProtocolError(
                "bad_request",
                f"request id must be a non-empty string of at most {protocol.MAX_REQUEST_ID_CHARS} chars",
            )
        op = header.get("op")
        if op not in self._handlers:
            raise ProtocolError(
                "unknown_op", f"unknown op {op!r}; valid ops: {', '.join(sorted(self._handlers))}"
            )
        if not isinstance(header.get("args", {}), dict):
            raise ProtocolError("bad_request", "'args' must be a map")
        return op

    # --- e-stop ----------------------------------------------------------------------------

    def _estop_op(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        reason = arg(
            args,
            "reason",
            str,
            default="e-stop requested",
            check=lambda s: len(s) <= 256,
            what="<= 256 chars",
        )
        t0 = time.monotonic()
        self._estop_reason = reason
        self._estop.set()  # jobs see this before their next step
        with self._arm:
            self._safe_hold()
            held_ms = (time.monotonic() - t0) * 1e3
            closed = self._close_episode("estop")
        latched = self._persist_estop(reason)
        log.warning("E-STOP: %s", reason)
        return {
            "estop": True,
            "held_in_ms": held_ms,
            "latched": latched,
            "closed_episode": closed,
        }, {}

    def _estop_clear(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        # the latch goes first (after any write still queued): a crash now leaves it engaged
        self._latch.submit(_remove_latch, self.config.estop_file).result()
        self._estop.clear()
        self._estop_reason = ""
        log.warning("e-stop cleared by %s", self._peer.describe())
        return {"estop": False}, {}

    def _persist_estop(self, reason: str) -> bool:
        """The e-stop outlives the process: a restarted station starts stopped. The record is
        written on its own thread, in order with clears: behind a busy disk's writeback even a
        small write can stall longer than a control period, and the arm is already held. The
        reply waits for it at most ``LATCH_WAIT_S`` and says whether it is on disk."""
        self._latched = self._latch.submit(_write_latch, self.config.estop_file, reason)
        # Not the builtin TimeoutError: the two are one class only from Python 3.11 on.
        with contextlib.suppress(FutureTimeoutError):
            self._latched.result(timeout=LATCH_WAIT_S)
        return self._estop_latched()

    def _estop_latched(self) -> bool:
        latched = self._latched
        return latched is not None and latched.done() and bool(latched.result())

    def _restore_estop(self) -> None:
        path = self.config.estop_file
        if not path.exists():
            return
        try:
            reason = str(json.loads(path.read_text()).get("reason", ""))
        except (OSError, ValueError, AttributeError):
            reason = "unreadable e-stop record"
        self._estop_reason = f"engaged before the station restarted: {reason}"
        self._estop.set()
        self._latched = Future()
        self._latched.set_result(True)  # it is the record on disk
        log.warning(
            "E-STOP still engaged from before the restart (%s): an operator must clear it", reason
        )

    # --- checkpoints and jobs ----------------------------------------------------------------

    def _upload_begin(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        sha = self._checkpoint_arg(args, "sha256")
        try:
            result = self.uploads.begin(sha, args.get("files"))
        except CheckpointError as e:
            raise ProtocolError("bad_checkpoint", str(e)) from None
        return {**result, "chunk_bytes": protocol.MAX_ARRAY_BYTES // 2}, {}

    def _upload_chunk(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        sha = self._checkpoint_arg(args, "sha256")
        path = arg(args, "path", str)
        offset = arg(args, "offset", int)
        data = arrays.get("data")
        if data is None or data.dtype != np.uint8 or data.ndim != 1:
            raise ProtocolError("bad_request", "upload_chunk needs a 1-D uint8 'data' frame")
        try:
            end = self.uploads.chunk(sha, path, offset, memoryview(data))
        except UploadBusy as e:
            raise ProtocolError("busy", str(e)) from None
        except CheckpointError as e:
            raise ProtocolError("bad_checkpoint", str(e)) from None
        return {"received": end}, {}

    def _upload_commit(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        sha = self._checkpoint_arg(args, "sha256")
        try:
            return self.uploads.commit(sha), {}
        except CheckpointError as e:
            raise ProtocolError("bad_checkpoint", str(e)) from None

    def _checkpoint_arg(self, args: dict, name: str) -> str:
        value = arg(args, name, str)
        try:
            return check_checkpoint_id(value)
        except CheckpointError as e:
            raise ProtocolError("bad_request", f"field {name!r}: {e}") from None

    def _checkpoints_in_use(self) -> set[str]:
        job = self.jobs.running()
        return {job.spec.checkpoint_sha256} if job is not None else set()

    def _job_submit(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        if self._estop.is_set():
            raise ProtocolError(
                "estop_active", f"e-stop is active ({self._estop_reason}); call estop_clear first"
            )
        if self._lease is not None and header.get("lease") != self._lease.token:
            raise ProtocolError("leased_by_other", f"the arm is leased by {self._lease.holder!r}")
        sha = self._checkpoint_arg(args, "checkpoint")
        if not self.checkpoints.has(sha):
            raise ProtocolError(
                "bad_request",
                f"field 'checkpoint' must be a checkpoint this station holds (upload it first), got {sha!r}",
            )
        try:
            spec = JobSpec.from_wire(args)
        except ValueError as e:
            raise ProtocolError("bad_request", str(e)) from None
        if self._lease is not None:  # the submitter's own lease hands the arm to the job
            with self._arm:
                self._close_episode("client_ended")
            self._lease = None
        self.checkpoints.touch(sha)
        try:
            job = self.jobs.submit(spec, owner=self._peer.key)
        except RuntimeError as e:
            raise ProtocolError("busy", str(e)) from None
        return {"job_id": job.job_id}, {}

    def _job_status(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        since = arg(args, "since", int, default=0, check=lambda n: n >= 0, what="an int >= 0")
        limit = arg(
            args, "limit", int, default=JOB_STATUS_PAGE, check=lambda n: n >= 1, what="an int >= 1"
        )
        return self._job(args).status(since, limit), {}

    def _job_cancel(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        job = self._job(args)
        if self._peer.role != OPERATOR and job.owner != self._peer.key:
            raise AccessError(
                f"job {job.job_id} was submitted by another client; only it or an operator may cancel it"
            )
        job.cancel("cancelled by client")
        return job.status(), {}

    def _job(self, args: dict) -> Job:
        job_id = arg(args, "job_id", str)
        job = self.jobs.get(job_id)
        if job is None:
            raise ProtocolError("job_not_found", f"no job {job_id!r} on this station")
        return job

    # --- episodes --------------------------------------------------------------------------

    def _episode_list(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        job_id = arg(args, "job_id", str, default=None)
        if job_id is not None:
            names = [Path(p).name for p in self._job({"job_id": job_id}).episode_files]
        else:
            names = sorted(p.name for p in self.config.episodes_dir.glob("*.h5"))
        return {"episodes": names}, {}

    def _episode_fetch(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        from robot_bridge.checkpoints import sha256_file

        name = arg(
            args,
            "name",
            str,
            check=lambda s: "/" not in s and s.endswith(".h5") and not s.startswith("."),
            what="an episode file name",
        )
        offset = arg(args, "offset", int, check=lambda o: o >= 0, what=">= 0")
        length = arg(
            args,
            "length",
            int,
            check=lambda n: 0 < n <= protocol.MAX_ARRAY_BYTES,
            what=f"1..{protocol.MAX_ARRAY_BYTES}",
        )
        path = self.config.episodes_dir / name
        if not path.is_file():
            raise ProtocolError("episode_not_found", f"no episode file {name!r} on this station")
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(offset)
            data = np.frombuffer(f.read(length), dtype=np.uint8)
        result = {"size": size, "offset": offset}
        if offset == 0:
            result["sha256"] = sha256_file(path)
        return result, {"data": data}

    def _hello(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        info = self.backend.info
        return {
            "protocol": protocol.PROTOCOL_VERSION,
            "station_id": self.config.station_id,
            "backend": info.name,
            "camera_shape": list(info.camera_shape),
            "ground_truth_success": info.has_ground_truth_success,
            "control_hz": CONTROL_HZ,
            "tasks": {
                t.name: {"instruction": t.instruction, "max_steps": t.max_steps}
                for t in (TASKS[name] for name in self.backend.tasks)
            },
            "scenes": list(backend_scenes(self.backend)),
            "action_low": ACTION_LOW.tolist(),
            "action_high": ACTION_HIGH.tolist(),
            "workspace_low": WORKSPACE_LOW.tolist(),
            "workspace_high": WORKSPACE_HIGH.tolist(),
            "lease_timeout_s": self.config.lease_timeout_s,
            "auth": "curve" if self.config.keys_dir else "none",
            "estop": self._estop.is_set(),
            "estop_reason": self._estop_reason,
            "estop_latched": self._estop.is_set() and self._estop_latched(),
            "role": self._peer.role,
            "limits": {
                "max_array_bytes": protocol.MAX_ARRAY_BYTES,
                "max_header_bytes": protocol.MAX_HEADER_BYTES,
                "max_message_bytes": protocol.MAX_MESSAGE_BYTES,
                "max_message_frames": protocol.MAX_MESSAGE_FRAMES,
                "checkpoint_store_bytes": self.config.checkpoint_store_bytes,
                "upload_ttl_s": self.config.upload_ttl_s,
            },
            "recovered_partial_episodes": [p.name for p in self.recovered],
        }, {}

    def _ping(self, args: dict, arrays: dict, header: dict) -> tuple[dict, dict]:
        return {"station_time": time.monotonic()}, {}
