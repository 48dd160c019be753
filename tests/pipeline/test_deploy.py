"""The cluster deployment (deploy/, docs/deploy.md): instance YAML, launcher config, Dockerfile.

What runs here without a cluster: the instance YAML against Dagster's own instance schema, the
parts of it whose classes ship with ``dagster`` built into a real instance, the K8s launcher's and
Postgres storage's class configs when ``dagster-k8s`` / ``dagster-postgres`` are installed (they
are not project dependencies, so those tests skip), the proposed GPU step tags against the
definitions' pools, and a lint of deploy/Dockerfile in pure Python (hadolint is not available
offline).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import dagster as dg
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INSTANCE_YAML = ROOT / "deploy" / "instance" / "dagster.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
GPU_TAGS = ROOT / "deploy" / "k8s" / "gpu_step_tags.yaml"

PG_ENV = {
    "DAGSTER_PG_HOST": "postgres",
    "DAGSTER_PG_USER": "dagster",
    "DAGSTER_PG_PASSWORD": "x",
    "DAGSTER_PG_DB": "dagster",
}


def instance_config() -> dict:
    return yaml.safe_load(INSTANCE_YAML.read_text())


# --- the instance YAML ------------------------------------------------------------------------


def test_instance_yaml_validates_against_dagsters_instance_schema(monkeypatch, tmp_path):
    # The function DagsterInstance.from_config calls first (private: no public function validates
    # without also instantiating every class, and dagster-k8s / dagster-postgres are not installed).
    from dagster._core.instance.config import dagster_instance_config

    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "dagster.yaml").write_text(INSTANCE_YAML.read_text())
    value, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    assert value["run_launcher"]["module"] == "dagster_k8s"
    assert value["run_launcher"]["class"] == "K8sRunLauncher"
    assert "postgres" in value["storage"]


def test_instance_schema_rejects_a_broken_copy(tmp_path):
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    broken = instance_config()
    del broken["run_launcher"]["class"]
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def test_instance_builds_with_its_coordinator_pools_and_monitoring():
    """Public path: a real DagsterInstance from the YAML, less the classes not installed here
    (storage -> a temporary SQLite one, run launcher -> the default)."""
    cfg = instance_config()
    cfg.pop("storage")
    cfg.pop("run_launcher")
    with dg.instance_for_test(overrides=cfg) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        # what the daemon reads: `concurrency.runs` over the coordinator's own config
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 2
        assert concurrency.pool_config.default_pool_limit == 1
        assert str(concurrency.pool_config.pool_granularity.value) == "op"
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_retries_enabled is False
        # the pools of the assets: one slot each until `dagster instance concurrency set`
        for pool in ("robot/station", "gpu"):
            info = instance.event_log_storage.get_concurrency_info(pool)
            assert (info.limit, info.using_default_limit) == (1, True), pool
        instance.event_log_storage.set_concurrency_slots("gpu", 4)
        assert instance.event_log_storage.get_concurrency_info("gpu").limit == 4


def _class_config(cfg: dict, module: str, cls: str):
    mod = pytest.importorskip(
        module, reason=f"{module} is not a project dependency (no cluster here)"
    )
    return getattr(mod, cls), cfg


def test_k8s_run_launcher_config_against_its_class_schema(monkeypatch):
    from dagster._config import process_config

    launcher = instance_config()["run_launcher"]
    klass, config = _class_config(launcher["config"], "dagster_k8s", "K8sRunLauncher")
    result = process_config(klass.config_type(), config)
    assert result.success, result.errors


def test_postgres_storage_config_against_its_class_schema(monkeypatch):
    from dagster._config import process_config

    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    pg = instance_config()["storage"]["postgres"]
    klass, config = _class_config(pg, "dagster_postgres", "DagsterPostgresStorage")
    result = process_config(klass.config_type(), config)
    assert result.success, result.errors


# --- GPU step tags (proposed) -----------------------------------------------------------------


def test_gpu_step_tags_cover_exactly_the_gpu_pool_and_the_arm_driving_assets():
    from pipeline.definitions import defs

    proposal = yaml.safe_load(GPU_TAGS.read_text())
    classes: dict[str, str] = {}
    for node in defs.resolve_asset_graph().asset_nodes:
        name = node.key.to_user_string()
        if node.pools == {"gpu"}:
            classes[name] = "gpu"
        if node.assets_def.op.tags.get("gymnast/moves_arm") == "true":
            classes[name] = "robot"
    assert classes == proposal["assets"]
    gpu = proposal["gpu"]["dagster-k8s/config"]["container_config"]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1
    robot = proposal["robot"]["dagster-k8s/config"]["container_config"]["resources"]
    assert "nvidia.com/gpu" not in robot.get("limits", {})


CLUSTER_PROBE = """
import json
from pipeline.definitions import defs
job = defs.resolve_job_def("improvement_round")
ops = {n.key.to_user_string(): n.assets_def.op.tags for n in defs.resolve_asset_graph().asset_nodes}
print(json.dumps({"executor": job.executor_def.name, "tags": ops}, default=str))
"""


def _definitions_with(env: dict) -> dict:
    """The definitions as a deployment loads them: a fresh process with its environment."""
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", CLUSTER_PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cluster_settings_put_gpu_steps_on_gpu_pods_and_each_step_in_a_pod():
    pytest.importorskip("dagster_k8s", reason="the `cluster` extra is not installed")
    local = _definitions_with({"GYMNAST_EXECUTOR": "multiprocess", "GYMNAST_STEP_TAGS": ""})
    assert local["executor"] == "multiprocess_preloaded"
    assert all("dagster-k8s/config" not in t for t in local["tags"].values())

    cluster = _definitions_with({"GYMNAST_EXECUTOR": "k8s", "GYMNAST_STEP_TAGS": str(GPU_TAGS)})
    assert cluster["executor"] == "k8s"
    tags = cluster["tags"]

    def k8s(asset: str) -> dict:  # Dagster keeps a non-string tag value as its JSON
        value = tags[asset]["dagster-k8s/config"]
        return json.loads(value) if isinstance(value, str) else value

    for asset in ("world_model", "judge", "challenger"):
        limits = k8s(asset)["container_config"]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1, asset
    for asset in ("real_episodes", "real_evaluation"):
        assert tags[asset]["gymnast/moves_arm"] == "true"  # the arm tag survives the merge
        limits = k8s(asset)["container_config"]["resources"]["limits"]
        assert "nvidia.com/gpu" not in limits, asset
    assert "dagster-k8s/config" not in tags["dataset"]


def test_cluster_settings_refuse_an_unknown_executor_or_step_class(tmp_path, monkeypatch):
    from pipeline import cluster

    monkeypatch.setenv("GYMNAST_EXECUTOR", "slurm")
    with pytest.raises(ValueError, match="valid: multiprocess, k8s"):
        cluster.round_executor()
    bad = tmp_path / "tags.yaml"
    bad.write_text("gpu: {}\nassets: {world_model: tpu}\n")
    monkeypatch.setenv("GYMNAST_STEP_TAGS", str(bad))
    with pytest.raises(ValueError, match="step class 'tpu'"):
        cluster.step_tags("world_model")


# --- the Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    return out


def lint_dockerfile(text: str) -> list[str]:
    ins = dockerfile_instructions(text)
    problems = []
    stages = set()
    froms = [a for op, a in ins if op == "FROM"]
    if not froms:
        problems.append("no FROM")
    for a in froms:
        image, *rest = a.split()
        if image in stages:
            continue
        if rest and rest[0].upper() == "AS":
            stages.add(rest[1])
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        if "@sha256:" in image:
            continue
        if not tag or tag == "latest" or not re.search(r"\d+\.\d+", tag):
            problems.append(f"FROM {image}: not pinned to a version")
    for op, a in ins:
        if "latest" in a.split(":")[-1:] or re.search(r":latest\b", a):
            problems.append(f"{op} {a}: uses `latest`")
        if op == "ADD" and re.search(r"https?://", a):
            problems.append(f"ADD of a URL: {a}")
        if (
            op == "RUN"
            and re.search(r"\bapt-get install\b", a)
            and ("--no-install-recommends" not in a or "rm -rf /var/lib/apt/lists" not in a)
        ):
            problems.append("apt-get install without --no-install-recommends / list cleanup")
        if op == "RUN" and re.search(r"\bpip install\b", a):
            problems.append(f"pip install bypasses the lock file: {a}")
    syncs = [a for op, a in ins if op == "RUN" and "uv sync" in a]
    if not syncs or not all("--frozen" in a for a in syncs):
        problems.append("dependencies not installed with `uv sync --frozen` (the lock file)")
    copies = " ".join(a for op, a in ins if op == "COPY")
    if "uv.lock" not in copies:
        problems.append("uv.lock is not copied into the image")
    users = [a for op, a in ins if op == "USER"]
    final = max((i for i, (op, _) in enumerate(ins) if op == "FROM"), default=0)
    final_users = [a for i, (op, a) in enumerate(ins) if op == "USER" and i > final]
    if not users or not final_users:
        problems.append("no USER in the final stage (runs as root)")
    elif final_users[-1].split(":")[0] in ("root", "0"):
        problems.append("final USER is root")
    if not any(op == "HEALTHCHECK" for op, _ in ins[final:]):
        problems.append("no HEALTHCHECK in the final stage")
    cmds = [a for op, a in ins if op in ("CMD", "ENTRYPOINT")]
    if not cmds:
        problems.append("no CMD / ENTRYPOINT")
    else:
        cmd = cmds[-1]
        if not cmd.startswith("["):
            problems.append("CMD in shell form (signals do not reach the server)")
        argv = yaml.safe_load(cmd) if cmd.startswith("[") else shlex.split(cmd)
        if not (
            argv[:3] == ["dagster", "code-server", "start"]
            or argv[:3] == ["dagster", "api", "grpc"]
        ):
            problems.append(f"CMD does not serve the code location: {argv}")
        if "pipeline.definitions" not in argv:
            problems.append("CMD does not load pipeline.definitions")
    return problems


def test_dockerfile_lints_clean():
    assert lint_dockerfile(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("python:3.11.7-slim-bookworm", "python:latest"), "not pinned"),
        (lambda t: t.replace("uv sync --frozen", "uv sync"), "uv sync --frozen"),
        (lambda t: t.replace("USER 10001:10001", "USER root"), "final USER is root"),
        (lambda t: re.sub(r"(?m)^USER .*$", "", t), "no USER"),
        (lambda t: t + "\nADD https://example.com/x.tgz /tmp/\n", "ADD of a URL"),
        (lambda t: re.sub(r"HEALTHCHECK(.|\n)*?\]\n", "", t), "no HEALTHCHECK"),
    ],
)
def test_dockerfile_lint_catches(edit, expected):
    problems = lint_dockerfile(edit(DOCKERFILE.read_text()))
    assert any(expected in p for p in problems), problems


def test_dockerfile_copies_every_package_of_the_wheel():
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
        "targets"
    ]["wheel"]["packages"]
    copied = {
        a.split()[0] for op, a in dockerfile_instructions(DOCKERFILE.read_text()) if op == "COPY"
    }
    assert set(packages) <= copied
