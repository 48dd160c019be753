"""MLflow tracking for the improvement loop: one run per round, one nested run per stage.

Storage: a SQLite backend store and a local artifact root under ``$GYMNAST_HOME/mlflow``. Dagster
runs each step in its own process, and several processes writing one SQLite file directly is what
produces "database is locked"; so every writer talks HTTP to one local ``mlflow server`` (the only
process that opens the database), which also serves artifacts (``--serve-artifacts``), so clients
never need the artifact folder. ``TrackingServer`` starts it; ``gymnast demo`` and ``gymnast dev``
do that for you; with ``GYMNAST_MLFLOW_DB`` (``--postgres``) that server keeps runs and the registry in
PostgreSQL instead. Production: point ``MLFLOW_TRACKING_URI`` at a shared server (Postgres backend).

Registered models ``world_model``, ``judge`` and ``policy`` carry the aliases ``challenger`` (the
newest candidate) and ``champion`` (what the arm runs); stages are never used (deprecated).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

EXPERIMENT = "gymnast"
REGISTERED_MODELS = ("world_model", "judge", "policy")
ROUND_TAG = "gymnast.round"
STAGE_TAG = "gymnast.stage"


class TrackingError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def store_paths(root: str | Path) -> tuple[str, Path]:
    """(backend store URI, artifact folder) of the local store under ``root``."""
    root = Path(root).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


class TrackingServer:
    """A local ``mlflow server`` in a subprocess: the one writer of the SQLite store under
    ``root``, or of ``backend_store_uri`` (a PostgreSQL database) when given; artifacts stay under
    ``root`` either way, served by the server."""

    def __init__(
        self,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 180.0,
        backend_store_uri: str | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        backend, artifacts = store_paths(self.root)
        backend = backend_store_uri or backend  # e.g. postgresql://... (GYMNAST_MLFLOW_DB)
        self.port = port or free_port(host)
        self.uri = f"http://{host}:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--serve-artifacts",
            "--host",
            host,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # The server's own log goes to a file; a crash is reported with its tail.
        self.log_path = self.root / "server.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Its own session, so stop() ends the whole tree (uvicorn workers); MLflow's server-side job
        # runner (huey consumers for UI-triggered jobs) is not needed here and is switched off.
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": "",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_ready(startup_timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TrackingError(
                    f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TrackingError(
            f"mlflow server not healthy at {self.uri} after {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 30) -> str:
        lines: deque[str] = deque(maxlen=n)
        with open(self.log_path, errors="replace") as f:
            lines.extend(f)
        return "".join(lines)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Terminate the server's process group (the server and the workers it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group
        self._log.close()

    def __enter__(self) -> TrackingServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class StageRun:
    """A nested MLflow run for one stage of one round."""

    tracker: RoundTracker
    run_id: str
    round_key: str
    stage: str

    @property
    def link(self) -> str:
        return self.tracker.run_link(self.run_id)

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.tracker.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 500):
            self.tracker.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> str:
        self.tracker.client.log_artifacts(self.run_id, str(local_dir), artifact_path)
        return self.artifact_uri(artifact_path)

    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None:
        self.tracker.client.log_artifact(self.run_id, str(local_file), artifact_path)

    def artifact_uri(self, artifact_path: str | None = None) -> str:
        base = self.tracker.client.get_run(self.run_id).info.artifact_uri
        return f"{base}/{artifact_path}" if artifact_path else base

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self.tracker.client.log_dict(self.run_id, data, artifact_file)

    def set_tags(self, tags: Mapping[str, object]) -> None:
        for k, v in tags.items():
            self.tracker.client.set_tag(self.run_id, k, str(v))


class RoundTracker:
    """The loop's view of MLflow: round runs, nested stage runs, registered models and aliases."""

    def __init__(self, tracking_uri: str, experiment: str = EXPERIMENT) -> None:
        from mlflow.tracking import MlflowClient

        if not tracking_uri:
            raise TrackingError(
                "no MLflow tracking URI; set MLFLOW_TRACKING_URI (gymnast demo / dev start a server)"
            )
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.experiment_id = self._experiment(experiment)

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another process created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def run_link(self, run_id: str) -> str:
        base = self.tracking_uri.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def find_round_run(self, round_key: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROUND_TAG}` = '{round_key}' and tags.`{STAGE_TAG}` = 'round'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def round_run(self, round_key: str, params: Mapping[str, object] | None = None) -> str:
        """The round's parent run, created on first use (the caller serializes first use per round)."""
        run_id = self.find_round_run(round_key)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"round {round_key}",
                tags={ROUND_TAG: round_key, STAGE_TAG: "round"},
            )
            run_id = run.info.run_id
            if params:
                StageRun(self, run_id, round_key, "round").log_params(params)
        elif self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")  # a resumed round
        return run_id

    def log_round_artifact(
        self, round_key: str, local_file: str | Path, artifact_path: str | None = None
    ) -> str | None:
        """A file on the round's parent run (charts of the whole loop); its run id, None if the
        round has no run."""
        run_id = self.find_round_run(round_key)
        if run_id is not None:
            self.client.log_artifact(run_id, str(local_file), artifact_path)
        return run_id

    def finish_round(
        self,
        round_key: str,
        status: str = "FINISHED",
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, object] | None = None,
    ) -> str | None:
        run_id = self.find_round_run(round_key)
        if run_id is None:
            return None
        run = StageRun(self, run_id, round_key, "round")
        if metrics:
            run.log_metrics(metrics)
        if tags:
            run.set_tags(tags)
        self.client.set_terminated(run_id, status=status)
        return run_id

    @contextmanager
    def stage(
        self,
        round_key: str,
        stage: str,
        params: Mapping[str, object] | None = None,
        parent_run_id: str | None = None,
    ) -> Iterator[StageRun]:
        """A nested run under the round's run; FAILED (and re-raised) if the stage raises."""
        parent = parent_run_id or self.find_round_run(round_key)
        if parent is None:
            raise TrackingError(
                f"round {round_key} has no MLflow run yet; start it with round_run() first"
            )
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{stage} {round_key}",
            tags={ROUND_TAG: round_key, STAGE_TAG: stage, "mlflow.parentRunId": parent},
        )
        stage_run = StageRun(self, run.info.run_id, round_key, stage)
        if params:
            stage_run.log_params(params)
        try:
            yield stage_run
        except BaseException:
            self.client.set_terminated(run.info.run_id, status="FAILED")
            raise
        self.client.set_terminated(run.info.run_id, status="FINISHED")

    def register(
        self,
        name: str,
        stage_run: StageRun,
        artifact_path: str,
        *,
        aliases: tuple[str, ...] = (),
        tags: Mapping[str, object] | None = None,
    ) -> str:
        """A new version of registered model ``name`` from an artifact folder of ``stage_run``."""
        from mlflow.exceptions import MlflowException

        if name not in REGISTERED_MODELS:
            raise TrackingError(
                f"unknown registered model {name!r}; valid: {', '.join(REGISTERED_MODELS)}"
            )
        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        version = self.client.create_model_version(
            name,
            source=stage_run.artifact_uri(artifact_path),
            run_id=stage_run.run_id,
            tags={k: str(v) for k, v in (tags or {}).items()},
        )
        for alias in aliases:
            self.client.set_registered_model_alias(name, alias, version.version)
        return version.version

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def alias_version(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias).version
        except MlflowException:
            return None

    def version_for_sha(self, name: str, sha256: str) -> str | None:
        """The newest version of ``name`` whose checkpoint sha256 tag matches (None if none)."""
        found = self.client.search_model_versions(f"name = '{name}' and tags.sha256 = '{sha256}'")
        return max((v.version for v in found), key=int, default=None)


def flatten_params(params: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, f"{key}."))
        else:
            out[key] = v
    return out
