"""``gymnast bench loop``: N demo rounds in a fresh home; wall time and peak memory per stage.

Wall time per stage is the Dagster step's duration (process start, resources, body); the body's
own time and the step process's peak resident memory (``ru_maxrss``) come from the metadata each
materialization carries. The whole-run peak is the largest child process (step processes, the
station, the MLflow server) as the kernel reports it after they exit.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main(
    rounds: int = 2, json_path: Path | None = None, keep: bool = False, postgres: str | None = None
) -> int:
    """The benchmark; with ``postgres`` (a server URL) in a fresh pair of databases named after
    the temporary home, since a fresh home needs a Dagster record that has run nothing yet."""
    from pipeline import demo

    home = Path(tempfile.mkdtemp(prefix="gymnast-bench-loop-"))
    databases = {}
    if postgres:
        databases = demo.postgres_databases(postgres, name=home.name.replace("-", "_"))
        os.environ.update(databases)
    try:
        return _run(rounds, home, json_path, keep)
    finally:
        if databases and not keep:
            demo.drop_postgres_databases(databases)


def _run(rounds: int, home: Path, json_path: Path | None, keep: bool) -> int:
    from pipeline import demo

    t0 = time.monotonic()
    try:
        # beside the home, not in it: the home is removed at the end unless kept
        log_path = home.with_name(f"{home.name}.log")
        summaries = demo.run_demo(
            rounds, home, summary_path=home / "bench_loop.json", log_path=log_path
        )
        total = time.monotonic() - t0
        data = json.loads((home / "bench_loop.json").read_text())
    except demo.RoundFailed as e:
        print(f"benchmark failed: {e} (home kept at {home})")
        return 1
    print(
        f"\n# bench loop: {rounds} round(s), total {total / 60:.1f} min, "
        f"peak RSS of any child process {data['peak_rss_mb_children']:.0f} MB"
    )
    print("| round | stage | wall s | in body s | peak RSS MB |\n|---|---|---|---|---|")
    for s in summaries:
        for stage, t in s.stages.items():
            print(
                f"| {s.round} | {stage} | {t.wall_s:.1f} | {_fmt(t.body_s)} | {_fmt(t.peak_rss_mb)} |"
            )
    for s in summaries:
        print(
            f"round {s.round}: world model {s.world_model_warm_start}; champion from {s.champion_from}; "
            f"promoted={s.promoted}"
        )
    if json_path:
        json_path.write_text(
            json.dumps({**data, "bench_total_wall_s": total}, indent=1, default=str)
        )
        print(f"wrote {json_path}")
    if keep:
        print(f"home kept at {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    return 0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"
