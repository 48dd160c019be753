"""Every environment variable gymnast reads or sets, in one place.

``gymnast env`` prints this table with the values set now; ``docs/environment.md`` is generated
from it (``gymnast env --markdown > docs/environment.md``), and a test keeps both complete: each
variable named in the code (``os.environ``, ``os.getenv``, ``dg.EnvVar``, or a ``GYMNAST_*``
literal) must be listed here, and each listed one must be named in the code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVariable:
    name: str
    default: str  # what applies when it is unset, in words
    meaning: str
    used_by: str  # the module(s) that read or set it


ENVIRONMENT: tuple[EnvVariable, ...] = (
    # --- where things live ----------------------------------------------------------------------
    EnvVariable(
        "GYMNAST_HOME",
        "./.gymnast",
        "episodes, datasets, checkpoints, round records, the local MLflow store and DAGSTER_HOME",
        "pipeline.cli, pipeline.definitions, pipeline.schedules",
    ),
    EnvVariable(
        "DAGSTER_HOME",
        "$GYMNAST_HOME/dagster (set by `gymnast demo` / `gymnast dev`)",
        "the Dagster instance folder (run storage, event log, the top-level dagster.yaml copied in)",
        "pipeline.demo (sets it); Dagster",
    ),
    # --- the station --------------------------------------------------------------------------------
    EnvVariable(
        "GYMNAST_STATION",
        "required (demo / dev start a simulated station)",
        "station endpoint, tcp://host:port",
        "pipeline.definitions, pipeline.demo",
    ),
    EnvVariable(
        "GYMNAST_EXECUTOR",
        "multiprocess",
        "the round job's executor: multiprocess, or k8s (a pod per step; the `cluster` extra)",
        "pipeline.cluster",
    ),
    EnvVariable(
        "GYMNAST_STEP_TAGS",
        "none",
        "YAML of per-step op tags by asset class (deploy/k8s/gpu_step_tags.yaml: GPU pods)",
        "pipeline.cluster",
    ),
    EnvVariable(
        "GYMNAST_STATIONS",
        "one station (GYMNAST_STATION)",
        "fleet file (TOML or JSON) of several stations: name, endpoint, keys, tasks (pipeline.fleet)",
        "pipeline.definitions",
    ),
    EnvVariable(
        "GYMNAST_STATION_KEYS",
        "no auth",
        "CURVE keys folder (server.key + client.key_secret)",
        "pipeline.definitions, pipeline.demo",
    ),
    EnvVariable(
        "GYMNAST_STATION_TIMEOUT",
        "30",
        "seconds per station request attempt (3 attempts)",
        "pipeline.definitions",
    ),
    EnvVariable(
        "GYMNAST_VLA_TEMPERATURE",
        "the checkpoint's station_temperature, else 0 (greedy)",
        "sampling temperature of a VLA policy on the station (wins over the checkpoint)",
        "policy.station",
    ),
    EnvVariable(
        "GYMNAST_VLA_DEVICE",
        "cpu",
        "torch device a station runs a VLA policy on",
        "policy.station",
    ),
    EnvVariable(
        "GYMNAST_DEVICE",
        "auto: CUDA when present, else the CPU",
        "torch device of the training stages (SFT, world model, judge, GRPO) when their setting "
        "is auto: cpu, cuda, cuda:N",
        "robot_bridge.devices",
    ),
    EnvVariable(
        "GYMNAST_PRECISION",
        "auto: bf16 on a CUDA device that supports it, else fp32",
        "precision of the training stages when their setting is auto: fp32, bf16",
        "robot_bridge.devices",
    ),
    EnvVariable(
        "RANK",
        "unset: one process",
        "set by torchrun / accelerate launch: this process's rank in a data-parallel SFT run",
        "policy.distributed",
    ),
    EnvVariable(
        "WORLD_SIZE",
        "unset: one process",
        "set by torchrun / accelerate launch: the number of data-parallel processes",
        "policy.distributed",
    ),
    EnvVariable(
        "LOCAL_RANK",
        "unset: one process",
        "set by torchrun / accelerate launch: this process's GPU on its machine (cuda:LOCAL_RANK)",
        "policy.distributed",
    ),
    EnvVariable(
        "MUJOCO_GL",
        "egl",
        "MuJoCo's rendering backend (egl, osmesa, glfw)",
        "robot_bridge.launch, pipeline.bench.station, policy.evaluate_sim",
    ),
    EnvVariable(
        "PYOPENGL_PLATFORM",
        "egl",
        "PyOpenGL's platform, set to match MUJOCO_GL for simulated evaluation",
        "policy.evaluate_sim",
    ),
    # --- the round --------------------------------------------------------------------------------
    EnvVariable(
        "GYMNAST_PRESET",
        "tiny",
        "RoundConfig preset (`gymnast demo --preset` sets it, and the flag wins)",
        "pipeline.definitions, pipeline.cli",
    ),
    EnvVariable(
        "GYMNAST_ROUND_OVERRIDES",
        "{}",
        "JSON object of RoundConfig field overrides",
        "pipeline.definitions",
    ),
    EnvVariable(
        "GYMNAST_JUDGE_F1_FLOOR",
        "0.5",
        "the judge's held-out F1 below which the round stops (judge_f1_floor check)",
        "pipeline.definitions",
    ),
    EnvVariable(
        "GYMNAST_WM_TOLERANCE",
        "0.25",
        "how much the world model's held-out error may grow round to round",
        "pipeline.definitions",
    ),
    EnvVariable(
        "GYMNAST_EXPLOIT_TOLERANCE",
        "0.2",
        "share of the challenger's real failures the world model may imagine as successes",
        "pipeline.definitions",
    ),
    EnvVariable(
        "GYMNAST_PROGRESS",
        "1",
        "1: progress bars in the step processes; anything else: none",
        "pipeline.definitions",
    ),
    # --- the schedule ------------------------------------------------------------------------------
    EnvVariable(
        "GYMNAST_ROUND_CRON",
        "0 2 * * *",
        "cron of the round schedule (one partition per window)",
        "pipeline.assets",
    ),
    EnvVariable("GYMNAST_TIMEZONE", "UTC", "timezone of the round schedule", "pipeline.assets"),
    EnvVariable(
        "GYMNAST_ROUNDS_START",
        "2026-01-01_0000",
        "the first round's window start (%Y-%m-%d_%H%M)",
        "pipeline.assets",
    ),
    EnvVariable(
        "GYMNAST_SCHEDULE_ON",
        "off",
        "1: the nightly schedule starts RUNNING (a daemon then drives the arm every night)",
        "pipeline.schedules",
    ),
    EnvVariable(
        "GYMNAST_ALERT_WEBHOOK",
        "none",
        "URL a failed round's report is POSTed to (JSON)",
        "pipeline.schedules",
    ),
    # --- tracking and services ------------------------------------------------------------------
    EnvVariable(
        "MLFLOW_TRACKING_URI",
        "required (demo / dev start a local server)",
        "MLflow tracking server; also resolves models:/ and runs:/ checkpoint URIs",
        "pipeline.definitions, pipeline.cli, pipeline.schedules, pipeline.demo",
    ),
    EnvVariable(
        "GYMNAST_DAGSTER_DB",
        "unset: SQLite under DAGSTER_HOME",
        "PostgreSQL URL (postgresql://user:password@host:port/db) of Dagster's runs, event logs "
        "and schedules; `--postgres` sets it. DAGSTER_HOME's dagster.yaml then gets a "
        "`storage: postgres:` block naming this variable (docs/deploy.md)",
        "pipeline.demo, pipeline.cli, pipeline.bench.loop",
    ),
    EnvVariable(
        "GYMNAST_MLFLOW_DB",
        "unset: SQLite at $GYMNAST_HOME/mlflow/mlflow.db",
        "backend store (PostgreSQL URL) of the MLflow server demo / dev start: runs, metrics, "
        "registry and aliases; artifacts stay under $GYMNAST_HOME/mlflow. `--postgres` sets it",
        "pipeline.demo, pipeline.cli, pipeline.bench.loop",
    ),
    EnvVariable(
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
        "set to false for the local server",
        "MLflow's server-side job runner, not needed by the loop",
        "pipeline.tracking (sets it for the server it starts)",
    ),
    EnvVariable(
        "OPENAI_API_KEY",
        "none",
        "API key of an OpenAI-compatible judge endpoint (the judge config's api_key_env)",
        "reward.openai_judge",
    ),
    EnvVariable(
        "HF_HUB_OFFLINE",
        "1 (set on import of the LeRobot dataset module)",
        "keeps huggingface_hub from reaching the hub while datasets are written and read",
        "pipeline.lerobot_dataset",
    ),
)

BY_NAME = {v.name: v for v in ENVIRONMENT}


def format_table(markdown: bool = False, environ: Mapping[str, str] | None = None) -> str:
    """The variables as a table: markdown (the docs page) or plain text with the current values."""
    if markdown:
        lines = [
            "# Environment variables",
            "",
            "Every environment variable gymnast reads or sets. Generated from "
            "`pipeline/environment.py` by `gymnast env --markdown > docs/environment.md`; "
            "`tests/pipeline/test_cli.py` fails when the code names a variable missing here or this "
            "page is stale.",
            "",
            "| variable | default | meaning | used by |",
            "|---|---|---|---|",
        ]
        for v in ENVIRONMENT:
            lines.append(f"| `{v.name}` | {_md(v.default)} | {_md(v.meaning)} | {_md(v.used_by)} |")
        return "\n".join(lines) + "\n"
    env = os.environ if environ is None else environ
    width = max(len(v.name) for v in ENVIRONMENT)
    lines = []
    for v in ENVIRONMENT:
        now = env.get(v.name)
        lines.append(f"{v.name:<{width}}  {'= ' + now if now is not None else '(unset)'}")
        lines.append(f"{'':<{width}}  {v.meaning}; default: {v.default}")
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")
