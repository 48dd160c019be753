"""``gymnast bench``: its subcommands and their options (``pipeline.cli`` adds them)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_bench(args: argparse.Namespace) -> int:
    """Runs the ``gymnast bench`` subcommand ``args`` names."""
    if args.bench_command == "bridge":
        from pipeline.bench import station

        station.run(args.n, args.sim_steps, args.json)
        return 0
    if args.bench_command == "safety":
        from pipeline.bench import station

        station.run_safety(args.upload_gb, args.json)
        return 0
    if args.bench_command == "learning":
        from pipeline.bench import learning

        return learning.run_from_args(args)
    if args.bench_command == "capabilities":
        from pipeline.bench import capabilities

        return capabilities.run_from_args(args)
    if args.bench_command == "gpu":
        from pipeline.bench import gpu

        return gpu.run_from_args(args)
    if args.bench_command == "loop" and args.stations > 1:
        from pipeline.bench import fleet

        return fleet.main(args.stations, args.json)
    if args.bench_command == "loop":
        from pipeline.bench import loop

        return loop.main(
            args.rounds, args.json, keep=args.keep, postgres=args.postgres, preset=args.preset
        )
    raise AssertionError(args.bench_command)


def add_bench_command(sub) -> None:
    """``gymnast bench <name>`` under the ``gymnast`` parser's subcommands ``sub``."""
    be = sub.add_parser("bench", help="benchmarks that print measured figures")
    be_sub = be.add_subparsers(dest="bench_command", required=True)
    b = be_sub.add_parser("bridge", help="step latency vs a bare ZMQ floor, and simulator steps/s")
    b.add_argument("-n", type=int, default=2000, help="timed round trips per configuration")
    b.add_argument("--sim-steps", type=int, default=200)
    b.add_argument("--json", type=Path, default=None)
    b = be_sub.add_parser(
        "safety", help="e-stop latency during the largest upload, station memory per message"
    )
    b.add_argument(
        "--upload-gb", type=float, default=32.0, help="upload size (default: the 32 GiB limit)"
    )
    b.add_argument("--json", type=Path, default=None)
    b = be_sub.add_parser(
        "gpu",
        help="imagined frames/s, GRPO step time and memory, VLA chunks/s with MFU (for a GPU)",
    )
    from pipeline.bench import gpu

    gpu.add_arguments(b)
    b = be_sub.add_parser(
        "learning",
        help="World-Gymnast vs equal-budget baselines on the simulated station, R replicates "
        "(hours on CPU)",
    )
    from pipeline.bench import learning

    learning.add_arguments(b)
    b = be_sub.add_parser(
        "capabilities",
        help="what RL in the world model does that SFT cannot: distractor scenes, held-out "
        "paraphrases, language tasks, test-time training, on a learning-bench replicate",
    )
    from pipeline.bench import capabilities

    capabilities.add_arguments(b)
    b = be_sub.add_parser(
        "loop",
        help="N demo rounds in a fresh home: wall time and peak memory per stage",
        description="Runs `gymnast demo` in a temporary home (GYMNAST_PRESET picks the sizes, "
        "default tiny) and prints per-stage wall time and peak RSS.",
    )
    b.add_argument("--rounds", type=int, default=2)
    b.add_argument(
        "--preset",
        default=None,
        help="the rounds' RoundConfig preset (default: $GYMNAST_PRESET, else tiny); bench: the "
        "learning bench's sizes, hours per round on 2 CPU cores",
    )
    b.add_argument(
        "--stations",
        type=int,
        default=1,
        help="N >= 2: instead of rounds, time a round's collection and gate evaluation on 1 "
        "and on N simulated stations paced at the arm's 5 Hz (same episodes)",
    )
    b.add_argument("--json", type=Path, default=None, help="also write the figures here")
    b.add_argument("--keep", action="store_true", help="keep the temporary home afterwards")
    b.add_argument(
        "--postgres",
        default=None,
        metavar="URL",
        help="run on this PostgreSQL server (postgresql://user:password@host:port) in a fresh "
        "pair of databases, dropped afterwards unless --keep",
    )
    be.set_defaults(func=cmd_bench)
