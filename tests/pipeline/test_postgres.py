"""PostgreSQL for both stores: ``--postgres`` makes the databases, and the loop runs through the
Dagster job in separate step processes with both stores on a real PostgreSQL server
(tests/postgres_server.py starts a throwaway one). The round run in process on PostgreSQL, checked
through both APIs and PostgreSQL's own tables, is in test_one_round.py: it shares its round with
the Dagster UI test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import dagster as dg
import pytest
import yaml
from postgres_server import (
    PASSWORD,
    check_stores,
    postgres_server,
    query,
    round_stack,
    unavailable,
    unset_store_variables,
)

from pipeline.round.config import SMOKE_ROUND


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@contextlib.contextmanager
def _rounds_on(server: str, name: str, rounds: int, overrides: dict, tmp_path, monkeypatch):
    """``--postgres SERVER/NAME`` then ``rounds`` rounds as ``gymnast demo`` runs them (every
    step in its own process); yields (home, env, instance, round keys) while the station and the
    MLflow server still run."""
    from pipeline import demo

    home = tmp_path / "home"
    with round_stack(monkeypatch, home, overrides, f"{server}/{name}") as (env, instance):
        keys = demo.last_rounds(rounds)
        for key in keys:
            demo.run_round(instance, key)
            assert demo.missing_stages(instance, key) == []
        yield home, env, instance, keys


def test_postgres_databases_and_dagster_yaml(postgres, tmp_path, monkeypatch):
    """--postgres makes both databases once (a second call finds them), the copied dagster.yaml
    names the variable, not the password, and without the variable it is SQLite again."""
    from pipeline import demo

    urls = demo.postgres_databases(f"{postgres}/lab")
    assert urls == demo.postgres_databases(postgres, name="lab")  # idempotent
    assert urls["GYMNAST_DAGSTER_DB"].endswith("/lab_dagster")
    names = {n for (n,) in query(f"{postgres}/postgres", "SELECT datname FROM pg_database")}
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
    names = {n for (n,) in query(f"{postgres}/postgres", "SELECT datname FROM pg_database")}
    assert not {"lab_dagster", "lab_mlflow"} & names


def test_bench_loop_runs_in_a_throwaway_pair_of_databases(postgres, monkeypatch):
    """``gymnast bench loop --postgres``: a fresh home gets fresh databases, dropped after."""
    from pipeline.bench import loop as bench_loop

    def datnames() -> set[str]:
        return {n for (n,) in query(f"{postgres}/postgres", "SELECT datname FROM pg_database")}

    seen: dict[str, object] = {}

    def run(rounds, home, json_path, keep) -> int:  # the rounds themselves: the tests below
        seen["db"] = os.environ["GYMNAST_DAGSTER_DB"]
        seen["names"] = datnames()
        shutil.rmtree(home)
        return 0

    unset_store_variables(monkeypatch)
    monkeypatch.setattr(bench_loop, "_run", run)
    assert bench_loop.main(1, postgres=postgres) == 0
    name = str(seen["db"]).rsplit("/", 1)[1]
    assert name.startswith("gymnast_bench_loop_") and name in seen["names"]
    assert name not in datnames()


def test_without_a_server_it_skips_except_where_ci_requires_one(monkeypatch):
    monkeypatch.delenv("GYMNAST_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        unavailable("no initdb")
    monkeypatch.setenv("GYMNAST_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="GYMNAST_REQUIRE_POSTGRES=1 but no initdb"):
        unavailable("no initdb")


# Measured 868 s on the shared 2-core VM (load average about 4.5): slow, like its SQLite twin.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_rounds_on_postgres(postgres, tmp_path, monkeypatch):
    """The two-round loop on PostgreSQL: round 2 grows from round 1's records in both stores,
    and a re-run finds nothing left to do."""
    from pipeline import demo

    with _rounds_on(postgres, "two", 2, SMOKE_ROUND, tmp_path, monkeypatch) as stack:
        check_stores(*stack)
        _, _, instance, keys = stack
        r1, r2 = keys
        assert demo.run_round(instance, r2) is None
        s2 = demo.summarize_round(instance, r2)
        assert s2.world_model_warm_start == r1 and s2.champion_from == r1
