"""Where the round's steps run: the executor and per-step pod settings, from the environment.

On one machine (the default) the round job uses Dagster's multiprocess executor and the steps
carry no pod settings. On a Kubernetes cluster (``docs/deploy.md``):

- ``GYMNAST_EXECUTOR=k8s``: every step is a pod of its own (``dagster_k8s.k8s_job_executor``),
  so a training step can ask for a GPU while an arm-driving step stays on a CPU node;
- ``GYMNAST_STEP_TAGS=deploy/k8s/gpu_step_tags.yaml``: which step gets which pod settings. The
  file maps each asset to a class (``gpu`` or ``robot``) and each class to its op tags
  (``dagster-k8s/config``: resources, node selector, tolerations).

Both are read when the definitions load, as Dagster reads op tags and executors then.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import dagster as dg

EXECUTORS = ("multiprocess", "k8s")

# What every step process imports before its work: a forkserver imports them once per run and
# forks each step from it, instead of every step importing torch and the model libraries anew
# (about 9 s a step on a 2-core CPU). Importing starts no threads and touches no GPU, so the fork
# is safe; the steps create their threads, CUDA contexts and MuJoCo renderers after it.
STEP_PRELOAD = ("pipeline.definitions", "torch", "transformers", "diffusers", "mlflow")


@cache
def _step_tag_file(path: str) -> dict:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    classes = set(data) - {"assets"}
    for asset, cls in (data.get("assets") or {}).items():
        if cls not in classes:
            raise ValueError(
                f"{path}: asset {asset!r} has step class {cls!r}, which the file does not "
                f"define (it defines {sorted(classes)})"
            )
    return data


def step_tags(asset: str) -> dict:
    """The op tags ``GYMNAST_STEP_TAGS`` gives this asset's step ({} when unset or not listed)."""
    path = os.environ.get("GYMNAST_STEP_TAGS")
    if not path:
        return {}
    data = _step_tag_file(path)
    cls = (data.get("assets") or {}).get(asset)
    return dict(data[cls]) if cls else {}


def round_executor() -> dg.ExecutorDefinition | None:
    """``GYMNAST_EXECUTOR``: ``multiprocess`` (default: Dagster's own, steps forked from a
    server that has imported ``STEP_PRELOAD``) or ``k8s`` (a pod per step; needs the ``cluster``
    extra, which the deployment image installs)."""
    name = os.environ.get("GYMNAST_EXECUTOR", "multiprocess")
    if name not in EXECUTORS:
        raise ValueError(f"GYMNAST_EXECUTOR={name!r}; valid: {', '.join(EXECUTORS)}")
    if name == "multiprocess":
        return dg.multiprocess_executor.configured(
            {"start_method": {"forkserver": {"preload_modules": list(STEP_PRELOAD)}}},
            name="multiprocess_preloaded",
        )
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as e:
        raise ImportError(
            "GYMNAST_EXECUTOR=k8s needs dagster-k8s: install the project with its `cluster` extra"
        ) from e
    return k8s_job_executor
