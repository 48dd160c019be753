"""``gymnast``: one command line for the station, the episode store, benchmarks and the loop."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.bench.cli import add_bench_command
from pipeline.cli_arm import add_arm_commands
from pipeline.cli_common import gymnast_home

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
    add_arm_commands(sub)
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
