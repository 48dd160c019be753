"""Start a station in a subprocess and learn its endpoint: used by tests, benchmarks and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path


def _die_with_parent(then=None):
    """On Linux the station gets SIGTERM when its parent dies (a killed benchmark or demo must not
    leave an orphaned station holding a port and a CPU); ``then`` runs after, in the child."""
    if not sys.platform.startswith("linux"):
        return then

    def preexec() -> None:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if then is not None:
            then()

    return preexec


class StationProcess:
    """A station running as ``python -m robot_bridge`` in its own process."""

    def __init__(
        self,
        backend: str = "sim",
        *,
        episodes_dir: str | Path,
        bind: str = "tcp://127.0.0.1:*",
        lease_timeout_s: float = 2.0,
        keys_dir: str | Path | None = None,
        station_id: str = "station-0",
        backend_args: dict | None = None,
        extra_env: dict | None = None,
        startup_timeout_s: float = 60.0,
        preexec_fn=None,
        station_args: list[str] | None = None,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "robot_bridge",
            "--backend",
            backend,
            "--bind",
            bind,
            "--episodes-dir",
            str(episodes_dir),
            "--lease-timeout",
            str(lease_timeout_s),
            "--station-id",
            station_id,
        ]
        if keys_dir is not None:
            cmd += ["--keys", str(keys_dir)]
        for k, v in (backend_args or {}).items():
            cmd += ["--backend-arg", f"{k}={v}"]
        cmd += station_args or []
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), **(extra_env or {})}
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=_die_with_parent(preexec_fn),
        )
        self.log: deque[str] = deque(maxlen=400)
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        self.endpoint = self._wait_ready(startup_timeout_s)
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()

    def _drain(self, stream) -> None:
        for line in stream:
            self.log.append(line.rstrip())

    def _wait_ready(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("STATION READY "):
                return line.split()[-1]
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        raise RuntimeError("station did not start:\n" + "\n".join(self.log))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> StationProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
