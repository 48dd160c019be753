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
    rounds: int = 2,
    json_path: Path | None = None,
    keep: bool = False,
    postgres: str | None = None,
    preset: str | None = None,
) -> int:
    """The benchmark; with ``postgres`` (a server URL) in a fresh pair of databases named after
    the temporary home, since a fresh home needs a Dagster record that has run nothing yet.
    ``preset``: the rounds' ``RoundConfig`` preset (default: ``GYMNAST_PRESET``, else tiny)."""
    from pipeline import demo

    if preset:
        from pipeline.round.config import RoundConfig

        RoundConfig.from_preset(preset)  # an unknown name fails here, listing the valid ones
        os.environ["GYMNAST_PRESET"] = preset  # the step processes read it

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
    gate = gate_rows(summaries)
    print("\n" + format_gate(gate))
    data["gate"] = gate
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


def _overall(evaluation: dict) -> dict:
    """All tasks of an ``Evaluation.to_dict()``: successes, labelled runs, 95% interval."""
    from robot_bridge.dispatch import wilson_interval

    per_task = evaluation.get("per_task", {}).values()
    k, n = sum(t["successes"] for t in per_task), sum(t["labelled"] for t in per_task)
    return {"successes": k, "labelled": n, "ci95": list(wilson_interval(k, n))}


def gate_rows(summaries) -> list[dict]:
    """Per round: champion and challenger on the round's fresh gate block, the gate's test and
    decision, and whether the champion's success fell beyond the 95% intervals from the round
    before (each round gates on seeds of its own, so the intervals carry the draw's noise)."""
    from pipeline.round.statistics import intervals_beyond

    rows, before = [], None
    for s in summaries:
        champion, challenger = _overall(s.champion), _overall(s.challenger)
        fell = before is not None and intervals_beyond(champion["ci95"], before["ci95"]) < 0
        rows.append(
            {
                "round": s.round,
                "champion": champion,
                "challenger": challenger,
                "test": s.test,
                "p_value": s.p_value,
                "promoted": s.promoted,
                "champion_fell": fell,
            }
        )
        before = challenger if s.promoted else champion  # next round's champion, here
    return rows


def format_gate(rows: list[dict]) -> str:
    def cell(r: dict) -> str:
        if not r["labelled"]:
            return "-"
        lo, hi = r["ci95"]
        return f"{r['successes']}/{r['labelled']} [{100 * lo:.0f}, {100 * hi:.0f}]%"

    lines = [
        "| round | champion (gate) | challenger (gate) | test | p | promoted |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3g}"
        lines.append(
            f"| {r['round']} | {cell(r['champion'])} | {cell(r['challenger'])} | "
            f"{r['test'] or '-'} | {p} | {r['promoted']} |"
        )
    fell = [r["round"] for r in rows if r["champion_fell"]]
    lines.append(
        "champion's success fell beyond the 95% intervals from the round before: "
        + (", ".join(fell) if fell else "never")
    )
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"
