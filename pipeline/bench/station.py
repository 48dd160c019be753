"""``gymnast bench bridge``: what the bridge itself costs per control step, on loopback.

Measures, in one run:
- step round-trip latency through our client and station (``instant`` backend, so the figure is
  the bridge's own cost and not the simulator's) at 256x256 and 640x480 RGB uint8, without and
  with HDF5 episode recording;
- the same payloads over a bare pyzmq REQ/REP socket with raw zero-copy frames (the floor);
- MuJoCo simulator steps per second with rendering, pinned to one core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"256x256": (256, 256), "640x480": (480, 640)}


def percentiles(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "calls_per_s": float(len(ms) / (ms.sum() / 1e3)),
        "n": len(ms),
    }


def bench_station(height: int, width: int, n: int, record: bool, workdir: Path) -> dict:
    from robot_bridge.client import StationClient
    from robot_bridge.launch import StationProcess

    action = np.zeros(7, dtype=np.float32)
    with StationProcess(
        "instant",
        episodes_dir=workdir / f"ep-{height}-{record}",
        backend_args={"height": height, "width": width},
        lease_timeout_s=10,
    ) as station:
        client = StationClient(station.endpoint, timeout_s=5.0)
        client.acquire_lease()
        client.reset("open_drawer", seed=0, record=record)
        samples = []
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            reply = client.step(action)
            dt = time.perf_counter() - t0
            if i >= n // 10:  # warm-up excluded
                samples.append(dt)
            if reply.done:
                client.reset("open_drawer", seed=i, record=record)
        client.release_lease()
        client.close()
    return percentiles(samples)


def _bare_server(endpoint_file: str, height: int, width: int) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    Path(endpoint_file).write_text(f"tcp://127.0.0.1:{port}")
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    state = np.zeros(7, dtype=np.float32)
    while True:
        msg = sock.recv_multipart(copy=False)
        if bytes(msg[0]) == b"quit":
            sock.send(b"bye")
            return
        sock.send_multipart([b"h", image, state], copy=False)


def bench_bare(height: int, width: int, n: int, workdir: Path) -> dict:
    import zmq

    endpoint_file = workdir / f"bare-{height}.txt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.bench.station",
            "--bare-server",
            str(endpoint_file),
            str(height),
            str(width),
        ]
    )
    try:
        while not endpoint_file.exists() or not endpoint_file.read_text():
            time.sleep(0.02)
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.connect(endpoint_file.read_text())
        action = np.zeros(7, dtype=np.float32)
        samples = []
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            sock.send_multipart([b"h", action], copy=False)
            frames = sock.recv_multipart(copy=False)
            np.frombuffer(frames[1].buffer, dtype=np.uint8).reshape(height, width, 3)
            dt = time.perf_counter() - t0
            if i >= n // 10:
                samples.append(dt)
        sock.send(b"quit")
        sock.recv()
        sock.close(linger=0)
    finally:
        proc.wait(timeout=10)
    return percentiles(samples)


def _sim_worker(n: int, backend: str) -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    from robot_bridge.backends.base import make_backend

    sim = make_backend(backend)
    rng = np.random.default_rng(0)
    sim.reset("eggplant_in_sink", seed=0)
    times = []
    for i in range(n):
        action = np.concatenate([rng.uniform(-0.02, 0.02, 6), [float(i % 20 < 10)]]).astype(
            np.float32
        )
        t0 = time.perf_counter()
        sim.step(action)
        times.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "steps_per_s": 1.0 / statistics.median(times),
                "median_step_ms": 1e3 * statistics.median(times),
            }
        )
    )


def bench_sim(n: int, backend: str = "sim") -> dict:
    env = {
        **os.environ,
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        "LP_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.bench.station", "--sim-worker", str(n), backend],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(n: int = 2000, sim_steps: int = 200, out_json: Path | None = None) -> dict:
    results: dict = {"machine": machine_description(), "bridge": {}, "sim": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, (h, w) in SIZES.items():
            results["bridge"][label] = {
                "bare_reqrep": bench_bare(h, w, n, work),
                "gymnast": bench_station(h, w, n, record=False, workdir=work),
                "gymnast_recording": bench_station(h, w, n // 2, record=True, workdir=work),
            }
    for backend in ("sim", "sim_gap"):
        results["sim"][backend] = bench_sim(sim_steps, backend)
    print(format_table(results))
    if out_json is not None:
        out_json.write_text(json.dumps(results, indent=2))
    return results


def machine_description() -> str:
    import platform

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def format_table(results: dict) -> str:
    lines = [
        f"machine: {results['machine']}",
        "",
        "| payload | path | p50 ms | p90 ms | p99 ms | calls/s | p99 / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, paths in results["bridge"].items():
        floor = paths["bare_reqrep"]["p99_ms"]
        for name, r in paths.items():
            lines.append(
                f"| {label} | {name} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                f"{r['calls_per_s']:.0f} | {r['p99_ms'] / floor:.2f}x |"
            )
    lines += [
        "",
        "| simulator | steps/s (1 core, rendering 256x256) | median step ms |",
        "|---|---|---|",
    ]
    for backend, r in results["sim"].items():
        lines.append(f"| {backend} | {r['steps_per_s']:.1f} | {r['median_step_ms']:.2f} |")
    return "\n".join(lines)


# --- station safety under load: e-stop latency during the largest upload, memory per message ---


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def bench_estop_under_upload(size_bytes: int, workdir: Path, every_s: float = 0.05) -> dict:
    """Upload a ``size_bytes`` checkpoint while a second client sends e-stop every ``every_s``;
    e-stop round trips per phase (chunks on the socket thread, verification on the worker)."""
    import threading

    from robot_bridge.checkpoints import build_manifest
    from robot_bridge.client import StationClient
    from robot_bridge.launch import StationProcess
    from robot_bridge.policies import write_policy_config

    ckpt = write_policy_config(workdir / "big", "random", seed=0)
    with open(ckpt / "model.safetensors", "wb") as f:
        f.truncate(size_bytes - 1024)  # sparse: the source costs nothing; the station writes it all
    sha, entries = build_manifest(ckpt)
    store_gb = str(size_bytes / 1024**3 + 0.01)
    with (
        StationProcess(
            "instant",
            episodes_dir=workdir / "ep",
            station_args=["--checkpoint-store-gb", store_gb],
        ) as station,
        StationClient(station.endpoint, timeout_s=60.0, name="uploader") as uploader,
        StationClient(station.endpoint, timeout_s=5.0, name="operator") as operator,
    ):
        phase, times = ["chunks"], {}

        def upload() -> None:
            t0 = time.perf_counter()
            uploader.call("upload_begin", {"sha256": sha, "files": [e.to_dict() for e in entries]})
            for e in entries:
                with open(ckpt / e.path, "rb") as f:
                    offset = 0
                    while data := f.read(4 * 1024 * 1024):
                        uploader.upload_chunk(sha, e.path, offset, data)
                        offset += len(data)
            times["chunks_s"], t1 = time.perf_counter() - t0, time.perf_counter()
            phase[0] = "verifying"
            while uploader.call("upload_commit", {"sha256": sha})[0]["state"] != "done":
                time.sleep(0.02)
            times["verify_s"] = time.perf_counter() - t1
            phase[0] = "done"

        thread = threading.Thread(target=upload)
        thread.start()
        samples: dict[str, list[float]] = {"chunks": [], "verifying": []}
        held: dict[str, list[float]] = {"chunks": [], "verifying": []}
        while thread.is_alive():
            now, t0 = phase[0], time.perf_counter()
            reply = operator.estop("benchmark")
            if now in samples and phase[0] == now:
                samples[now].append(time.perf_counter() - t0)
                held[now].append(reply["held_in_ms"] / 1e3)
            time.sleep(every_s)
        thread.join()
        operator.estop_clear()
    return {
        "upload_bytes": size_bytes,
        **times,
        **{k: {**percentiles(v), "max_ms": max(v) * 1e3} for k, v in samples.items() if v},
        "held_in": {k: {**percentiles(v), "max_ms": max(v) * 1e3} for k, v in held.items() if v},
    }


def bench_message_memory(workdir: Path) -> dict:
    """The station's peak RSS growth (MiB) for hostile messages, each on a fresh station."""
    import msgpack
    import zmq

    from robot_bridge import protocol
    from robot_bridge.launch import StationProcess

    mib = 1024 * 1024
    header = msgpack.packb({"v": 1, "id": "m", "op": "ping", "args": {}})
    cases = {
        "4 frames x 48 MiB (over the frame cap)": [b"\0" * (48 * mib)] * 4,
        "20 frames x 1 MiB (over the frame count)": [b"\0" * mib] * 20,
        "2 frames x 16 MiB (over the byte bound)": [b"\0" * (16 * mib)] * 2,
        "64 frames x 16 MiB (libzmq assembles before the station sees it)": [b"\0" * (16 * mib)]
        * 64,
    }
    out = {}
    for i, (label, frames) in enumerate(cases.items()):
        with StationProcess("instant", episodes_dir=workdir / f"mem{i}") as station:
            before = _peak_rss_mib(station.proc.pid)
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(station.endpoint)
            sock.send_multipart([header, *frames])
            answer = "no reply (disconnected)"
            if sock.poll(10000):
                head, _ = protocol.decode(sock.recv_multipart())
                answer = head.get("error", {}).get("code", "ok")
            sock.close()
            out[label] = {
                "reply": answer,
                "peak_rss_growth_mib": _peak_rss_mib(station.proc.pid) - before,
            }
    return out


def run_safety(upload_gb: float, out_json: Path | None = None) -> dict:
    from robot_bridge import protocol

    results: dict = {"machine": machine_description()}
    with tempfile.TemporaryDirectory() as tmp:
        results["estop_under_upload"] = bench_estop_under_upload(
            int(upload_gb * 1024**3), Path(tmp)
        )
    with tempfile.TemporaryDirectory() as tmp:
        results["message_memory"] = bench_message_memory(Path(tmp))
    results["bounds"] = {
        "max_message_frames": protocol.MAX_MESSAGE_FRAMES,
        "max_message_bytes": protocol.MAX_MESSAGE_BYTES,
        "transport_max_frame_bytes": protocol.TRANSPORT_MAX_FRAME_BYTES,
    }
    print(format_safety(results))
    if out_json is not None:
        out_json.write_text(json.dumps(results, indent=2))
    return results


def format_safety(results: dict) -> str:
    up = results["estop_under_upload"]
    lines = [
        f"machine: {results['machine']}",
        f"upload of {up['upload_bytes'] / 1024**3:.1f} GiB: chunks {up['chunks_s']:.1f} s, "
        f"verification {up['verify_s']:.1f} s",
        "",
        "| e-stop during | n | round trip p50 / p99 / max ms | arm held after p50 / max ms |",
        "|---|---|---|---|",
    ]
    for phase in ("chunks", "verifying"):
        if phase in up:
            r, h = up[phase], up["held_in"][phase]
            lines.append(
                f"| {phase} | {r['n']} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} "
                f"| {h['p50_ms']:.2f} / {h['max_ms']:.2f} |"
            )
    lines += ["", "| message | reply | station peak RSS growth MiB |", "|---|---|---|"]
    for label, r in results["message_memory"].items():
        lines.append(f"| {label} | {r['reply']} | {r['peak_rss_growth_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--bare-server":
        _bare_server(argv[1], int(argv[2]), int(argv[3]))
        return 0
    if argv and argv[0] == "--sim-worker":
        _sim_worker(int(argv[1]), argv[2])
        return 0
    p = argparse.ArgumentParser(prog="gymnast bench bridge")
    p.add_argument("-n", type=int, default=2000, help="timed round trips per configuration")
    p.add_argument("--sim-steps", type=int, default=200)
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args(argv)
    run(args.n, args.sim_steps, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
