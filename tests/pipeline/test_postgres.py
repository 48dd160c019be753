"""PostgreSQL for both stores: the loop through Dagster and MLflow on a real PostgreSQL server.

The test starts its own server from Debian's packages (``initdb`` + ``pg_ctl`` from
``/usr/lib/postgresql/*/bin``, ``apt-get install postgresql``) in a temporary folder on a free
loopback port, as the ``postgres`` user when run as root (the server refuses root), with password
authentication. ``--postgres`` creates the databases; then real rounds run through the Dagster
job in separate step processes, and the records are read back both through Dagster's and MLflow's
APIs and straight from PostgreSQL's tables, while no SQLite store appears.

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
import yaml

from pipeline.round.config import SMOKE_ROUND

PASSWORD = "gymnast-test-pw"


def _unavailable(reason: str) -> None:
    """Skip, or fail where CI promised a server (GYMNAST_REQUIRE_POSTGRES=1)."""
    if os.environ.get("GYMNAST_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"GYMNAST_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(f"{reason} (apt-get install postgresql)")


def _bindir() -> Path | None:
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

    bindir = _bindir()
    if bindir is None:
        _unavailable("PostgreSQL's initdb is not installed")
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
        _pg(as_user, bindir / "initdb", "-D", data, "-U", "gymnast", "--pwfile", root / "pw",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")  # fmt: skip
        _pg(
            as_user, bindir / "pg_ctl", "-D", data, "-l", root / "log", "-o", options, "-w", "start"
        )
        yield f"postgresql://gymnast:{PASSWORD}@127.0.0.1:{port}"
    finally:
        if (data / "postmaster.pid").exists():
            _pg(as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _pg(as_user: list[str], *cmd: object) -> None:
    out = subprocess.run(
        [*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"{cmd[0]} failed:\n{out.stdout}\n{out.stderr}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def _query(url: str, sql: str, *args: object) -> list[tuple]:
    import psycopg2

    from pipeline.demo import libpq_url

    conn = psycopg2.connect(libpq_url(url))
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


@contextlib.contextmanager
def _rounds_on(
    server: str,
    name: str,
    rounds: int,
    overrides: dict,
    tmp_path,
    monkeypatch,
    in_process: bool = False,
):
    """``--postgres SERVER/NAME`` then ``rounds`` rounds as ``gymnast demo`` runs them (every
    step in its own process), or ``in_process`` (one run in this process, as the UI test's round:
    the same stores, without the step processes' start-up); yields (home, env, instance, round
    keys) while the station and the MLflow server still run."""
    from pipeline import cli, demo

    monkeypatch.setenv("GYMNAST_ROUND_OVERRIDES", json.dumps(overrides))
    monkeypatch.setenv("GYMNAST_JUDGE_F1_FLOOR", "0.0")
    monkeypatch.setenv("GYMNAST_PROGRESS", "0")
    _unset_store_variables(monkeypatch)
    cli.use_postgres(f"{server}/{name}")
    home = tmp_path / "home"
    with demo.local_stack(home) as env:
        instance = dg.DagsterInstance.get()
        try:
            keys = demo.last_rounds(rounds)
            for key in keys:
                if in_process:
                    _materialize_in_process(instance, key)
                else:
                    demo.run_round(instance, key)  # every step in its own process
                assert demo.missing_stages(instance, key) == []
            yield home, env, instance, keys
        finally:
            instance.dispose()


def _materialize_in_process(instance, key: str) -> None:
    from pipeline.assets import ROUND_ASSETS
    from pipeline.checks import ROUND_CHECKS
    from pipeline.definitions import resources

    result = dg.materialize(
        [*ROUND_ASSETS, *ROUND_CHECKS], partition_key=key, instance=instance, resources=resources()
    )
    assert result.success


def _unset_store_variables(monkeypatch) -> None:
    """Empty (which reads as unset) and restored after the test, also when the code under test
    sets them (monkeypatch.delenv of an absent variable would not restore its absence)."""
    for var in ("GYMNAST_DAGSTER_DB", "GYMNAST_MLFLOW_DB"):
        monkeypatch.setenv(var, "")


def _check_stores(home: Path, env: dict, instance, keys: list[str]) -> None:
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
        rows = _query(
            dagster_db,
            "SELECT DISTINCT asset_key FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND partition = %s",
            key,
        )
        assert {json.loads(k)[0] for (k,) in rows} == set(demo.STAGES), key
    (n_runs,) = _query(dagster_db, "SELECT count(*) FROM runs")[0]
    assert n_runs >= len(keys)

    tracker = RoundTracker(env["MLFLOW_TRACKING_URI"])
    for key in keys:
        parent = tracker.find_round_run(key)
        assert tracker.client.get_run(parent).info.status == "FINISHED"
    aliases = set(_query(mlflow_db, "SELECT name, alias, version FROM registered_model_aliases"))
    for alias in ("champion", "challenger"):
        version = tracker.alias_version("policy", alias)
        assert version is not None and ("policy", alias, int(version)) in aliases, alias
    rounds = _query(mlflow_db, "SELECT DISTINCT value FROM tags WHERE key = 'gymnast.round'")
    assert {v for (v,) in rounds} == set(keys)


def test_postgres_databases_and_dagster_yaml(postgres, tmp_path, monkeypatch):
    """--postgres makes both databases once (a second call finds them), the copied dagster.yaml
    names the variable, not the password, and without the variable it is SQLite again."""
    from pipeline import demo

    urls = demo.postgres_databases(f"{postgres}/lab")
    assert urls == demo.postgres_databases(postgres, name="lab")  # idempotent
    assert urls["GYMNAST_DAGSTER_DB"].endswith("/lab_dagster")
    names = {n for (n,) in _query(f"{postgres}/postgres", "SELECT datname FROM pg_database")}
    assert {"lab_dagster", "lab_mlflow"} <= names
    assert demo.redacted(urls["GYMNAST_MLFLOW_DB"]).startswith("postgresql://gymnast:***@")
    monkeypatch.setenv("GYMNAST_DAGSTER_DB", urls["GYMNAST_DAGSTER_DB"])
    config = (demo.prepare_dagster_home(tmp_path) / "dagster.yaml").read_text()
    assert yaml.safe_load(config)["storage"] == {
        "postgres": {"postgres_url": {"env": "GYMNAST_DAGSTER_DB"}}
    }
    assert PASSWORD not in config
    monkeypatch.setenv("GYMNAST_DAGSTER_DB", demo.sqlalchemy_url(urls["GYMNAST_DAGSTER_DB"]))
    instance = dg.DagsterInstance.from_config(str(tmp_path / "dagster"))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    instance.dispose()
    monkeypatch.delenv("GYMNAST_DAGSTER_DB")
    config = yaml.safe_load((demo.prepare_dagster_home(tmp_path) / "dagster.yaml").read_text())
    assert "storage" not in config
    demo.drop_postgres_databases(urls)
    names = {n for (n,) in _query(f"{postgres}/postgres", "SELECT datname FROM pg_database")}
    assert not {"lab_dagster", "lab_mlflow"} & names


def test_bench_loop_runs_in_a_throwaway_pair_of_databases(postgres, monkeypatch):
    """``gymnast bench loop --postgres``: a fresh home gets fresh databases, dropped after."""
    from pipeline.bench import loop as bench_loop

    def datnames() -> set[str]:
        return {n for (n,) in _query(f"{postgres}/postgres", "SELECT datname FROM pg_database")}

    seen: dict[str, object] = {}

    def run(rounds, home, json_path, keep) -> int:  # the rounds themselves: the tests below
        seen["db"] = os.environ["GYMNAST_DAGSTER_DB"]
        seen["names"] = datnames()
        shutil.rmtree(home)
        return 0

    _unset_store_variables(monkeypatch)
    monkeypatch.setattr(bench_loop, "_run", run)
    assert bench_loop.main(1, postgres=postgres) == 0
    name = str(seen["db"]).rsplit("/", 1)[1]
    assert name.startswith("gymnast_bench_loop_") and name in seen["names"]
    assert name not in datnames()


def test_without_a_server_it_skips_except_where_ci_requires_one(monkeypatch):
    monkeypatch.delenv("GYMNAST_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        _unavailable("no initdb")
    monkeypatch.setenv("GYMNAST_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="GYMNAST_REQUIRE_POSTGRES=1 but no initdb"):
        _unavailable("no initdb")


# In process: with every step in its own process this took 204 s of CI's 20 min on quiet cores,
# most of it the step processes' start-up, which the stores do not care about (the slow
# two-round test below runs the steps as `gymnast demo` does).
@pytest.mark.timeout(1800)
def test_one_round_on_postgres(postgres, tmp_path, monkeypatch):
    """Round 1 (bootstrap, every stage) with Dagster and MLflow on PostgreSQL."""
    overrides = {**SMOKE_ROUND, "tasks": ["open_drawer"]}
    with _rounds_on(postgres, "one", 1, overrides, tmp_path, monkeypatch, in_process=True) as stack:
        _check_stores(*stack)


# Measured 868 s on the shared 2-core VM (load average about 4.5): slow, like its SQLite twin.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_rounds_on_postgres(postgres, tmp_path, monkeypatch):
    """The two-round loop on PostgreSQL: round 2 grows from round 1's records in both stores,
    and a re-run finds nothing left to do."""
    from pipeline import demo

    with _rounds_on(postgres, "two", 2, SMOKE_ROUND, tmp_path, monkeypatch) as stack:
        _check_stores(*stack)
        _, _, instance, keys = stack
        r1, r2 = keys
        assert demo.run_round(instance, r2) is None
        s2 = demo.summarize_round(instance, r2)
        assert s2.world_model_warm_start == r1 and s2.champion_from == r1
