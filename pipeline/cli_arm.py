"""``gymnast collect``, ``dispatch`` and ``serve``: running a policy on a station over ZMQ, and
serving one to an AutoEval-style client (``pipeline.cli`` adds them to its parser)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.cli_common import gymnast_home, task_list
from robot_bridge.spec import AUTOEVAL_TASKS


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
        type=task_list,
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
        type=task_list,
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


def add_arm_commands(sub) -> None:
    """``collect``, ``dispatch`` and ``serve`` under the ``gymnast`` parser's subcommands."""
    _add_collect(sub)
    _add_dispatch(sub)
    _add_serve(sub)
