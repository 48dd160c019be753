"""The Dagster definitions: they validate (``dagster`` and ``dg``), the round graph's shape, pools
and checks, the schedule and instance settings, public Dagster API only, and how a blocked stage is
read back from a round's runs."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[2]


def test_dagster_definitions_validate():
    env = {**os.environ, "DAGSTER_HOME": ""}
    env.pop("DAGSTER_HOME")
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful for code location gymnast" in out.stdout + out.stderr


def test_dg_project_config_points_at_the_definitions():
    import shutil
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
    assert config["dg"]["directory_type"] == "project"
    assert (
        config["dg"]["project"]["code_location_target_module"] == config["dagster"]["module_name"]
    )
    assert config["dg"]["project"]["code_location_name"] == config["dagster"]["code_location_name"]
    # dagster-dg-cli is a dev dependency: the check runs wherever the tests do
    dg_cli = shutil.which("dg", path=str(Path(sys.executable).parent))
    assert dg_cli is not None, "dg not installed next to this interpreter (uv sync)"
    out = subprocess.run(
        [dg_cli, "check", "defs"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "All definitions loaded successfully" in out.stdout + out.stderr


def test_pipeline_uses_no_private_dagster_modules():
    import ast

    for path in sorted((REPO / "pipeline").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("dagster._"), f"{path.name} imports {name}"


def test_round_graph_shows_previous_round_and_guards_the_arm():
    from pipeline.definitions import defs
    from pipeline.schedules import ROUND_JOB

    graph = defs.resolve_asset_graph()
    prev = {}
    for key in graph.get_all_asset_keys():
        for dep in graph.get(key).assets_def.specs_by_key[key].deps:
            if dep.asset_key == key:
                prev[key.to_user_string()] = dep.partition_mapping
    assert set(prev) == {"world_model", "judge", "champion"}
    for mapping in prev.values():
        assert isinstance(mapping, dg.TimeWindowPartitionMapping)
        assert (mapping.start_offset, mapping.end_offset) == (-1, -1)

    node = {k.to_user_string(): graph.get(k) for k in graph.get_all_asset_keys()}
    # arms are held per station inside the step (pool robot/<name>), not by an asset-level pool
    assert {
        n for n, a in node.items() if a.assets_def.op.tags.get("gymnast/moves_arm") == "true"
    } >= {
        "real_episodes",
        "real_evaluation",
    }
    assert {n for n, a in node.items() if a.pools == {"gpu"}} == {
        "world_model",
        "judge",
        "challenger",
    }
    for name in node:
        assert node[name].assets_def.op.retry_policy is None  # the arm is never driven by a retry
    assert node["champion"].parent_keys >= {
        dg.AssetKey("real_evaluation"),
        dg.AssetKey("real_episodes"),
    }
    assert node["challenger"].parent_keys >= {dg.AssetKey("world_model"), dg.AssetKey("judge")}
    # the judge can learn from replays in this round's world model (judge_replays)
    assert dg.AssetKey("world_model") in node["judge"].parent_keys

    from pipeline.checks import ROUND_CHECKS

    checks = {spec.key.name: spec for c in ROUND_CHECKS for spec in c.check_specs}
    blocking = {name for name, c in checks.items() if c.blocking}
    assert blocking == {
        "champion_episode_integrity",
        "challenger_episode_integrity",
        "judge_f1_floor",
        "promotion_gate",
    }
    assert checks["promotion_gate"].asset_key == dg.AssetKey("real_evaluation")
    exploit = checks["world_model_exploitation"]  # warns, never blocks: the gate guards the arm
    assert exploit.asset_key == dg.AssetKey("real_evaluation") and not exploit.blocking
    assert {d.asset_key for d in exploit.additional_deps} == {
        dg.AssetKey("world_model"),
        dg.AssetKey("judge"),
    }
    job = defs.resolve_job_def(ROUND_JOB)
    assert job.partitions_def is not None
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == set(node)


def test_schedule_cron_and_timezone_come_from_the_environment():
    code = (
        "from pipeline.definitions import defs; s = defs.resolve_schedule_def('nightly_round'); "
        "print(s.cron_schedule, s.execution_timezone, s.job_name)"
    )
    env = {**os.environ, "GYMNAST_ROUND_CRON": "30 3 * * *", "GYMNAST_TIMEZONE": "Europe/Berlin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "30 3 * * * Europe/Berlin improvement_round"


def test_instance_config_pools_monitoring_and_no_retries(tmp_path):
    from pipeline.demo import prepare_dagster_home

    instance = dg.DagsterInstance.from_config(str(prepare_dagster_home(tmp_path)))
    pools = instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "op"
    assert instance.run_monitoring_enabled and not instance.run_retries_enabled
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    assert "sqlite" in type(instance.run_storage).__name__.lower()
    assert str(instance.root_directory) == str(tmp_path / "dagster")


def test_blocked_stage_is_read_from_the_runs_of_the_round(tmp_path):
    from pipeline import demo

    parts = dg.StaticPartitionsDefinition(["r1", "r2", "r3"])
    outcome = {}

    @dg.asset(name="real_episodes", partitions_def=parts)
    def episodes():
        return 1

    @dg.asset_check(
        asset=episodes, name="champion_episode_integrity", blocking=True, partitions_def=parts
    )
    def integrity(context: dg.AssetCheckExecutionContext):
        passed, severity = outcome[context.partition_key]
        return dg.AssetCheckResult(passed=passed, severity=severity)

    outcome |= {
        "r1": (False, dg.AssetCheckSeverity.ERROR),
        "r2": (False, dg.AssetCheckSeverity.WARN),
        "r3": (True, dg.AssetCheckSeverity.ERROR),
    }
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        for key in ("r1", "r2", "r3"):
            dg.materialize(
                [episodes, integrity], partition_key=key, instance=instance, raise_on_error=False
            )
        assert demo._blocked(instance, "real_episodes", "r1")  # ERROR: the round stopped there
        assert not demo._blocked(instance, "real_episodes", "r2")  # WARN: it went on
        assert not demo._blocked(instance, "real_episodes", "r3")
        assert not demo._blocked(instance, "dataset", "r1")  # no blocking check
        outcome["r1"] = (True, dg.AssetCheckSeverity.ERROR)  # a re-run that passed unblocks it
        dg.materialize([episodes, integrity], partition_key="r1", instance=instance)
        assert not demo._blocked(instance, "real_episodes", "r1")
