"""The ``gymnast`` command line and the conventions around it: version, help and presets, every
benchmark reachable, ``gymnast dispatch`` on a station, every environment variable listed (and the
docs page current), and the demo console that shows bars and tables and logs the rest."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gymnast_version_presets_and_help_without_doubled_percent(tmp_path, monkeypatch, capsys):
    from pipeline import cli, demo
    from pipeline.round.config import ROUND_PRESETS

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == "gymnast 0.1.0"

    monkeypatch.setenv("GYMNAST_HOME", str(tmp_path / "home"))
    parser = cli.build_parser()
    # the station's episodes live under GYMNAST_HOME, and its help says so
    assert parser.parse_args(["station"]).episodes_dir == tmp_path / "home" / "station" / "episodes"
    commands = [
        "station",
        "episodes",
        "collect",
        "dispatch",
        "serve",
        "demo",
        "env",
        "dev",
        "bench",
    ]
    helps = {}
    for argv in [[c] for c in commands] + [
        ["bench", b] for b in ("bridge", "safety", "learning", "loop")
    ]:
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        helps[" ".join(argv)] = capsys.readouterr().out
    for name, text in helps.items():
        assert "%%" not in text, name  # argparse does not %-format descriptions
    assert "95% Wilson intervals" in " ".join(helps["dispatch"].split())
    # (argparse may break a long default across lines)
    assert str(tmp_path / "home" / "station" / "episodes") in "".join(helps["station"].split())
    assert "{" + ",".join(ROUND_PRESETS) + "}" in helps["demo"]  # --preset lists its choices

    seen = {}
    monkeypatch.setattr(
        demo, "main", lambda *a, **kw: seen.setdefault("preset", os.environ["GYMNAST_PRESET"]) and 0
    )
    monkeypatch.setenv("GYMNAST_PRESET", "bench")
    cli.main(["demo", "--preset", "smoke"])
    assert seen.pop("preset") == "smoke"  # the flag wins over the environment
    monkeypatch.setenv("GYMNAST_PRESET", "bench")
    cli.main(["demo"])
    assert seen.pop("preset") == "bench"  # no flag: the environment
    monkeypatch.delenv("GYMNAST_PRESET")
    cli.main(["demo"])
    assert seen.pop("preset") == "tiny"
    with pytest.raises(SystemExit):
        cli.main(["demo", "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_every_benchmark_is_reachable_from_the_cli():
    from pipeline.cli import build_parser

    parser = build_parser()
    for argv in (
        ["bench", "bridge"],
        ["bench", "learning"],
        ["bench", "loop", "--rounds", "1"],
        ["bench", "safety", "--upload-gb", "1"],
        ["bench", "gpu", "--quick"],
    ):
        args = parser.parse_args(argv)
        assert args.func.__name__ == "cmd_bench" and args.bench_command == argv[1]
    args = parser.parse_args(["bench", "learning", "--dyna", "2", "--dyna-from", "rl"])
    assert (args.dyna, args.dyna_from, args.dyna_seed) == (2, "rl", None)
    args = parser.parse_args(["bench", "learning", "--dyna", "1", "--dyna-seed", "7"])
    assert args.dyna_seed == 7
    # a Dyna seed with no Dyna iteration, or a negative one, fails before anything runs
    from pipeline.bench.learning import run
    from pipeline.round.config import RoundConfig

    for iterations, seed in ((0, 7), (1, -1)):
        with pytest.raises(ValueError, match="dyna_seed must be >= 0 and needs Dyna iterations"):
            run(
                Path("/nonexistent/bench"),
                RoundConfig(),
                1,
                dyna_iterations=iterations,
                dyna_seed=seed,
            )


def test_task_defaults_stay_the_autoeval_tasks_and_the_language_tasks_are_named():
    """The simulator's language tasks are valid everywhere a task is named, and in no default:
    a command, a round or ``--tasks all`` runs the four AutoEval tasks as before."""
    from pipeline.cli import build_parser
    from pipeline.round.config import RoundConfig
    from robot_bridge.spec import AUTOEVAL_TASKS, LANGUAGE_TASKS

    autoeval, language = list(AUTOEVAL_TASKS), list(LANGUAGE_TASKS)
    parser = build_parser()
    for command in ("collect", "dispatch"):
        base = [command] if command == "collect" else [command, "ckpt"]
        base += ["--station", "tcp://127.0.0.1:1"]
        assert parser.parse_args(base).tasks == autoeval
        assert parser.parse_args([*base, "--tasks", "all"]).tasks == autoeval
        assert parser.parse_args([*base, "--tasks", "language"]).tasks == language
        assert parser.parse_args([*base, "--tasks", "all,language"]).tasks == autoeval + language
        tasks = parser.parse_args([*base, "--tasks", "red_cup_on_plate,open_drawer"]).tasks
        assert tasks == ["red_cup_on_plate", "open_drawer"]
    assert RoundConfig().tasks == AUTOEVAL_TASKS
    assert RoundConfig(tasks=language).tasks == LANGUAGE_TASKS
    with pytest.raises(ValueError, match="blue_cup_on_plate"):
        RoundConfig(tasks=["green_cup_on_plate"])


def test_gymnast_dispatch_evaluates_on_a_station_and_resumes(tmp_path):
    from robot_bridge.episodes import list_episodes
    from robot_bridge.launch import StationProcess
    from robot_bridge.policies import write_policy_config

    ckpt = write_policy_config(tmp_path / "expert", "scripted_expert", noise=0.0)
    out_dir = tmp_path / "episodes"
    with StationProcess("sim", episodes_dir=tmp_path / "station") as station:
        cmd = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "dispatch",
            str(ckpt),
            "--station",
            station.endpoint,
            "--tasks",
            "open_drawer",
            "-n",
            "2",
            "--out",
            str(out_dir),
        ]
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        assert "| open_drawer | 2 |" in first.stdout and "95% CI" in first.stdout
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "(2 already there, not run again)" in again.stdout
    assert len(list_episodes(out_dir)) == 2
    assert len(list_episodes(tmp_path / "station")) == 2  # the arm ran each episode once


# --- environment variables ------------------------------------------------------------------------


def _named_environment_variables() -> dict[str, set[str]]:
    """Variables the code names: os.environ / os.getenv / dg.EnvVar with a literal, or a literal
    that looks like one of ours or of the services it configures."""
    import ast
    import re

    looks_like = re.compile(
        r"^(GYMNAST|MLFLOW|DAGSTER|MUJOCO|PYOPENGL|HF|OPENAI|SVT)_[A-Z0-9_]*[A-Z0-9]$"
    )
    found: dict[str, set[str]] = {}
    for package in ("pipeline", "robot_bridge", "policy", "world_model", "reward"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / "pipeline" / "environment.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                name = None
                if (
                    isinstance(node, ast.Call)
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    f = ast.unparse(node.func)
                    if f in {
                        "os.environ.get",
                        "os.getenv",
                        "os.environ.setdefault",
                        "os.environ.pop",
                        "dg.EnvVar",
                        "EnvVar",
                    }:
                        name = node.args[0].value
                elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                    if isinstance(node.slice, ast.Constant):
                        name = node.slice.value
                elif (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and looks_like.match(node.value)
                ):
                    name = node.value
                if isinstance(name, str):
                    found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_environment_variable_is_listed_and_the_docs_page_is_current():
    from pipeline.environment import BY_NAME, format_table

    named = _named_environment_variables()
    missing = {n: sorted(p) for n, p in named.items() if n not in BY_NAME}
    assert not missing, (
        f"add these to pipeline/environment.py (then regenerate the docs): {missing}"
    )
    stale = sorted(set(BY_NAME) - set(named))
    assert not stale, f"listed in pipeline/environment.py but named nowhere in the code: {stale}"
    page = (REPO / "docs" / "environment.md").read_text()
    assert page == format_table(markdown=True), (
        "docs/environment.md is stale: gymnast env --markdown > docs/environment.md"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "env"],
        env={**os.environ, "GYMNAST_PRESET": "smoke"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "GYMNAST_PRESET" in out.stdout and "= smoke" in out.stdout


# --- the demo console -----------------------------------------------------------------------------


CONSOLE_SCRIPT = r'''
import subprocess, sys, warnings
from pathlib import Path
from pipeline.console import routed_to_log

CHILD = """
import logging, os, sys, time, warnings
from tqdm import tqdm
logging.basicConfig(level=logging.DEBUG)
logging.getLogger("dagster").debug("STEP_WORKER_STARTED - Executing step in subprocess.")
warnings.warn("a library warning")
for _ in tqdm(range(3), desc="sft", file=sys.stderr, mininterval=0):
    time.sleep(0.01)
print("View run challenger at: http://127.0.0.1:5000/#/experiments/1/runs/abc", file=sys.stderr)
print("stdout chatter of a library")
os.write(2, b"Svt[info]: -------------------------------------------\\n")
"""
with routed_to_log(Path(sys.argv[1])):
    print("| task | champion | challenger |")
    warnings.warn("a warning in the demo process")
    subprocess.run([sys.executable, "-c", CHILD], check=True)
    print("| open_drawer | 1/2 | 2/2 |")
print("after")
'''


def test_demo_console_shows_bars_and_tables_and_logs_the_rest(tmp_path):
    log = tmp_path / "logs" / "demo.log"
    out = subprocess.run(
        [sys.executable, "-c", CONSOLE_SCRIPT, str(log)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "| task | champion | challenger |",
        "| open_drawer | 1/2 | 2/2 |",
        "after",
    ]
    assert "sft: 100%" in out.stderr and "3/3" in out.stderr  # the progress bar
    console = out.stdout + out.stderr
    logged = log.read_text()
    for line in (
        "STEP_WORKER_STARTED",
        "a library warning",
        "a warning in the demo process",
        "View run challenger at: http://",
        "stdout chatter of a library",
        "Svt[info]: ----",
    ):
        assert line in logged and line not in console, line
    assert "sft:" not in logged


def test_stderr_router_keeps_bars_apart_from_lines():
    import io

    from pipeline.console import StderrRouter

    console, log = io.StringIO(), io.StringIO()
    router = StderrRouter(console, log)
    for chunk in (
        "\rGRPO:  0%|",
        "\rGRPO: 100%|",
        "\n",
        "2026 - dagster - DEBUG - x\n",
        "Svt[info]: ",
        "banner\n",
    ):
        router.feed(chunk)
    router.feed("half a line ")
    router.feed("\rnot a bar: inside a line\n")
    assert console.getvalue() == "\rGRPO:  0%|\rGRPO: 100%|\n"
    assert log.getvalue() == (
        "2026 - dagster - DEBUG - x\nSvt[info]: banner\nhalf a line \rnot a bar: inside a line\n"
    )
