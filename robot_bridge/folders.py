"""A station's hold on its folders."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def claim_dir(path: Path):
    """Hold ``<path>.lock`` for the station's life: two stations sharing an episode folder would
    "recover" each other's live episodes, and sharing a checkpoint store, verify and evict each
    other's uploads. The lock is the kernel's (flock), so a killed station never leaves it held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115 (held open on purpose)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RuntimeError(
            f"{path} is in use by another station (pid {holder}); give each station its own "
            "--episodes-dir and --checkpoints-dir"
        ) from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f
