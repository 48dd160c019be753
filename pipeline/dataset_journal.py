"""One writer per LeRobot dataset, and a rollback for a failed one.

An append holds an exclusive lock beside the dataset (readers a shared one) and journals ``meta/``
and the file list first; a failed append is rolled back at once, a killed one at the next append.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

JOURNAL = ".gymnast_append"  # inside the dataset while an append is in progress


@contextmanager
def locked(root: Path, exclusive: bool) -> Iterator[None]:
    """Appends (exclusive) and reads of our datasets (shared) across processes: the loop's steps
    run in processes of their own, and a backfill may run two rounds' dataset steps at once."""
    lock = root.parent / f".{root.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def journal(root: Path) -> Iterator[None]:
    """Snapshot ``meta/`` and the file list before an append; roll back to it if the append fails
    (here) or the process dies (``recover`` at the next append). The journal's removal commits."""
    record = root / JOURNAL
    tmp = root / f"{JOURNAL}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(root / "meta", tmp / "meta")
    (tmp / "files.json").write_text(json.dumps(sorted(_files(root))))
    os.rename(tmp, record)  # the journal exists whole or not at all
    try:
        yield
    except BaseException:
        recover(root)
        raise
    shutil.rmtree(record)


def recover(root: Path) -> None:
    record = root / JOURNAL
    shutil.rmtree(root / f"{JOURNAL}.tmp", ignore_errors=True)
    if not record.is_dir():
        return
    before = set(json.loads((record / "files.json").read_text()))
    for rel in _files(root) - before:  # what the failed append added
        (root / rel).unlink()
    shutil.rmtree(root / "meta")
    shutil.copytree(record / "meta", root / "meta")
    shutil.rmtree(root / "images", ignore_errors=True)  # lerobot's frames awaiting encoding
    shutil.rmtree(record)


def _files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0].startswith(JOURNAL)
    }
