"""Run a test file as its own worker script: under torchrun with N gloo ranks on the CPU, or as
one plain process with the same thread settings (the data-parallel equivalence tests).

A worker script's own folder is on ``sys.path`` (not tests/, where pytest's conftest puts it), so
a test file that is also a worker inserts tests/ itself before importing this module.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_worker(
    script: str | Path, args: list[str], nproc: int | None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python script *args`` (``nproc`` None) or ``torchrun --nproc_per_node nproc script
    *args`` from the repository root, one torch thread per process, on the CPU; a non-zero exit
    fails the calling test with the end of the output."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "GYMNAST_DEVICE": "cpu",
    }
    launch = [sys.executable]
    if nproc is not None:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    run = subprocess.run(
        [*launch, str(Path(script).resolve()), *map(str, args)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run
