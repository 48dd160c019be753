"""``gymnast``: one command line for the station, the episode store, benchmarks and the loop."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.bench.cli import add_bench_command
from robot_bridge.spec import AUTOEVAL_TASKS, LANGUAGE_TASKS, TASKS


def gymnast_home() -> Path:
    """Where local stores live (episodes, datasets, checkpoints, MLflow, Dagster): $GYMNAST_HOME."""
    return Path(os.environ.get("GYMNAST_HOME", ".gymnast")).resolve()


# Names that stand for several tasks in ``--tasks``: "all" is the four AutoEval tasks (what it
# meant before the simulator's language tasks existed), "language" the two language tasks.
_TASK_GROUPS = {"all": AUTOEVAL_TASKS, "language": LANGUAGE_TASKS}


def _tasks(value: str) -> list[str]:
    names: list[str] = []
    for item in (t.strip() for t in value.split(",")):
        for name in _TASK_GROUPS.get(item, (item,) if item else ()):
            if name not in names:
                names.append(name)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown task(s) {unknown}; valid: all (the AutoEval tasks), language, "
            f"{', '.join(TASKS)}"
        )
    return names


# --- station ----------------------------------------------------------------------------------


def cmd_station(args: argparse.Namespace) -> int:
    from robot_bridge import serve

    return serve.run_keys(args) if args.station_command == "keys" else serve.run_station(args)


# --- episodes ---------------------------------------------------------------------------------


def cmd_episodes(args: argparse.Namespace) -> int:
    from robot_bridge import episodes as store

    if args.episodes_command == "list":
        paths = store.list_episodes(args.dir, include_partial=args.include_partial)
        for p in paths:
            ep = store.read_episode(p)
            label = {True: "success", False: "failure", None: "unlabelled"}[ep.success]
            print(
                f"{p.name}  {ep.task:<20} seed={ep.seed}  steps={ep.num_steps:<4} {label:<10} "
                f"{ep.termination}{'' if ep.complete else '  (PARTIAL)'}"
            )
        print(store.format_summary(store.summarize(paths)))
        for p in store.list_corrupt(args.dir):
            print(f"corrupt (kept, not used): {p}")
        return 0
    if args.episodes_command == "validate":
        bad = 0
        for p in store.list_episodes(args.dir, include_partial=True):
            problems = store.validate_episode(p)
            bad += bool(problems)
            print(f"{p.name}: {'ok' if not problems else '; '.join(problems)}")
        print(f"{bad} invalid episode file(s)")
        return 1 if bad else 0
    if args.episodes_command == "recover":
        for p in store.recover_partials(args.dir, args.station_id):
            print(f"kept and flagged: {p}")
        return 0
    if args.episodes_command == "export":
        from pipeline.lerobot_dataset import export_lerobot

        paths = store.list_episodes(args.dir)
        out = export_lerobot(paths, args.out, repo_id=args.repo_id, use_videos=not args.images)
        print(f"exported {len(paths)} episodes to {out}")
        return 0
    raise AssertionError(args.episodes_command)


# --- collecting with a policy over ZMQ --------------------------------------------------------


def _policy_dir(spec: str, workdir: Path) -> Path:
    """A checkpoint directory, or a scripted policy name (made into a config-only checkpoint)."""
    from robot_bridge.policies import write_policy_config

    if Path(spec).is_dir():
        return Path(spec)
    if is_policy_url(spec):
        return autoeval_http_checkpoint(spec, workdir)
    if spec == "scripted_expert":
        return write_policy_config(workdir / "scripted_expert", "scripted_expert", noise=0.0)
    if spec == "random":
        return write_policy_config(workdir / "random", "random", seed=0)
    raise SystemExit(
        "--policy must be a checkpoint directory, 'scripted_expert', 'random' or an AutoEval "
        f"policy server URL (http://host:port); got {spec!r}"
    )


def is_policy_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def autoeval_http_checkpoint(
    url: str, workdir: Path, timeout_s: float = 8.0, chunk: bool = False, label: str = ""
) -> Path:
    """A config-only ``autoeval_http`` checkpoint for a policy server URL (see docs/autoeval.md).

    The folder is named by the config's hash: the same URL and options give the same checkpoint
    id, so a re-run resumes, and a different ``label`` (the remote model's version) a new one."""
    import hashlib
    import json

    from robot_bridge.policies.autoeval_http import write_autoeval_http_config

    fields = {"timeout_s": timeout_s, "chunk": chunk, "label": label}
    key = hashlib.sha256(json.dumps({"url": url, **fields}, sort_keys=True).encode()).hexdigest()
    try:
        return write_autoeval_http_config(workdir / "autoeval_http" / key[:16], url, **fields)
    except ValueError as e:
        raise SystemExit(f"bad policy server URL or options: {e}") from None


def collect(
    endpoint: str | None,
    policy: str,
    tasks: list[str],
    episodes_per_task: int,
    out: Path,
    seed: int,
    keys: Path | None,
    backend: str = "sim",
    progress: bool = True,
):
    """Run a policy on a station (an embedded simulated one if no endpoint) and copy the episodes to ``out``."""
    from robot_bridge.client import StationClient
    from robot_bridge.dispatch import run_on_station
    from robot_bridge.launch import StationProcess

    home = gymnast_home()
    station = None
    if endpoint is None:
        station = StationProcess(backend, episodes_dir=home / "station" / "episodes")
        endpoint = station.endpoint
        print(f"started a simulated {backend} station on {endpoint}")
    try:
        with StationClient(endpoint, keys_dir=keys, timeout_s=30.0) as client:
            hello = client.hello()
            print(f"station {hello['station_id']} ({hello['backend']}, auth {hello['auth']})")
            return run_on_station(
                client,
                _policy_dir(policy, home / "policies"),
                tasks,
                episodes_per_task,
                out,
                seed=seed,
                progress=progress,
            )
    finally:
        if station is not None:
            station.stop()


def cmd_collect(args: argparse.Namespace) -> int:
    from robot_bridge.dispatch import format_result

    result = collect(
        args.station,
        args.policy,
        args.tasks,
        args.episodes_per_task,
        args.out,
        args.seed,
        args.keys,
        backend=args.backend,
    )
    print(
        f"{len(result.episodes)} episodes in {args.out} ({result.skipped} already there, not re-collected)"
    )
    print(format_result(result))
    return 0


def cmd_dispatch(args: argparse.Namespace) -> int:
    """Send a checkpoint (a folder or an MLflow model URI) to a station and run an evaluation job there."""
    from robot_bridge.client import StationClient, StationError
    from robot_bridge.dispatch import DispatchError, format_result, run_on_station

    if is_policy_url(args.model):
        checkpoint = autoeval_http_checkpoint(
            args.model,
            gymnast_home() / "policies",
            timeout_s=args.http_timeout,
            chunk=args.http_chunk,
            label=args.http_label,
        )
        print(f"evaluating the AutoEval policy server {args.model} (checkpoint {checkpoint})")
    else:
        checkpoint = resolve_checkpoint(args.model)
    out = args.out or gymnast_home() / "episodes" / "dispatched"
    with StationClient(args.station, keys_dir=args.keys, timeout_s=30.0) as client:
        try:
            result = run_on_station(
                client,
                checkpoint,
                args.tasks,
                args.episodes_per_task,
                out,
                seed=args.seed,
                progress=True,
            )
        except (DispatchError, StationError) as e:
            print(f"dispatch failed: {e}", file=sys.stderr)
            return 1
    print(
        f"checkpoint {result.checkpoint_sha256[:12]}: {len(result.episodes)} episodes in {out} "
        f"({result.skipped} already there, not run again)"
    )
    print(format_result(result))
    return 0


def resolve_checkpoint(spec: str) -> Path:
    """A checkpoint folder as is; ``models:/policy@champion`` or ``runs:/...`` fetched from MLflow."""
    if Path(spec).is_dir():
        return Path(spec)
    if spec.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            raise SystemExit(
                f"{spec} is an MLflow URI: set MLFLOW_TRACKING_URI to the tracking server"
            )
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=spec))
    raise SystemExit(
        f"checkpoint must be a folder or an MLflow URI (models:/policy@champion), got {spec!r}"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a checkpoint as an AutoEval policy server (POST /act, POST /reset, GET /health)."""
    from robot_bridge.autoeval_server import serve_checkpoint
    from robot_bridge.policies import PolicyLoadError

    checkpoint = resolve_checkpoint(args.checkpoint)
    try:
        return serve_checkpoint(checkpoint, args.host, args.port, warmup=not args.no_warmup)
    except (PolicyLoadError, TypeError, ValueError) as e:
        # TypeError: a scripted expert needs a simulator's ground truth, which a server lacks.
        print(f"cannot serve {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: N improvement rounds through Dagster on a simulated station, tracked in MLflow."""
    from pipeline import demo

    os.environ["GYMNAST_PRESET"] = resolve_preset(args.preset)
    use_postgres(args.postgres)
    return demo.main(
        args.rounds,
        gymnast_home(),
        station=args.station,
        keys_dir=args.keys,
        log_path=args.log_file,
    )


def resolve_preset(flag: str | None) -> str:
    """``--preset`` if given, else $GYMNAST_PRESET, else ``tiny``; an unknown name is an error."""
    from pipeline.round.config import ROUND_PRESETS

    preset = flag or os.environ.get("GYMNAST_PRESET") or "tiny"
    if preset not in ROUND_PRESETS:
        raise SystemExit(
            f"unknown round preset {preset!r} (from GYMNAST_PRESET); "
            f"valid: {', '.join(ROUND_PRESETS)}"
        )
    return preset


def use_postgres(server_url: str | None) -> None:
    """``--postgres URL``: Dagster and MLflow in databases on that server (created when missing),
    through GYMNAST_DAGSTER_DB / GYMNAST_MLFLOW_DB so the step processes and the MLflow server
    started later see the same; the flag wins over the environment. No flag: the environment
    decides (unset: SQLite under $GYMNAST_HOME)."""
    if server_url:
        from pipeline.demo import postgres_databases

        os.environ.update(postgres_databases(server_url))


POSTGRES_HELP = (
    "keep Dagster's runs and MLflow's runs and registry in PostgreSQL: databases NAME_dagster "
    "and NAME_mlflow on the server postgresql://user:password@host:port[/NAME] (NAME default "
    "gymnast; created when missing). Default: $GYMNAST_DAGSTER_DB / $GYMNAST_MLFLOW_DB, else "
    "SQLite under $GYMNAST_HOME"
)


def cmd_env(args: argparse.Namespace) -> int:
    """Every environment variable gymnast reads or sets, with the values set now."""
    from pipeline.environment import format_table

    print(format_table(markdown=args.markdown), end="" if args.markdown else "\n")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a public checkpoint into ours (today: WorldGym's world model)."""
    from world_model.convert_worldgym import REPORT_NAME, convert_worldgym

    convert_worldgym(
        args.src,
        args.dst,
        args.vae,
        heads=args.heads,
        weights=args.weights,
        allow_partial=args.allow_partial,
    )
    print(f"wrote {args.dst} (what mapped and what did not: {Path(args.dst) / REPORT_NAME})")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """`dagster dev` with a simulated station and the MLflow server running, for the UI and the schedule."""
    import subprocess

    from pipeline import demo

    use_postgres(args.postgres)
    with demo.local_stack(gymnast_home(), station=args.station, keys_dir=args.keys) as env:
        print(
            f"DAGSTER_HOME={env['DAGSTER_HOME']}  MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']}"
        )
        cmd = [sys.executable, "-m", "dagster", "dev", "-h", args.host, "-p", str(args.port)]
        try:
            return subprocess.call(cmd)
        except KeyboardInterrupt:
            return 0


# --- parser -----------------------------------------------------------------------------------


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("gymnast")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _add_station(sub) -> None:
    from robot_bridge import serve

    st = sub.add_parser(
        "station",
        help="run a robot station (ZMQ server next to the arm), or make its keys",
        description="Run a robot station: `gymnast station --backend sim --bind tcp://127.0.0.1:5555`. "
        "`gymnast station keys DIR` makes CURVE keys.",
    )
    serve.build_parser(st)
    # under $GYMNAST_HOME like every other store (``python -m robot_bridge`` on a robot host keeps
    # its own default); set_defaults also updates the default the help shows
    st.set_defaults(func=cmd_station, episodes_dir=gymnast_home() / "station" / "episodes")


def _add_episodes(sub) -> None:
    ep = sub.add_parser("episodes", help="list, validate, recover and export recorded episodes")
    ep_sub = ep.add_subparsers(dest="episodes_command", required=True)
    e = ep_sub.add_parser("list", help="one line per episode and a per-task summary")
    e.add_argument("dir", type=Path)
    e.add_argument(
        "--include-partial", action="store_true", help="also list partial / crashed files"
    )
    e = ep_sub.add_parser(
        "validate", help="check every file (shapes, finiteness, labels, checksums)"
    )
    e.add_argument("dir", type=Path)
    e = ep_sub.add_parser(
        "recover", help="flag partial files left by a killed station (never deletes)"
    )
    e.add_argument("dir", type=Path)
    e.add_argument("--station-id", default="cli")
    e = ep_sub.add_parser("export", help="export complete episodes as a LeRobotDataset (v3)")
    e.add_argument("dir", type=Path)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--repo-id", default="gymnast/episodes")
    e.add_argument(
        "--images", action="store_true", help="store lossless PNG frames instead of videos"
    )
    ep.set_defaults(func=cmd_episodes)


def _add_collect(sub) -> None:
    co = sub.add_parser(
        "collect", help="run a policy on a station for N episodes per task and copy them here"
    )
    co.add_argument(
        "--station", default=None, help="station endpoint; default: start an embedded simulated one"
    )
    co.add_argument(
        "--backend", default="sim", choices=["sim", "sim_gap"], help="embedded station backend"
    )
    co.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="CURVE keys directory (server.key + client.key_secret)",
    )
    co.add_argument(
        "--policy",
        default="scripted_expert",
        help="checkpoint dir, 'scripted_expert', 'random' or an AutoEval policy server URL",
    )
    co.add_argument(
        "--tasks",
        type=_tasks,
        default=list(AUTOEVAL_TASKS),
        help="comma-separated task names, 'all' (the AutoEval tasks) or 'language' (the "
        "simulator's language tasks)",
    )
    co.add_argument("-n", "--episodes-per-task", type=int, default=5)
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--out", type=Path, default=gymnast_home() / "episodes" / "collected")
    co.set_defaults(func=cmd_collect)


def _add_dispatch(sub) -> None:
    di = sub.add_parser(
        "dispatch",
        help="send a checkpoint to a station and run an evaluation job there",
        description="Upload a checkpoint (chunked, sha256-verified; CURVE-authenticated with --keys), "
        "run N episodes per task with automatic success labels, copy every episode "
        "here as it finishes, print per-task success with 95% Wilson intervals. "
        "Re-running resumes: episodes already here are not run again.",
    )
    di.add_argument(
        "model",
        help="checkpoint folder, MLflow URI (models:/policy@champion), or an AutoEval policy "
        "server URL (http://host:port, reached from the station; see docs/autoeval.md)",
    )
    di.add_argument("--station", required=True, help="station endpoint, tcp://host:port")
    di.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="CURVE keys directory (server.key + client.key_secret)",
    )
    di.add_argument(
        "--tasks",
        type=_tasks,
        default=list(AUTOEVAL_TASKS),
        help="comma-separated task names, 'all' (the AutoEval tasks) or 'language' (the "
        "simulator's language tasks)",
    )
    di.add_argument("-n", "--episodes-per-task", type=int, default=10)
    di.add_argument("--seed", type=int, default=0)
    di.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where episodes go (default $GYMNAST_HOME/episodes/dispatched)",
    )
    di.add_argument(
        "--http-timeout",
        type=float,
        default=8.0,
        help="policy server URL only: seconds the station waits for each action (default 8)",
    )
    di.add_argument(
        "--http-chunk",
        action="store_true",
        help='policy server URL only: ask for whole action chunks ("return_chunk": true)',
    )
    di.add_argument(
        "--http-label",
        default="",
        help="policy server URL only: the remote model's name/version, part of the checkpoint id",
    )
    di.set_defaults(func=cmd_dispatch)


def _add_serve(sub) -> None:
    sv = sub.add_parser(
        "serve",
        help="serve a checkpoint as an AutoEval policy server (HTTP POST /act)",
        description="Serve a policy checkpoint the way AutoEval expects: POST /act with a "
        "json-numpy body {image (256,256,3) uint8, instruction, proprio?} (or {'encoded': "
        "'<json>'}) returns a (7,) action, the (K,7) chunk with \"return_chunk\": true; "
        "POST /reset; GET /health. See docs/autoeval.md.",
    )
    sv.add_argument("checkpoint", help="checkpoint folder or MLflow URI (models:/policy@champion)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    sv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default loopback; 0.0.0.0 exposes it, without any auth)",
    )
    sv.add_argument(
        "--no-warmup", action="store_true", help="skip the warm-up action before announcing ready"
    )
    sv.set_defaults(func=cmd_serve)


def _add_demo(sub) -> None:
    from pipeline.round.config import ROUND_PRESETS

    de = sub.add_parser(
        "demo",
        help="the main job: improvement rounds through Dagster on a simulated station",
        description="Start a simulated station (unless --station) and an MLflow server, run the "
        "last N rounds of the round schedule through the Dagster job the nightly "
        "schedule uses, and print a table per round. Re-running resumes.",
    )
    de.add_argument("--rounds", type=int, default=2)
    de.add_argument(
        "--preset",
        default=None,
        choices=list(ROUND_PRESETS),
        help="RoundConfig preset, one of %(choices)s (default: $GYMNAST_PRESET, else tiny; "
        "the flag wins over the environment)",
    )
    de.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="where library warnings, Dagster's log lines, MLflow links and encoder output go "
        "(default $GYMNAST_HOME/logs/demo.log); the console shows progress bars and round tables",
    )
    de.add_argument("--station", default=None, help="use this station instead of a simulated one")
    de.add_argument("--keys", type=Path, default=None, help="CURVE keys directory for --station")
    de.add_argument("--postgres", default=None, metavar="URL", help=POSTGRES_HELP)
    de.set_defaults(func=cmd_demo)


def _add_env(sub) -> None:
    en = sub.add_parser(
        "env",
        help="every environment variable gymnast reads or sets, and its value now",
        description="Every environment variable gymnast reads or sets (pipeline/environment.py), "
        "with the values set now; --markdown prints docs/environment.md.",
    )
    en.add_argument("--markdown", action="store_true", help="the docs page, no values")
    en.set_defaults(func=cmd_env)


def _add_dev(sub) -> None:
    dv = sub.add_parser(
        "dev", help="dagster dev with a simulated station and the MLflow server running"
    )
    dv.add_argument("--station", default=None)
    dv.add_argument("--keys", type=Path, default=None)
    dv.add_argument("--host", default="127.0.0.1")
    dv.add_argument("--port", type=int, default=3000)
    dv.add_argument("--postgres", default=None, metavar="URL", help=POSTGRES_HELP)
    dv.set_defaults(func=cmd_dev)


def _add_convert(sub) -> None:
    cv = sub.add_parser("convert", help="convert a public checkpoint into ours")
    cv_sub = cv.add_subparsers(dest="convert_command", required=True)
    w = cv_sub.add_parser(
        "worldgym",
        help="a WorldGym (world-model-eval) .pt into the large world model",
        description="Maps WorldGym's DiT onto the large world model's backbone "
        "(world_model/convert_worldgym.py). Its one-Linear action embedding has no place in "
        "ours: refused unless --allow-partial, which leaves the action pathway to training.",
    )
    w.add_argument("src", type=Path, help="WorldGym checkpoint (.pt, weights_only)")
    w.add_argument("dst", type=Path, help="checkpoint folder to write")
    w.add_argument("--vae", type=Path, required=True, help="local SD3 VAE folder (diffusers)")
    w.add_argument("--heads", type=int, default=16, help="attention heads (WorldGym 600M: 16)")
    w.add_argument("--weights", choices=("ema", "model"), default="ema")
    w.add_argument("--allow-partial", action="store_true", help="convert the backbone only")
    cv.set_defaults(func=cmd_convert)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gymnast",
        description="World-Gymnast improvement loop: a ZMQ robot station, episodes, world model, "
        "VLA policy RL in imagination, and nightly rounds in Dagster.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_station(sub)
    _add_episodes(sub)
    _add_collect(sub)
    _add_dispatch(sub)
    _add_serve(sub)
    _add_demo(sub)
    _add_env(sub)
    _add_dev(sub)
    _add_convert(sub)
    add_bench_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
