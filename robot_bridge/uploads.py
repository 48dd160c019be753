"""Chunked checkpoint uploads on a station, kept off the thread that serves e-stop.

Nothing that touches the disk with a chunk's bytes or grows with the checkpoint runs on the
socket thread, so a stalled or full disk can never delay an e-stop. ``begin`` checks the manifest
on the socket thread. ``chunk`` copies the bytes and queues the write on a writer thread; while
more than ``MAX_QUEUED_BYTES`` wait there it answers ``UploadBusy`` and the client sends the chunk
again a moment later. A failed write (disk full) fails the upload: the next ``chunk`` or
``commit`` raises it. Hashing every byte at commit and deleting evicted checkpoints run on a
worker thread of their own. ``commit`` answers at once (``writing`` while chunks are still being
written, then ``verifying``); the client calls it again until the state is ``done``.

Uploads nobody touches for ``ttl_s`` seconds are dropped with their staging folder (after their
queued writes: the writer thread deletes it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from robot_bridge.checkpoints import (
    CheckpointError,
    CheckpointStore,
    FileEntry,
    check_checkpoint_id,
    checked_entries,
)

log = logging.getLogger("gymnast.station.uploads")

MAX_CONCURRENT_UPLOADS = 4
# chunk bytes waiting for the writer thread, all uploads together: about four 8 MiB chunks,
# enough to keep a healthy disk busy, small enough that a stalled one holds little memory
MAX_QUEUED_BYTES = 32 * 1024 * 1024


class UploadBusy(CheckpointError):
    """The writer thread is behind; the same chunk may be sent again shortly."""


@dataclass
class Upload:
    sha: str
    entries: dict[str, FileEntry]
    touched: float = field(default_factory=time.monotonic)
    writes: list[Future] = field(default_factory=list)  # queued chunk writes, oldest first
    error: str | None = None  # the first failed write

    @property
    def nbytes(self) -> int:
        return sum(e.size for e in self.entries.values())

    def settle(self) -> bool:
        """Forget finished writes (keeping the first error); True when none is still queued."""
        pending = []
        for w in self.writes:
            if not w.done():
                pending.append(w)
            elif self.error is None and w.cancelled():
                self.error = "the station stopped before this chunk was written"
            elif self.error is None and (exc := w.exception()) is not None:
                self.error = str(exc)
        self.writes = pending
        return not pending


class Uploads:
    def __init__(
        self, store: CheckpointStore, ttl_s: float, in_use: Callable[[], set[str]]
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._in_use = in_use
        self._open: dict[str, Upload] = {}
        self._verifying: dict[str, tuple[Upload, Future]] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uploads")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-writes")
        self._queued_bytes = 0  # changed by both threads: under _queued_lock
        self._queued_lock = threading.Lock()
        for sha in store.discard_all_staging():
            log.warning("dropped an upload of %s left unfinished by an earlier run", sha[:12])
        self._worker.submit(store.purge_trash)

    def begin(self, sha: str, raw_files: object) -> dict:
        check_checkpoint_id(sha)
        entries = checked_entries(raw_files)
        if self.store.has(sha):
            self.store.touch(sha)
            return {"present": True}
        if sha in self._verifying:
            return {"present": False, "state": "verifying"}
        self._open.pop(sha, None)
        if len(self._open) >= MAX_CONCURRENT_UPLOADS:
            raise CheckpointError(
                f"{len(self._open)} uploads are in progress (the limit); finish or abandon one "
                f"(abandoned uploads expire after {self.ttl_s:.0f} s)"
            )
        upload = Upload(sha, {e.path: e for e in entries})
        self.store.make_room(upload.nbytes, pending=self.pending_bytes(), in_use=self._in_use())
        self.store.begin(sha, entries)
        self._worker.submit(self.store.purge_trash)
        self._open[sha] = upload
        return {"present": False}

    def chunk(self, sha: str, path: str, offset: int, data: memoryview) -> int:
        upload = self._open.get(sha)
        if upload is None or path not in upload.entries:
            raise CheckpointError(f"no upload of {path!r} in progress for checkpoint {sha[:12]}")
        entry = upload.entries[path]
        if offset < 0 or offset + data.nbytes > entry.size:
            raise CheckpointError(
                f"chunk [{offset}, {offset + data.nbytes}) is outside {path} (size {entry.size})"
            )
        self._raise_failed(upload)
        with self._queued_lock:
            queued = self._queued_bytes
            if queued > 0 and queued + data.nbytes > MAX_QUEUED_BYTES:
                raise UploadBusy(
                    f"{queued / 2**20:.0f} MiB of chunks are waiting for the disk; "
                    "send this chunk again shortly"
                )
            self._queued_bytes += data.nbytes
        payload = bytes(data)  # the frame's buffer is not ours once this call returns
        upload.writes.append(self._writer.submit(self._write, sha, entry, offset, payload))
        upload.touched = time.monotonic()
        return offset + data.nbytes

    def _write(self, sha: str, entry: FileEntry, offset: int, payload: bytes) -> None:
        try:
            self.store.write_chunk(sha, entry, offset, memoryview(payload))
        finally:
            with self._queued_lock:
                self._queued_bytes -= len(payload)

    def _raise_failed(self, upload: Upload) -> None:
        """A failed write ends the upload: its staging folder goes, the client hears why."""
        upload.settle()
        if upload.error is None:
            return
        self._open.pop(upload.sha, None)
        self._writer.submit(self.store.discard, upload.sha)
        raise CheckpointError(
            f"writing checkpoint {upload.sha[:12]} on the station failed ({upload.error}); "
            "the upload was dropped, start it again"
        )

    def commit(self, sha: str) -> dict:
        """Start (or report) verification: ``{"state": "writing"}`` while chunks are still queued,
        then ``{"state": "verifying"}``, then ``{"state": "done", ...}``."""
        check_checkpoint_id(sha)
        if sha in self._verifying:
            upload, future = self._verifying[sha]
            if not future.done():
                return {"state": "verifying"}
            del self._verifying[sha]
            path = future.result()  # a CheckpointError is the reply to this call
            return {"state": "done", "path": str(path)}
        upload = self._open.get(sha)
        if upload is None:
            if self.store.has(sha):
                return {"state": "done", "path": str(self.store.path(sha))}
            raise CheckpointError(f"no upload in progress for checkpoint {sha[:12]}")
        self._raise_failed(upload)
        if not upload.settle():
            upload.touched = time.monotonic()
            return {"state": "writing"}
        del self._open[sha]
        future = self._worker.submit(self.store.commit, sha, list(upload.entries.values()))
        self._verifying[sha] = (upload, future)
        return {"state": "verifying"}

    def pending_bytes(self) -> int:
        return sum(u.nbytes for u in self._open.values()) + sum(
            u.nbytes for u, _ in self._verifying.values()
        )

    def expire(self, now: float | None = None) -> list[str]:
        """Drop uploads untouched for ``ttl_s``; their folders are deleted on the worker."""
        now = time.monotonic() if now is None else now
        stale = [sha for sha, u in self._open.items() if now - u.touched > self.ttl_s]
        for sha in stale:
            del self._open[sha]
            self._writer.submit(self.store.discard, sha)  # after its queued writes
            log.warning("upload of %s expired after %.0f s without a chunk", sha[:12], self.ttl_s)
        return stale

    def close(self) -> None:
        self._writer.shutdown(wait=True, cancel_futures=True)
        self._worker.shutdown(wait=True, cancel_futures=True)
