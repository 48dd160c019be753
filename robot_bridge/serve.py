"""Command-line entry of the station (``gymnast station`` or ``python -m robot_bridge``).

Kept free of the training stack: a robot host needs numpy, pyzmq, msgpack and h5py only (plus
MuJoCo for the simulator or Interbotix for the real arm).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from robot_bridge.access import INSECURE_FLAG
from robot_bridge.backends.base import BACKENDS


def add_station_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="sim",
        choices=sorted(BACKENDS),
        help="robot backend: sim (MuJoCo WidowX), sim_gap (sim with a visual/physical gap), "
        "interbotix (the real arm), instant (answers at once; for benchmarks)",
    )
    p.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5555",
        help="ZMQ endpoint to bind; port * picks a free one (default %(default)s)",
    )
    p.add_argument(
        "--episodes-dir",
        type=Path,
        default=Path("station_data/episodes"),
        help="where episode HDF5 files are written (default %(default)s)",
    )
    p.add_argument(
        "--checkpoints-dir",
        type=Path,
        default=None,
        help="where uploaded policy checkpoints are kept (default: next to the episodes)",
    )
    p.add_argument("--station-id", default="station-0", help="recorded in every episode")
    p.add_argument(
        "--lease-timeout",
        type=float,
        default=2.0,
        help="seconds a lease holder may stay silent before the arm is held safe (default %(default)s)",
    )
    p.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="CURVE keys directory (from `gymnast station keys`); without it the station is unauthenticated",
    )
    p.add_argument(
        INSECURE_FLAG,
        dest="allow_unauthenticated_network",
        action="store_true",
        help="serve without --keys on a non-loopback address: anyone who reaches it can drive "
        "the arm (refused without this flag)",
    )
    p.add_argument(
        "--checkpoint-store-gb",
        type=float,
        default=128.0,
        help="cap on the uploaded checkpoints kept; least recently used are evicted (default %(default)s)",
    )
    p.add_argument(
        "--upload-ttl",
        type=float,
        default=900.0,
        help="seconds an unfinished upload may go without a chunk before it is dropped (default %(default)s)",
    )
    p.add_argument(
        "--backend-arg",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra backend constructor argument, e.g. --backend-arg height=480",
    )
    p.add_argument("--log-level", default="INFO")


def parse_backend_args(pairs: list[str]) -> dict:
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--backend-arg must look like KEY=VALUE, got {pair!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def run_station(args: argparse.Namespace) -> int:
    from robot_bridge.backends.base import make_backend
    from robot_bridge.station import Station, StationConfig

    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = StationConfig(
            bind=args.bind,
            episodes_dir=args.episodes_dir,
            checkpoints_dir=args.checkpoints_dir,
            station_id=args.station_id,
            lease_timeout_s=args.lease_timeout,
            keys_dir=args.keys,
            allow_unauthenticated_network=args.allow_unauthenticated_network,
            checkpoint_store_bytes=int(args.checkpoint_store_gb * 1024**3),
            upload_ttl_s=args.upload_ttl,
        )
    except ValueError as e:
        raise SystemExit(f"station: {e}") from None
    try:
        backend = make_backend(args.backend, **parse_backend_args(args.backend_arg))
    except ModuleNotFoundError as e:  # an optional extra this host did not install
        raise SystemExit(f"station: {e}") from None
    try:
        station = Station(backend, config)
    except RuntimeError as e:  # its folders are another station's
        backend.close()
        raise SystemExit(f"station: {e}") from None
    signal.signal(signal.SIGTERM, lambda *_: station.stop())
    signal.signal(signal.SIGINT, lambda *_: station.stop())

    def ready(endpoint: str) -> None:
        # launchers read this line to learn the bound endpoint
        print(f"STATION READY {endpoint}", flush=True)

    try:
        station.serve(ready=ready)
    finally:
        backend.close()
    return 0


def run_keys(args: argparse.Namespace) -> int:
    from robot_bridge.auth import create_keys

    paths = create_keys(args.dir)
    print(f"station keypair:  {paths['server_secret']} (stays on the robot host)")
    print(f"client keypair:   {paths['client_secret']} (copy to the machine running the pipeline)")
    print(
        f"operator keypair: {paths['operator_secret']} (clears e-stops; keep it with the operator)"
    )
    print(f"server public:    {paths['server_public']} (clients need it too)")
    print(f"authorized keys:  {Path(args.dir) / 'authorized_clients'}")
    return 0


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="gymnast station", description="Run a robot station.")
    add_station_arguments(p)
    sub = p.add_subparsers(dest="station_command")
    keys = sub.add_parser("keys", help="make CURVE keys for an authenticated station")
    keys.add_argument("dir", type=Path, help="directory to write the keys into")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_keys(args) if args.station_command == "keys" else run_station(args)
