"""Chunked checkpoint uploads on a station, kept off the thread that serves e-stop.

``begin`` and ``chunk`` are short (a manifest check, one write of at most a few MiB) and run on
the socket thread. Everything that grows with the checkpoint (hashing every byte at commit,
deleting evicted or abandoned checkpoints) runs on one worker thread, so the socket thread always
answers an e-stop within a control period. ``commit`` starts the verification and answers at once;
the client calls it again until the state is ``done``.

Uploads nobody touches for ``ttl_s`` seconds are dropped with their staging folder.
"""

from __future__ import annotations

import logging
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


@dataclass
class Upload:
    sha: str
    entries: dict[str, FileEntry]
    touched: float = field(default_factory=time.monotonic)

    @property
    def nbytes(self) -> int:
        return sum(e.size for e in self.entries.values())


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
        self.store.write_chunk(sha, upload.entries[path], offset, data)
        upload.touched = time.monotonic()
        return offset + data.nbytes

    def commit(self, sha: str) -> dict:
        """Start (or report) verification: ``{"state": "verifying"}`` or ``{"state": "done", ...}``."""
        check_checkpoint_id(sha)
        if sha in self._verifying:
            upload, future = self._verifying[sha]
            if not future.done():
                return {"state": "verifying"}
            del self._verifying[sha]
            path = future.result()  # a CheckpointError is the reply to this call
            return {"state": "done", "path": str(path)}
        upload = self._open.pop(sha, None)
        if upload is None:
            if self.store.has(sha):
                return {"state": "done", "path": str(self.store.path(sha))}
            raise CheckpointError(f"no upload in progress for checkpoint {sha[:12]}")
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
            self._worker.submit(self.store.discard, sha)
            log.warning("upload of %s expired after %.0f s without a chunk", sha[:12], self.ttl_s)
        return stale

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
