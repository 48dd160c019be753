"""Dagster definitions of the loop: ``dagster dev`` (pyproject ``[tool.dagster]``) loads ``defs``.

Resources come from the environment (see ``pipeline.resources``); the instance configuration is
the top-level ``dagster.yaml`` (``gymnast demo`` / ``gymnast dev`` copy it into
``$DAGSTER_HOME = $GYMNAST_HOME/dagster``).
"""

from __future__ import annotations

import os

import dagster as dg

from pipeline.assets import ROUND_ASSETS
from pipeline.checks import ROUND_CHECKS
from pipeline.cli_common import gymnast_home
from pipeline.resources import LoopSettings, RoundStoreIOManager, StationResource, TrackingResource
from pipeline.schedules import ROUND_JOB, nightly_round, report_failed_rounds, round_job


def resources() -> dict:
    home = str(gymnast_home())
    return {
        "settings": LoopSettings(
            home=home,
            preset=os.environ.get("GYMNAST_PRESET", "tiny"),
            overrides_json=os.environ.get("GYMNAST_ROUND_OVERRIDES", "{}"),
            judge_f1_floor=float(os.environ.get("GYMNAST_JUDGE_F1_FLOOR", "0.5")),
            world_model_tolerance=float(os.environ.get("GYMNAST_WM_TOLERANCE", "0.25")),
            exploitation_tolerance=float(os.environ.get("GYMNAST_EXPLOIT_TOLERANCE", "0.2")),
            progress=os.environ.get("GYMNAST_PROGRESS", "1") == "1",
        ),
        # Secrets and endpoints are read when a run starts, so the definitions load without them.
        "station": StationResource(
            fleet_file=os.environ.get("GYMNAST_STATIONS") or None,
            endpoint=None if os.environ.get("GYMNAST_STATIONS") else dg.EnvVar("GYMNAST_STATION"),
            keys_dir=os.environ.get("GYMNAST_STATION_KEYS") or None,
            timeout_s=float(os.environ.get("GYMNAST_STATION_TIMEOUT", "30")),
        ),
        "tracking": TrackingResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI")),
        "io_manager": RoundStoreIOManager(home=home),
    }


defs = dg.Definitions(
    assets=ROUND_ASSETS,
    asset_checks=ROUND_CHECKS,
    jobs=[round_job],
    schedules=[nightly_round],
    sensors=[report_failed_rounds],
    resources=resources(),
)


def improvement_round_job() -> dg.JobDefinition:
    """The round job, for ``dagster.reconstructable`` (steps in separate processes)."""
    return defs.resolve_job_def(ROUND_JOB)
