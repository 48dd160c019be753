"""``gymnast demo --rounds N``: the loop end to end on the embedded default.

It starts a simulated station and a local MLflow server, points Dagster at
``$GYMNAST_HOME/dagster`` (with the top-level ``dagster.yaml``), and runs the last N rounds of the
round schedule through the same job the nightly schedule launches, each step in its own process
(the multiprocess executor, as in a deployment). A round that was interrupted is resumed: assets
already materialized are not run again, and the station skips episodes already collected. It
ends with one table per round and writes ``$GYMNAST_HOME/demo_summary.json``.

The console shows progress bars and the round tables only; library warnings, Dagster's log lines,
MLflow's run links and the video encoder's banner go to ``$GYMNAST_HOME/logs/demo.log`` (named on
the first line; ``--log-file`` picks another), from this process and every step process alike
(``pipeline.console``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gymnast_common.memory import peak_rss_mb

STAGES = (
    "real_episodes",
    "dataset",
    "world_model",
    "judge",
    "challenger",
    "real_evaluation",
    "champion",
)
REPO_ROOT = Path(__file__).resolve().parent.parent


class RoundFailed(RuntimeError):
    def __init__(self, round_key: str, steps: list[str], message: str) -> None:
        super().__init__(f"round {round_key} failed in {steps}: {message}")
        self.round_key, self.steps = round_key, steps


# --- the local stack -----------------------------------------------------------------------------------


# Dagster's storage when GYMNAST_DAGSTER_DB names a PostgreSQL database. The URL (and so the
# password) stays in the environment; the file only names the variable.
POSTGRES_STORAGE = """
# Added by gymnast because GYMNAST_DAGSTER_DB is set: runs, event logs and schedules in PostgreSQL.
storage:
  postgres:
    postgres_url:
      env: GYMNAST_DAGSTER_DB
"""


def prepare_dagster_home(home: Path) -> Path:
    """``$GYMNAST_HOME/dagster`` holding the top-level ``dagster.yaml`` (the instance config), with
    a ``storage: postgres:`` block when ``GYMNAST_DAGSTER_DB`` is set (else Dagster's SQLite
    default). Rewritten on every start, so the storage always follows the environment."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = (REPO_ROOT / "dagster.yaml").read_text()
    if os.environ.get("GYMNAST_DAGSTER_DB"):
        config += POSTGRES_STORAGE
    (dagster_home / "dagster.yaml").write_text(config)
    return dagster_home


def postgres_databases(server_url: str, name: str | None = None) -> dict[str, str]:
    """``{GYMNAST_DAGSTER_DB: url, GYMNAST_MLFLOW_DB: url}`` for ``--postgres URL``: databases
    ``NAME_dagster`` and ``NAME_mlflow`` on the server of ``URL`` (NAME: ``name``, else the URL's
    path, else ``gymnast``), created when missing. Two databases because Dagster and MLflow each
    have a table named ``runs``; one pair per GYMNAST_HOME, since Dagster's record of what was
    materialized must match the files in the home."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(server_url)
    if parts.scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise ValueError(
            f"--postgres wants postgresql://user:password@host:port[/name], got {parts.scheme}://..."
        )
    name = name or parts.path.strip("/") or "gymnast"
    urls = {
        f"GYMNAST_{kind.upper()}_DB": urlunsplit(
            parts._replace(scheme="postgresql", path=f"/{name}_{kind}")
        )
        for kind in ("dagster", "mlflow")
    }
    for url in urls.values():
        _create_database(url)
    return urls


def _create_database(url: str) -> None:
    """Create the database of ``url`` unless it exists."""
    from psycopg2 import sql

    with _on_server(url) as (cur, db):
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))


def drop_postgres_databases(urls: dict[str, str]) -> None:
    """Drop the databases ``postgres_databases`` made (``gymnast bench loop``'s throwaway pair),
    ending the connections still open to them (PostgreSQL 13+)."""
    from psycopg2 import sql

    for url in urls.values():
        with _on_server(url) as (cur, db):
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
            )


@contextmanager
def _on_server(url: str) -> Iterator[tuple[Any, str]]:
    """A cursor on the server of ``url`` and the name of its database. Connected to the server's
    ``postgres`` database in autocommit: a database is neither created nor dropped from inside
    itself or in a transaction."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg2

    parts = urlsplit(libpq_url(url))
    conn = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            yield cur, parts.path.strip("/")
    finally:
        conn.close()


def sqlalchemy_url(url: str) -> str:
    """``url`` naming psycopg2 as its driver: SQLAlchemy 2.1 reads a bare ``postgresql://`` as
    psycopg 3, which is not installed (dagster-postgres brings psycopg2)."""
    scheme, _, rest = url.partition("://")
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgresql", "postgres") else url


def libpq_url(url: str) -> str:
    """``url`` as libpq (psycopg2.connect, psql) reads it: no ``+driver`` in the scheme."""
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.split("+")[0] in ("postgresql", "postgres") else url


def redacted(url: str) -> str:
    """``url`` without its password, for what is printed or logged."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    credentials, host = parts.netloc.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def mlflow_store(home: Path) -> str:
    """Where the local MLflow server keeps runs and the registry: GYMNAST_MLFLOW_DB (password
    hidden) when set, else the SQLite file under ``$GYMNAST_HOME/mlflow``."""
    url = os.environ.get("GYMNAST_MLFLOW_DB")
    return redacted(url) if url else f"sqlite:///{Path(home).resolve() / 'mlflow' / 'mlflow.db'}"


@contextmanager
def local_stack(
    home: Path,
    *,
    station: str | None = None,
    tracking_uri: str | None = None,
    backend: str = "sim",
    keys_dir: Path | None = None,
    say=None,
) -> Iterator[dict[str, str]]:
    """Environment for the definitions: a station and an MLflow server (started unless given).
    ``say`` prints what was started (default: ``print`` to stdout)."""
    from pipeline.tracking import TrackingServer
    from robot_bridge.launch import StationProcess

    say = say or (lambda message: print(message, flush=True))
    home = Path(home).resolve()
    env = {"GYMNAST_HOME": str(home), "DAGSTER_HOME": str(prepare_dagster_home(home))}
    for var in ("GYMNAST_DAGSTER_DB", "GYMNAST_MLFLOW_DB"):  # for SQLAlchemy in every process
        if os.environ.get(var):
            env[var] = sqlalchemy_url(os.environ[var])
    with ExitStack() as stack:
        if station is None:
            proc = stack.enter_context(
                StationProcess(
                    backend, episodes_dir=home / "station" / "episodes", lease_timeout_s=5.0
                )
            )
            station = proc.endpoint
            say(f"simulated {backend} station on {station}")
        if tracking_uri is None:
            say("starting the MLflow tracking server ...")
            server = TrackingServer(home / "mlflow", backend_store_uri=env.get("GYMNAST_MLFLOW_DB"))
            tracking_uri = stack.enter_context(server).uri
            say(f"MLflow tracking server on {tracking_uri} (store: {mlflow_store(home)})")
        env |= {"GYMNAST_STATION": station, "MLFLOW_TRACKING_URI": tracking_uri}
        if keys_dir is not None:
            env["GYMNAST_STATION_KEYS"] = str(keys_dir)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# --- running rounds ------------------------------------------------------------------------------------


def last_rounds(n: int) -> list[str]:
    """The newest ``n`` round keys of the schedule (windows that have closed), oldest first."""
    from pipeline.assets import ROUNDS

    keys = ROUNDS.get_partition_keys()
    if len(keys) < n:
        raise ValueError(
            f"the round schedule has only {len(keys)} closed rounds; asked for {n} "
            "(set GYMNAST_ROUNDS_START earlier)"
        )
    return list(keys[-n:])


BLOCKING_CHECKS = {
    "real_episodes": ("champion_episode_integrity",),
    "real_evaluation": ("challenger_episode_integrity", "promotion_gate"),
    "judge": ("judge_f1_floor",),
}


def missing_stages(instance, round_key: str) -> list[str]:
    """Stages of the round not yet materialized, or whose blocking check last failed with ERROR
    (their output exists but the round did not go on from it)."""
    import dagster as dg

    return [
        s
        for s in STAGES
        if round_key not in instance.get_materialized_partitions(dg.AssetKey(s))
        or _blocked(instance, s, round_key)
    ]


def _blocked(instance, stage: str, round_key: str) -> bool:
    """Whether a blocking check of ``stage`` last ended the round: its newest event in the round's
    runs is a plan that was never evaluated (the run stopped before the check) or an ERROR failure.

    Read from the runs' event logs with Dagster's public API (runs tagged with the round's
    partition), not from the storage's private check-execution tables."""
    import dagster as dg

    keys = {dg.AssetCheckKey(dg.AssetKey(stage), c) for c in BLOCKING_CHECKS.get(stage, ())}
    if not keys:
        return False
    kinds = {
        dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
        dg.DagsterEventType.ASSET_CHECK_EVALUATION,
    }
    latest: dict = {}  # check key -> (timestamp, event data)
    runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": round_key}))
    for record in runs:
        for entry in instance.all_logs(record.dagster_run.run_id, of_type=kinds):
            data = entry.dagster_event.event_specific_data
            key = data.asset_check_key
            if key not in keys or getattr(data, "partition", None) not in (None, round_key):
                continue
            if key not in latest or entry.timestamp >= latest[key][0]:
                latest[key] = (entry.timestamp, data)
    for _, data in latest.values():
        if not isinstance(data, dg.AssetCheckEvaluation):
            return True  # planned, never evaluated: the run stopped before the check
        if not data.passed and data.severity == dg.AssetCheckSeverity.ERROR:
            return True
    return False


def run_round(instance, round_key: str, *, log_level: str = "WARNING") -> str | None:
    """Materialize what this round still lacks, steps in separate processes; the run id (None if
    nothing was left). Raises ``RoundFailed`` naming the failed steps."""
    import dagster as dg

    from pipeline.definitions import improvement_round_job

    todo = missing_stages(instance, round_key)
    if not todo:
        return None
    result = dg.execute_job(
        dg.reconstructable(improvement_round_job),
        instance=instance,
        tags={"dagster/partition": round_key, "gymnast/launched_by": "demo"},
        asset_selection=[dg.AssetKey(s) for s in todo],
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
    if not result.success:
        from pipeline.schedules import record_failed_round

        failures = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        steps = [e.dagster_event.step_key for e in failures]
        messages = (
            "; ".join(
                e.dagster_event.step_failure_data.error.message.strip()
                for e in failures
                if e.dagster_event.step_failure_data.error
            )
            or "see the Dagster run log"
        )
        # MLflow prints the round run's link when it is marked FAILED: to stderr (with a log:
        # the log), not among the round tables
        with contextlib.redirect_stdout(sys.stderr):
            record_failed_round(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "run_id": result.run_id,
                    "round": round_key,
                    "failed_steps": steps,
                    "message": messages,
                }
            )
        raise RoundFailed(round_key, steps, messages)
    return result.run_id


# --- the summary ---------------------------------------------------------------------------------------


@dataclass
class StageTiming:
    wall_s: float  # step duration in Dagster (process start, resources, body)
    body_s: float | None  # time spent in the asset body
    peak_rss_mb: float | None  # the step process's peak resident memory


@dataclass
class RoundSummary:
    round: str
    champion_from: str
    world_model_warm_start: str
    champion: dict  # Evaluation.to_dict()
    challenger: dict
    promoted: bool | None
    test: str | None
    p_value: float | None
    reason: str | None
    stages: dict[str, StageTiming] = field(default_factory=dict)


def _latest_materialization(instance, asset: str, round_key: str):
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[round_key]), limit=1
    ).records
    return records[0].event_log_entry if records else None


def _meta_value(entry, key: str):
    value = entry.asset_materialization.metadata.get(key)
    return None if value is None else value.value


def stage_timings(instance, round_key: str) -> dict[str, StageTiming]:
    out = {}
    for stage in STAGES:
        entry = _latest_materialization(instance, stage, round_key)
        if entry is None:
            continue
        stats = [
            s for s in instance.get_run_step_stats(entry.run_id, step_keys=[stage]) if s.end_time
        ]
        wall = stats[-1].end_time - stats[-1].start_time if stats else _meta_value(entry, "wall_s")
        out[stage] = StageTiming(
            round(wall, 1), _meta_value(entry, "wall_s"), _meta_value(entry, "peak_rss_mb")
        )
    return out


def summarize_round(instance, round_key: str) -> RoundSummary:
    from pipeline.cli_common import gymnast_home
    from pipeline.resources import RoundStore

    store = RoundStore(gymnast_home())
    episodes = store.load("real_episodes", round_key)
    challenger = (
        store.load("real_evaluation", round_key)
        if store.has("real_evaluation", round_key)
        else None
    )
    champ = store.load("champion", round_key) if store.has("champion", round_key) else None
    wm = _latest_materialization(instance, "world_model", round_key)
    return RoundSummary(
        round=round_key,
        champion_from=episodes.champion_round or "bootstrap (scripted demos -> SFT)",
        world_model_warm_start=str(_meta_value(wm, "warm_start_from")) if wm else "-",
        # the gate's paired runs when the round got there, else its collection runs
        champion=(challenger.champion_evaluation if challenger else episodes.evaluation).to_dict(),
        challenger=challenger.evaluation.to_dict() if challenger else {},
        promoted=champ.promoted if champ else None,
        test=champ.decision.test if champ else None,
        p_value=champ.decision.p_value if champ else None,
        reason=champ.decision.reason if champ else None,
        stages=stage_timings(instance, round_key),
    )


def _rate(d: dict | None) -> str:
    if not d or not d.get("labelled"):
        return "-"
    lo, hi = d["ci95"]
    return f"{d['successes']}/{d['labelled']} = {100 * d['success_rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def format_round(s: RoundSummary, index: int) -> str:
    lines = [
        f"\n## Round {index}: {s.round}",
        f"champion from: {s.champion_from}; world model: {s.world_model_warm_start}",
        "",
        "| task | champion (real, gate seeds) | challenger (real, gate seeds) |",
        "|---|---|---|",
    ]
    for task, c in s.champion.get("per_task", {}).items():
        lines.append(
            f"| {task} | {_rate(c)} | {_rate(s.challenger.get('per_task', {}).get(task))} |"
        )
    if s.promoted is None:
        lines.append("\npromotion: not reached (round incomplete)")
    else:
        verdict = "PROMOTED: the challenger is the new champion" if s.promoted else "champion stays"
        lines.append(f"\npromotion: {verdict} ({s.test}; p = {s.p_value:.3f}); {s.reason}")
    lines += ["", "| stage | wall s | in body s | peak RSS MB |", "|---|---|---|---|"]
    for stage, t in s.stages.items():
        lines.append(f"| {stage} | {t.wall_s:.1f} | {_fmt(t.body_s)} | {_fmt(t.peak_rss_mb)} |")
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


# --- the command ---------------------------------------------------------------------------------------


def run_demo(
    rounds: int,
    home: Path,
    *,
    station: str | None = None,
    tracking_uri: str | None = None,
    keys_dir: Path | None = None,
    summary_path: Path | None = None,
    log_path: Path | None = None,
) -> list[RoundSummary]:
    """The rounds, one table each. With ``log_path`` the console shows progress bars and the
    tables only; library warnings, Dagster's log lines, MLflow's run links and encoder banners
    (of this process and every step process) go to ``log_path`` (``pipeline.console``)."""
    home = Path(home).resolve()
    if log_path is None:
        return _run_demo(rounds, home, station, tracking_uri, keys_dir, summary_path, None)
    from pipeline.console import routed_to_log

    print(f"log: {log_path} (warnings, Dagster's log lines, MLflow links, encoder output)")
    with routed_to_log(log_path):
        return _run_demo(rounds, home, station, tracking_uri, keys_dir, summary_path, log_path)


def _run_demo(rounds, home, station, tracking_uri, keys_dir, summary_path, log_path):
    import dagster as dg

    t_start = time.monotonic()
    # with a log, what the stack starts is logged, not shown (sys.stderr is routed to the log)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if log_path else None
    with local_stack(home, station=station, tracking_uri=tracking_uri, keys_dir=keys_dir, say=say):
        instance = dg.DagsterInstance.get()
        # the training pool; each arm's pool (robot/<station>) takes the instance's default of 1
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        keys = last_rounds(rounds)
        summaries, wall = [], {}
        for i, key in enumerate(keys, 1):
            todo = missing_stages(instance, key)
            print(
                f"\n=== round {i}/{len(keys)} [{key}]: "
                + (f"running {', '.join(todo)}" if todo else "already complete")
                + " ===",
                flush=True,
            )
            t0 = time.monotonic()
            run_round(instance, key)
            wall[key] = time.monotonic() - t0
            summaries.append(summarize_round(instance, key))
            print(format_round(summaries[-1], i), flush=True)
    total = time.monotonic() - t_start
    children_peak = peak_rss_mb(children=True)
    out = {
        "rounds": [asdict(s) for s in summaries],
        "round_wall_s": wall,
        "total_wall_s": total,
        "peak_rss_mb_children": children_peak,
        "dagster_home": str(home / "dagster"),
        "mlflow_store": mlflow_store(home),
        "log": str(log_path) if log_path else None,
    }
    path = summary_path or home / "demo_summary.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"\n{len(summaries)} round(s) in {total / 60:.1f} min; summary: {path}")
    print(
        f"See them: DAGSTER_HOME={home / 'dagster'} dagster dev   |   "
        f"mlflow ui --backend-store-uri {mlflow_store(home)} "
        f"--artifacts-destination {home / 'mlflow' / 'artifacts'}"
    )
    return summaries


def default_log_path(home: Path) -> Path:
    """Where ``gymnast demo`` logs what the console does not show."""
    return Path(home).resolve() / "logs" / "demo.log"


def main(rounds: int, home: Path, *, log_path: Path | None = None, **kw) -> int:
    log_path = log_path or default_log_path(home)
    try:
        run_demo(rounds, home, log_path=log_path, **kw)
    except RoundFailed as e:
        print(
            f"\n{e}\nNothing recorded is lost: re-run the same command to resume the round "
            "(finished stages are kept, finished episodes are not collected again). "
            f"Details: {log_path}",
            file=sys.stderr,
        )
        return 1
    return 0
