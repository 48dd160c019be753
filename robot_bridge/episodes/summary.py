"""Per-task counts, success rates and terminations over a listing of episode files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py

from robot_bridge.episodes.schema import CRASHED_SUFFIX, UNFINISHED, _is_incomplete_name


def summarize(paths: list[str | Path]) -> dict:
    """Counts per task, success rates (over labelled episodes) and terminations, for a listing."""
    per_task: dict[str, Counter] = {}
    terminations: Counter = Counter()
    unreadable = []
    steps = 0
    for p in paths:
        try:
            with h5py.File(p, "r") as f:
                meta = json.loads(f.attrs["meta"])
                labels = json.loads(f.attrs["labels"]) if "labels" in f.attrs else {}
                complete = bool(f.attrs["complete"]) and not _is_incomplete_name(Path(p))
                steps += int(f.attrs["num_actions"])
        except (OSError, KeyError, ValueError) as e:
            unreadable.append(f"{p}: {e}")
            continue
        termination = labels.get("termination") or (
            "station_crashed" if str(p).endswith(CRASHED_SUFFIX) else UNFINISHED
        )
        success = labels.get("success")
        c = per_task.setdefault(meta["task"], Counter())
        c["episodes"] += 1
        c["complete"] += complete
        c["success" if success else "failure" if success is False else "unlabelled"] += 1
        terminations[termination] += 1
    tasks = {
        task: {
            **{k: c[k] for k in ("episodes", "complete", "success", "failure", "unlabelled")},
            "success_rate": c["success"] / (c["success"] + c["failure"])
            if c["success"] + c["failure"]
            else None,
        }
        for task, c in sorted(per_task.items())
    }
    return {
        "episodes": sum(c["episodes"] for c in per_task.values()),
        "steps": steps,
        "tasks": tasks,
        "terminations": dict(sorted(terminations.items())),
        "unreadable": unreadable,
    }


def format_summary(summary: dict) -> str:
    lines = [f"{summary['episodes']} episodes, {summary['steps']} steps"]
    for task, s in summary["tasks"].items():
        rate = "n/a" if s["success_rate"] is None else f"{s['success_rate']:.0%}"
        lines.append(
            f"  {task:<20} {s['episodes']:>4} episodes ({s['complete']} complete)  "
            f"success {s['success']}/{s['success'] + s['failure']} = {rate}  unlabelled {s['unlabelled']}"
        )
    lines.append(
        "  terminations: " + ", ".join(f"{k}={v}" for k, v in summary["terminations"].items())
    )
    lines += [f"  unreadable: {u}" for u in summary["unreadable"]]
    return "\n".join(lines)
