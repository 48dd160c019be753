"""MLflow tracking: a local server as the one SQLite writer, concurrent writers, models and aliases."""

import multiprocessing as mp
import sqlite3

import pytest

from pipeline.tracking import RoundTracker, TrackingError, TrackingServer, store_paths


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with TrackingServer(tmp_path_factory.mktemp("mlflow")) as srv:
        yield srv


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """The same SQLite store, opened directly by this one process (fine for a single writer)."""
    return store_paths(tmp_path_factory.mktemp("mlflow-direct"))[0]


def _stage_writer(
    uri: str, round_key: str, stage: str, n_metrics: int, model_dir: str, out
) -> None:
    """One Dagster-step-like process: a nested run, per-step metrics, an artifact, a model version."""
    try:
        tracker = RoundTracker(uri)
        with tracker.stage(round_key, stage) as run:
            run.log_params({"stage": stage, "nested": {"a": 1}})
            for step in range(n_metrics):
                run.log_metrics({"loss": 1.0 / (step + 1), "other": step}, step=step)
            run.log_artifacts(model_dir, "policy")
            version = tracker.register("policy", run, "policy", tags={"sha256": f"sha-{stage}"})
        out.put((stage, run.run_id, version))
    except BaseException as e:  # report to the parent, which asserts on it
        out.put((stage, "error", repr(e)))


@pytest.mark.slow
def test_concurrent_stage_processes_write_without_database_locked(server, tmp_path):
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "config.json").write_text('{"policy_type": "random"}')
    tracker = RoundTracker(server.uri)
    parent = tracker.round_run("2026-01-01_0200", {"preset": "tiny"})

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    stages = [f"stage{i}" for i in range(6)]
    procs = [
        ctx.Process(
            target=_stage_writer, args=(server.uri, "2026-01-01_0200", s, 40, str(model), out)
        )
        for s in stages
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)

    errors = [r for r in results if r[1] == "error"]
    assert not errors, errors
    assert sorted(r[0] for r in results) == stages
    versions = sorted(int(r[2]) for r in results)
    assert versions == list(range(1, 7))  # six distinct versions, none lost to a write conflict
    for _, run_id, _ in results:
        run = tracker.client.get_run(run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.status == "FINISHED"
        history = tracker.client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(40))
        assert [a.path for a in tracker.client.list_artifacts(run_id, "policy")] == [
            "policy/config.json"
        ]
    # the server holds the only connection; the file is a well-formed SQLite store
    with sqlite3.connect(server.root / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 7


def test_aliases_move_between_versions_and_round_run_is_reused(sqlite_uri, tmp_path):
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "config.json").write_text("{}")
    tracker = RoundTracker(sqlite_uri, experiment="aliases")
    run_id = tracker.round_run("r1")
    assert tracker.round_run("r1") == run_id  # a resumed round finds its run
    with tracker.stage("r1", "world_model") as run:
        run.log_artifacts(model, "world_model")
        v1 = tracker.register(
            "world_model", run, "world_model", aliases=("champion",), tags={"sha256": "a"}
        )
        v2 = tracker.register(
            "world_model", run, "world_model", aliases=("challenger",), tags={"sha256": "b"}
        )
    assert tracker.alias_version("world_model", "champion") == v1
    assert tracker.alias_version("world_model", "challenger") == v2
    tracker.set_alias("world_model", "champion", v2)
    assert tracker.alias_version("world_model", "champion") == v2
    assert tracker.version_for_sha("world_model", "a") == v1
    assert tracker.version_for_sha("world_model", "nope") is None
    mv = tracker.client.get_model_version("world_model", v2)
    assert mv.current_stage == "None"  # aliases only, no deprecated stages
    assert mv.source.endswith("/artifacts/world_model")
    with pytest.raises(TrackingError, match="valid: world_model, judge, policy"):
        tracker.register("critic", run, "world_model")
    tracker.finish_round("r1", metrics={"promoted": 1.0})
    assert tracker.client.get_run(run_id).info.status == "FINISHED"


def test_stage_run_is_marked_failed_when_the_stage_raises(sqlite_uri):
    tracker = RoundTracker(sqlite_uri, experiment="failures")
    tracker.round_run("r9")
    with pytest.raises(ValueError, match="boom"), tracker.stage("r9", "judge") as run:
        raise ValueError("boom")
    assert tracker.client.get_run(run.run_id).info.status == "FAILED"
    with (
        pytest.raises(TrackingError, match="no MLflow run yet"),
        tracker.stage("never-started", "judge"),
    ):
        pass
