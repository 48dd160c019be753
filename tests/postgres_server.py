"""A throwaway PostgreSQL server from Debian's packages for the tests that keep Dagster and MLflow
in PostgreSQL (``initdb`` + ``pg_ctl`` from ``/usr/lib/postgresql/*/bin``, ``apt-get install
postgresql``): in a temporary folder on a free loopback port, as the ``postgres`` user when run as
root (the server refuses root), with password authentication.

Without the binaries the tests skip, unless ``GYMNAST_REQUIRE_POSTGRES=1`` (set by ``.ci/run``,
which installs the package), where a missing server is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

PASSWORD = "gymnast-test-pw"


def unavailable(reason: str) -> None:
    """Skip, or fail where CI promised a server (GYMNAST_REQUIRE_POSTGRES=1)."""
    if required():
        pytest.fail(f"GYMNAST_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(f"{reason} (apt-get install postgresql)")


def bindir() -> Path | None:
    """Debian's versioned binaries (not on PATH), newest first; else an initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version, reverse=True)
    on_path = shutil.which("initdb")
    path = found[0] if found else on_path
    return Path(path).parent if path else None


def _version(initdb: str) -> int:
    return int(Path(initdb).parent.parent.name.split(".")[0])


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields its URL (user ``gymnast``, password auth, no
    database). fsync is off: nothing here must survive a crash, and the test is faster."""
    from pipeline.tracking import free_port

    binaries = bindir()
    if binaries is None:
        unavailable("PostgreSQL's initdb is not installed")
    root = Path(tempfile.mkdtemp(prefix="gymnast-pg-"))
    as_user = []
    if os.geteuid() == 0:  # postgres refuses to run as root: the package's system user runs it
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    (root / "pw").write_text(PASSWORD)
    if as_user:
        shutil.chown(root / "pw", "postgres", "postgres")
    port = free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off"
    data = root / "data"
    try:
        _pg(as_user, binaries / "initdb", "-D", data, "-U", "gymnast", "--pwfile", root / "pw",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")  # fmt: skip
        _pg(
            as_user,
            binaries / "pg_ctl",
            "-D",
            data,
            "-l",
            root / "log",
            "-o",
            options,
            "-w",
            "start",
        )
        yield f"postgresql://gymnast:{PASSWORD}@127.0.0.1:{port}"
    finally:
        if (data / "postmaster.pid").exists():
            _pg(as_user, binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _pg(as_user: list[str], *cmd: object) -> None:
    out = subprocess.run(
        [*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"{cmd[0]} failed:\n{out.stdout}\n{out.stderr}"


def query(url: str, sql: str, *args: object) -> list[tuple]:
    import psycopg2

    from pipeline.demo import libpq_url

    conn = psycopg2.connect(libpq_url(url))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def unset_store_variables(monkeypatch) -> None:
    """Empty (which reads as unset) and restored after the test, also when the code under test
    sets them (monkeypatch.delenv of an absent variable would not restore its absence)."""
    for var in ("GYMNAST_DAGSTER_DB", "GYMNAST_MLFLOW_DB"):
        monkeypatch.setenv(var, "")


def check_stores(home: Path, env: dict, instance, keys: list[str]) -> None:
    """Runs, lineage and registry aliases, through the APIs and in PostgreSQL's own tables."""
    from pipeline import demo
    from pipeline.tracking import RoundTracker

    dagster_db, mlflow_db = os.environ["GYMNAST_DAGSTER_DB"], os.environ["GYMNAST_MLFLOW_DB"]
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert not list((home / "dagster").rglob("*.db")), "Dagster wrote SQLite files"
    assert not (home / "mlflow" / "mlflow.db").exists(), "MLflow wrote its SQLite store"
    for key in keys:
        runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": key}))
        assert runs and all(r.dagster_run.is_success for r in runs), key
        for stage in demo.STAGES:
            assert key in instance.get_materialized_partitions(dg.AssetKey(stage)), stage
        rows = query(
            dagster_db,
            "SELECT DISTINCT asset_key FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND partition = %s",
            key,
        )
        assert {json.loads(k)[0] for (k,) in rows} == set(demo.STAGES), key
    (n_runs,) = query(dagster_db, "SELECT count(*) FROM runs")[0]
    assert n_runs >= len(keys)

    tracker = RoundTracker(env["MLFLOW_TRACKING_URI"])
    for key in keys:
        parent = tracker.find_round_run(key)
        assert tracker.client.get_run(parent).info.status == "FINISHED"
    aliases = set(query(mlflow_db, "SELECT name, alias, version FROM registered_model_aliases"))
    for alias in ("champion", "challenger"):
        version = tracker.alias_version("policy", alias)
        assert version is not None and ("policy", alias, int(version)) in aliases, alias
    rounds = query(mlflow_db, "SELECT DISTINCT value FROM tags WHERE key = 'gymnast.round'")
    assert {v for (v,) in rounds} == set(keys)


def required() -> bool:
    """CI promised a server: a missing one fails instead of skipping."""
    return os.environ.get("GYMNAST_REQUIRE_POSTGRES") == "1"


@contextlib.contextmanager
def round_stack(monkeypatch, home: Path, overrides: dict, database: str | None):
    """The environment ``gymnast demo`` gives a round (these round sizes, no judge F1 floor, no
    progress bars), with both stores in ``database`` (``postgresql://.../NAME``, created by
    ``--postgres``) or SQLite under ``home`` (None); yields (env, Dagster instance) while the
    station and the MLflow server run."""
    from pipeline import cli, demo

    monkeypatch.setenv("GYMNAST_ROUND_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("GYMNAST_JUDGE_F1_FLOOR", "0.0")
    monkeypatch.setenv("GYMNAST_PROGRESS", "0")
    unset_store_variables(monkeypatch)
    if database is not None:
        cli.use_postgres(database)
    with demo.local_stack(home) as env:
        instance = dg.DagsterInstance.get()
        try:
            yield env, instance
        finally:
            instance.dispose()
