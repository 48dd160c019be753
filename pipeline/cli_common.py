"""What the ``gymnast`` command modules share: the home folder and the ``--tasks`` parser."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from robot_bridge.spec import AUTOEVAL_TASKS, LANGUAGE_TASKS, TASKS


def gymnast_home() -> Path:
    """Where local stores live (episodes, datasets, checkpoints, MLflow, Dagster): $GYMNAST_HOME."""
    return Path(os.environ.get("GYMNAST_HOME", ".gymnast")).resolve()


# Names that stand for several tasks in ``--tasks``: "all" is the four AutoEval tasks (what it
# meant before the simulator's language tasks existed), "language" the two language tasks.
_TASK_GROUPS = {"all": AUTOEVAL_TASKS, "language": LANGUAGE_TASKS}


def task_list(value: str) -> list[str]:
    names: list[str] = []
    for item in (t.strip() for t in value.split(",")):
        for name in _TASK_GROUPS.get(item, (item,) if item else ()):
            if name not in names:
                names.append(name)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown task(s) {unknown}; valid: all (the AutoEval tasks), language, "
            f"{', '.join(TASKS)}"
        )
    return names
