"""The demo's console: progress bars and what the command prints itself; the rest to a log file.

``routed_to_log(path)`` points this process's file descriptors 1 and 2 at the log (stdout) and at
a pipe (stderr) that a thread reads; every process started meanwhile inherits them (Dagster's step
processes, the station, the MLflow server), so their output takes the same route whatever wrote
it: Python, a library's logger or C code (the SVT-AV1 encoder's banner).

On the pipe, a progress bar's frames (text after a carriage return, ``\\r``, as tqdm writes them,
and the newline that ends a bar) go to the console; every other line (library warnings, Dagster's
log lines, MLflow's run links, encoder banners) goes to the log. ``print`` in this process keeps
writing to the console: ``sys.stdout`` is re-opened on the console for the duration.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

_TOKEN = re.compile(r"\r[^\r\n]*|\n|[^\r\n]+")


class StderrRouter:
    """Splits a stream of stderr text: progress-bar frames to ``console``, lines to ``log``.

    Writes of one process arrive whole (a pipe keeps writes of up to 4 KiB together), so a token
    that starts with ``\\r`` is a bar frame, and text that starts a line is a log line."""

    def __init__(self, console: TextIO, log: TextIO) -> None:
        self.console, self.log = console, log
        self._in_line = False  # inside a log line whose newline has not come yet
        self._in_bar = False  # the console's cursor is on a bar: its newline ends it

    def feed(self, text: str) -> None:
        for m in _TOKEN.finditer(text):
            t = m.group()
            if t.startswith("\r") and not self._in_line:
                self.console.write(t)
                self._in_bar = True
            elif t == "\n":
                if self._in_line:
                    self.log.write(t)
                    self._in_line = False
                elif self._in_bar:
                    self.console.write(t)
                    self._in_bar = False
                else:
                    self.log.write(t)
            else:
                self.log.write(t)
                self._in_line = True
        self.console.flush()
        self.log.flush()


@contextlib.contextmanager
def routed_to_log(log_path: Path) -> Iterator[Path]:
    """Inside: the console shows progress bars and this process's ``print``s; the rest goes to
    ``log_path`` (appended). Restores the descriptors on exit."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    log = open(log_path, "a", buffering=1, errors="replace")  # noqa: SIM115 - closed below
    saved_out, saved_err = os.dup(1), os.dup(2)
    console_out = open(os.dup(saved_out), "w", buffering=1, errors="replace")  # noqa: SIM115
    console_err = open(os.dup(saved_err), "w", buffering=1, errors="replace")  # noqa: SIM115
    read_end, write_end = os.pipe()
    router = StderrRouter(console_err, log)

    def pump() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with contextlib.suppress(ValueError, OSError):  # files closed under a straggler
            while chunk := os.read(read_end, 65536):
                router.feed(decoder.decode(chunk))
            router.feed(decoder.decode(b"", final=True))

    reader = threading.Thread(target=pump, name="gymnast-console", daemon=True)
    reader.start()
    os.dup2(log.fileno(), 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    old_stdout = sys.stdout
    sys.stdout = console_out
    try:
        yield log_path
    finally:
        sys.stdout = old_stdout
        for stream in (console_out, sys.stderr, old_stdout):
            with contextlib.suppress(ValueError, OSError):
                stream.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)  # the pipe's last write end here closes: the reader sees EOF
        reader.join(timeout=5)  # a straggler child may still hold it; never hang on that
        for fd in (saved_out, saved_err):
            os.close(fd)
        if not reader.is_alive():
            os.close(read_end)
        for f in (console_out, console_err, log):
            with contextlib.suppress(OSError):
                f.close()
