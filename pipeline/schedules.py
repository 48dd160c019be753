"""The nightly round: a job over the round's assets, its schedule, and a sensor for failed rounds."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import dagster as dg

from pipeline.assets import GROUP
from pipeline.cluster import round_executor

ROUND_JOB = "improvement_round"

round_job = dg.define_asset_job(
    ROUND_JOB,
    selection=dg.AssetSelection.groups(GROUP),
    description="One improvement round: collect with the champion, refresh world model and judge, GRPO, "
    "real evaluation, promotion.",
    executor_def=round_executor(),  # GYMNAST_EXECUTOR: multiprocess here, a pod per step on k8s
)

# The cron and timezone come from the round partitions (GYMNAST_ROUND_CRON, GYMNAST_TIMEZONE): each
# tick runs the round whose window just closed. Stopped by default: turning it on lets a daemon
# drive the arm every night, a decision for the person who owns the station.
nightly_round = dg.build_schedule_from_partitioned_job(
    round_job,
    name="nightly_round",
    default_status=(
        dg.DefaultScheduleStatus.RUNNING
        if os.environ.get("GYMNAST_SCHEDULE_ON") == "1"
        else dg.DefaultScheduleStatus.STOPPED
    ),
)


def failure_report(context: dg.RunFailureSensorContext) -> dict:
    run = context.dagster_run
    failed_steps = [e.step_key for e in context.get_step_failure_events()]
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_id": run.run_id,
        "round": run.tags.get("dagster/partition"),
        "failed_steps": failed_steps,
        "message": context.failure_event.message,
    }


def record_failed_round(report: dict) -> None:
    """Append to $GYMNAST_HOME/failed_rounds.jsonl, mark the round's MLflow run FAILED, POST to
    $GYMNAST_ALERT_WEBHOOK if set."""
    home = Path(os.environ.get("GYMNAST_HOME", ".gymnast")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "failed_rounds.jsonl", "a") as f:
        f.write(json.dumps(report) + "\n")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and report.get("round"):
        from pipeline.tracking import RoundTracker

        RoundTracker(uri).finish_round(
            report["round"],
            status="FAILED",
            tags={"failed_steps": ",".join(report["failed_steps"])},
        )
    webhook = os.environ.get("GYMNAST_ALERT_WEBHOOK")
    if webhook:
        req = urllib.request.Request(
            webhook, data=json.dumps(report).encode(), headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(req, timeout=10).close()


@dg.run_failure_sensor(
    monitored_jobs=[round_job],
    name="report_failed_rounds",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reports a failed round: $GYMNAST_HOME/failed_rounds.jsonl, the round's MLflow "
    "run marked FAILED, and a POST to $GYMNAST_ALERT_WEBHOOK if set.",
)
def report_failed_rounds(context: dg.RunFailureSensorContext) -> None:
    report = failure_report(context)
    context.log.error(
        f"round {report['round']} failed in {report['failed_steps']}: {report['message']}"
    )
    record_failed_round(report)
