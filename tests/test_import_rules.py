"""The import rules between packages (docs/architecture.md, "Packages and what each may import").

- ``robot_bridge`` (the robot host's package, gymnast-station) imports none of the training or
  orchestration stack when its modules are imported: a station starts on a host with only numpy,
  pyzmq, msgpack and h5py (and MuJoCo for the simulator). Learned-policy jobs import torch inside
  the functions that run them.
- ``robot_bridge`` imports nothing from gymnast's other packages; it names the ``vla`` policy's
  loader by string, so that import happens only when a station runs a VLA job.
- ``world_model``, ``policy`` and ``reward`` never import ``pipeline``: the round's stages call the
  models, never the other way round.
- ``gymnast_common`` (what the model packages share) imports none of gymnast's packages.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from robot_bridge.policies import PolicyLoadError, load_policy, write_policy_config

REPO = Path(__file__).resolve().parents[1]

# What a robot host never loads by importing a robot_bridge module.
TRAINING_STACK = ("torch", "transformers", "diffusers", "lerobot", "dagster", "mlflow")
# robot_bridge modules allowed to load the `vla` extra (torch, transformers, safetensors) at
# import time. None need to: robot_bridge.devices imports torch inside its functions.
VLA_EXTRA_MODULES: frozenset[str] = frozenset()
# Third-party modules that only an optional extra or the real arm's host provides: a module that
# needs one is reported as skipped where it is not installed, not as a failure.
OPTIONAL = ("mujoco", "cv2", "interbotix_xs_modules", "interbotix_common_modules")

_IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
import robot_bridge

heavy = {heavy!r}
optional = {optional!r}
loaded, skipped, pulled = [], {{}}, {{}}
for info in pkgutil.walk_packages(robot_bridge.__path__, "robot_bridge."):
    if info.name.endswith(".__main__"):  # importing it starts a station
        continue
    before = set(sys.modules)
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in optional:
            raise
        skipped[info.name] = e.name
        continue
    loaded.append(info.name)
    new = {{m.split(".")[0] for m in set(sys.modules) - before}} & set(heavy)
    if new:
        pulled[info.name] = sorted(new)
print(json.dumps({{"loaded": loaded, "skipped": skipped, "pulled": pulled}}))
"""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a file, function-level ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def _violations(packages: tuple[str, ...], forbidden: set[str]) -> list[str]:
    return [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for package in packages
        for path in sorted((REPO / package).rglob("*.py"))
        for line, module in _imports(path)
        if module in forbidden
    ]


def test_importing_any_robot_bridge_module_loads_no_training_stack(tmp_path):
    code = _IMPORT_EVERY_MODULE.format(heavy=TRAINING_STACK, optional=OPTIONAL)
    # Run outside the repository, so robot_bridge comes from wherever it is installed.
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "robot_bridge.station" in report["loaded"] and "robot_bridge.client" in report["loaded"]
    offenders = {m: pulled for m, pulled in report["pulled"].items() if m not in VLA_EXTRA_MODULES}
    assert offenders == {}, f"robot_bridge modules that import the training stack: {offenders}"


def test_a_vla_checkpoint_on_a_host_without_the_training_stack_is_a_clear_load_error(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "policy.station", None)  # as on a robot host without it
    checkpoint = write_policy_config(tmp_path / "vla", "vla")
    with pytest.raises(
        PolicyLoadError, match=r"'vla' needs policy\.station.*gymnast-station\[vla\]"
    ):
        load_policy(checkpoint)


def test_robot_bridge_imports_no_other_gymnast_package():
    others = {"gymnast_common", "world_model", "policy", "reward", "pipeline"}
    assert _violations(("robot_bridge",), others) == []


def test_gymnast_common_imports_no_gymnast_package():
    others = {"robot_bridge", "world_model", "policy", "reward", "pipeline"}
    assert _violations(("gymnast_common",), others) == []


def test_models_never_import_the_pipeline():
    assert _violations(("world_model", "policy", "reward"), {"pipeline"}) == []
