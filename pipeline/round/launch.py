"""A training stage on several data-parallel processes: the step launches torchrun, torchrun runs
the stage in every rank, rank 0 writes the artifact record the step reads back.

``RoundConfig.train_processes`` says how many (0: one per visible CUDA device, 1 on a CPU-only
machine). With one process the stage runs in the calling process, exactly as before.

Why the step launches torchrun instead of being started under it: a Dagster step is one process
that the executor starts, retries and monitors; the ranks are its children
(``python -m torch.distributed.run --standalone --nproc_per_node N``, a free rendezvous port each
time, so two steps on one machine do not collide). The ranks get the stage's inputs as paths
and a ``RoundConfig`` in a JSON file, never the step's Python objects, and none of them talks to
MLflow: the step logs what rank 0 left on disk (``train_challenger``'s ``grpo_history.json``,
the rollout strip). How each trainer splits its batch over the ranks: ``policy.distributed``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.round.config import RoundConfig
from pipeline.round.records import ModelArtifact

# the stages that may run on several processes, by the name the step uses
STAGES = {
    "world_model": "refresh_world_model",
    "judge": "refresh_judge",
    "challenger": "train_challenger",
}
STRIP_ARG = "rollout_strip"  # challenger only: where rank 0 draws the imagined rollouts


class StageLaunchError(RuntimeError):
    """The torchrun launch of a stage failed; its ranks' output precedes this in the step's log."""


def processes_for(cfg: RoundConfig) -> int:
    """How many processes ``cfg`` asks for, 0 resolved to the visible CUDA devices (at least 1)."""
    if cfg.train_processes:
        return cfg.train_processes
    import torch

    return max(1, torch.cuda.device_count())


def run_stage(stage: str, cfg: RoundConfig, workdir: Path, **inputs: Any) -> ModelArtifact:
    """Run stage ``stage`` (a key of ``STAGES``) with ``inputs`` and ``cfg`` on
    ``processes_for(cfg)`` processes; ``workdir`` keeps the launch's spec and result files.

    ``inputs``: the stage function's keyword arguments other than ``cfg``, JSON-able after
    paths and ``DatasetEpisodes`` (callbacks cannot cross processes: in-process only).
    ``rollout_strip`` (challenger): a PNG path where rank 0 draws the imagined rollouts."""
    from pipeline.round import stages

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages that can launch: {', '.join(STAGES)}")
    n = processes_for(cfg)
    if n == 1:
        strip = inputs.pop(STRIP_ARG, None)
        if strip is not None:
            return _with_strip(getattr(stages, STAGES[stage]), cfg, Path(strip), inputs)
        return getattr(stages, STAGES[stage])(cfg=cfg, **inputs)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec, result = workdir / f"{stage}.launch.json", workdir / f"{stage}.result.json"
    result.unlink(missing_ok=True)  # an earlier launch's would pass for this one's
    spec.write_text(
        json.dumps({"stage": stage, "cfg": cfg.to_dict(), "inputs": _encode(inputs)}, indent=1)
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={n}", "-m", "pipeline.round.launch", str(spec), str(result)]
    done = subprocess.run(cmd, env=_rank_env(), check=False)
    if done.returncode != 0 or not result.is_file():
        raise StageLaunchError(
            f"stage {stage} on {n} processes (torchrun) exited with {done.returncode}"
            + ("" if result.is_file() else " and rank 0 wrote no result")
            + "; its ranks' output is above"
        )
    return _artifact_from_json(json.loads(result.read_text()))


def _rank_env() -> dict[str, str]:
    env = dict(os.environ)
    # one CPU thread per rank unless the lab says otherwise: N ranks x all cores each would
    # oversubscribe the machine (torchrun sets the same default, with a warning)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("WORLD_SIZE", None)  # the step itself is never a rank of some outer launch
    return env


def _with_strip(fn, cfg: RoundConfig, strip: Path, inputs: dict) -> ModelArtifact | None:
    """The challenger stage keeping a few imagined rollouts, drawn at ``strip`` on rank 0."""
    from pipeline.rollout_strip import RolloutKeeper

    keeper = RolloutKeeper(cfg.grpo_steps)
    art = fn(cfg=cfg, on_rollouts=keeper, **inputs)
    if art is not None:
        keeper.write(strip)
    return art


def _encode(value: Any) -> Any:
    from pipeline.lerobot_dataset import DatasetEpisodes

    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, DatasetEpisodes):
        return {"__dataset__": str(value.root), "episode_ids": list(value.episode_ids)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(
        f"a {type(value).__name__} cannot go to the stage's ranks; pass paths, datasets and "
        "plain values"
    )


def _decode(value: Any) -> Any:
    from pipeline.lerobot_dataset import DatasetEpisodes

    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__path__" in value:
        return Path(value["__path__"])
    if "__dataset__" in value:
        return DatasetEpisodes(Path(value["__dataset__"]), tuple(value["episode_ids"]))
    return {k: _decode(v) for k, v in value.items()}


def _artifact_to_json(art: ModelArtifact) -> dict:
    return {
        "path": str(art.path),
        "sha256": art.sha256,
        "metrics": art.metrics,
        "previews": [str(p) for p in art.previews],
    }


def _artifact_from_json(data: dict) -> ModelArtifact:
    return ModelArtifact(
        Path(data["path"]), data["sha256"], data["metrics"], [Path(p) for p in data["previews"]]
    )


def _rank_config(cfg: RoundConfig) -> RoundConfig:
    """Each rank on its own GPU (``cuda:LOCAL_RANK``) when the setting leaves the index open, so
    the checkpoints load there directly instead of all onto ``cuda:0`` first."""
    import torch

    from robot_bridge.devices import resolve_device

    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index in (None, 0) and torch.cuda.device_count() > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return dataclasses.replace(cfg, device=f"cuda:{local}")
    return cfg


def rank_main(spec_path: Path, result_path: Path) -> int:
    """One rank of a launch: run the stage; rank 0 writes the result record atomically."""
    from pipeline.round import stages
    from policy.distributed import shutdown

    spec = json.loads(Path(spec_path).read_text())
    cfg = _rank_config(RoundConfig.from_dict(spec["cfg"]))
    inputs = _decode(spec["inputs"])
    fn = getattr(stages, STAGES[spec["stage"]])
    strip = inputs.pop(STRIP_ARG, None)
    try:
        art = _with_strip(fn, cfg, Path(strip), inputs) if strip else fn(cfg=cfg, **inputs)
    finally:
        shutdown()
    if art is not None:  # rank 0
        tmp = Path(result_path).with_suffix(".tmp")
        tmp.write_text(json.dumps(_artifact_to_json(art), indent=1))
        os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m pipeline.round.launch SPEC.json RESULT.json (torchrun runs it)")
    sys.exit(rank_main(Path(sys.argv[1]), Path(sys.argv[2])))
