"""The learning bench's report: per replicate and over all of them, as text, markdown and JSON."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

import numpy as np

from pipeline.bench.budget import CATEGORIES
from pipeline.round.statistics import format_verdict, intervals_beyond, target_verdict
from robot_bridge.dispatch import wilson_interval


def beyond_intervals(sft: dict, rl: dict) -> int:
    """+1 when ``rl``'s 95% interval lies wholly above ``sft``'s, -1 wholly below, else 0."""
    return intervals_beyond(rl["ci95"], sft["ci95"])


def format_report(r: dict) -> str:
    """One replicate's table: every arm's real success with its 95% interval, the main arm
    against SFT, imagined success; then the verdict, budgets and the models' figures."""
    names = list(r["real"])  # SFT, the baselines, then World-Gymnast (after each Dyna iteration)
    last = r.get("main_arm", names[-1])
    lines = [
        "| task | "
        + " | ".join(f"{n} real" for n in names)
        + f" | {last} - SFT | beyond 95% CIs | episodes | "
        + " | ".join(f"{n} imagined" for n in names)
        + " |",
        "|---|" + "---|" * (2 * len(names) + 3),
    ]
    verdicts = {}
    for task, s in r["real"]["SFT"]["per_task"].items():
        q = r["real"][last]["per_task"][task]
        verdicts[task] = beyond_intervals(s, q)
        lines.append(
            f"| {task} | "
            + " | ".join(_ci(r["real"][n]["per_task"][task]) for n in names)
            + f" | {100 * (q['success_rate'] - s['success_rate']):+.0f} | "
            + {1: "better", -1: "worse", 0: "no"}[verdicts[task]]
            + f" | {q['labelled']} | "
            + " | ".join(f"{100 * r['imagined'][n].get(task, float('nan')):.0f}%" for n in names)
            + " |"
        )
    better = [t for t, v in verdicts.items() if v > 0]
    lines += [
        "",
        f"{last} beats SFT beyond the 95% intervals on {len(better)} of {len(verdicts)} tasks"
        + (f" ({', '.join(better)})" if better else ""),
        *([format_verdict(r["verdict"])] if "verdict" in r else []),
        "world model open-loop on held-out real episodes, worst step's PSNR lead over "
        f"repeating the first frame: {r['world_model'].get('rollout_psnr_over_copy_first_min_db', float('nan')):+.1f} dB "
        f"over {r['world_model'].get('rollout_horizon', float('nan')):.0f} steps (target >= +3)",
        f"judge held-out F1: {r['judge'].get('heldout_f1', float('nan')):.3f} over "
        f"{_count(r['judge'], 'tp', 'fn')} successes and {_count(r['judge'], 'fp', 'tn')} failures  "
        f"(precision {r['judge'].get('heldout_precision', float('nan')):.3f}, recall {r['judge'].get('heldout_recall', float('nan')):.3f})",
        "judge on imagined replays of real episodes vs their real outcome: "
        + _prf(r["judge_on_imagined"]),
        format_agreement(r["agreement"]) if "agreement" in r else "",
        *(
            [
                "with the checks' unselected snapshots (real: their check episodes): "
                + format_agreement(r["agreement_with_snapshots"])
            ]
            if "agreement_with_snapshots" in r
            else []
        ),
        f"imagined frames/s (batch 8): {r['imagined_fps_b8']:.1f}",
        f"GRPO seconds/step: {r['grpo']['seconds_per_step']:.1f}",
        f"GRPO horizon: {r.get('grpo_horizon_chunks', '?')} policy calls",
        *(
            f"{k.replace('_', ' ')} (real successes per task on check seeds; chosen "
            f"{v['chosen']}): {v['candidates']}"
            for k, v in r.items()
            if k.endswith("snapshot_check")
        ),
        *(
            f"{k.removesuffix('_kept')} keeps the {v['leg']} leg's {v['snapshot']} "
            f"({v['check_successes']} check successes, the most of every leg's)"
            for k, v in r.items()
            if k.endswith("_kept")
        ),
        *_budget_lines(r),
        f"peak RSS: {r['peak_rss_gb']:.2f} GB",
        "stage wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in r["timings_s"].items()),
        "reused from an earlier run (same settings): " + (", ".join(r["reused_stages"]) or "none"),
    ]
    return "\n".join(lines)


def agreement_points(report: dict) -> list[tuple[str, float, float]]:
    """(task, imagined success, real success) of every (policy, task) one replicate evaluated;
    a policy two arms share (a Dyna leg that kept an earlier leg's) counts once."""
    real, seen = report.get("real", {}), set()
    points = []
    for arm, per_task in report.get("imagined", {}).items():
        sha = real.get(arm, {}).get("checkpoint_sha256", arm)
        if sha in seen:
            continue
        seen.add(sha)
        points += [
            (task, float(x), float(real[arm]["per_task"][task]["success_rate"]))
            for task, x in per_task.items()
            if task in real.get(arm, {}).get("per_task", {})
        ]
    return points


def snapshot_points(snapshots: dict[str, dict]) -> list[tuple[str, float, float]]:
    """(task, imagined success, real success on the check episodes) of every unselected
    snapshot (``imagined_snapshots`` of a replicate's report)."""
    return [
        (task, float(x), float(s["real"][task]))
        for s in snapshots.values()
        for task, x in s["imagined"].items()
        if task in s["real"]
    ]


def _pearson(xs: list[float], ys: list[float]) -> float:
    """r, or NaN with fewer than 3 points or no spread on either side (r is undefined there)."""
    if len(xs) < 3 or np.std(xs) == 0 or np.std(ys) == 0:
        return float("nan")
    return float(np.corrcoef(xs, ys)[0, 1])


def agreement(points: list[tuple[str, float, float]]) -> dict:
    """Does the world model rank policies as the arm does? Pearson r between imagined and real
    success within each task (over the policies evaluated on it: a pooled r can be carried by
    one task whose level differs from the others') and pooled over every point, with the number
    of points behind each figure."""
    per_task = {}
    for task in dict.fromkeys(t for t, _, _ in points):
        xs = [x for t, x, _ in points if t == task]
        ys = [y for t, _, y in points if t == task]
        per_task[task] = {"r": _pearson(xs, ys), "points": len(xs)}
    xs, ys = [x for _, x, _ in points], [y for _, _, y in points]
    return {"per_task": per_task, "pooled": {"r": _pearson(xs, ys), "points": len(xs)}}


def format_agreement(a: dict) -> str:
    cells = [f"{t} {v['r']:+.2f} ({v['points']})" for t, v in a["per_task"].items()]
    return (
        "imagined vs real success, Pearson r (points) within each task: "
        + ", ".join(cells)
        + f"; pooled {a['pooled']['r']:+.2f} ({a['pooled']['points']})"
    )


def _count(judge: dict, *cells: str) -> str:
    """Held-out positives (tp + fn) or negatives (fp + tn) of the judge's confusion counts."""
    values = [judge.get(f"heldout_{c}") for c in cells]
    return "?" if any(v is None for v in values) else f"{sum(values):.0f}"


def _prf(m: dict) -> str:
    f = {k: "n/a" if m.get(k) is None else f"{m[k]:.3f}" for k in ("f1", "precision", "recall")}
    return (
        f"F1 {f['f1']} (precision {f['precision']}, recall {f['recall']}; "
        f"tp {m['tp']}, fp {m['fp']}, fn {m['fn']}, tn {m['tn']})"
    )


def _ci(t: dict) -> str:
    lo, hi = wilson_interval(round(t["success_rate"] * t["labelled"]), t["labelled"])
    return f"{100 * t['success_rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def _budget_lines(r: dict) -> list[str]:
    if "budget" not in r:
        return []
    out = ["real episodes used (" + " + ".join(CATEGORIES) + " = total):"]
    for arm, b in r["budget"].items():
        out.append(
            f"  {arm}: " + " + ".join(str(b.get(c, 0)) for c in CATEGORIES) + f" = {b['total']}"
        )
    claims = r.get("budget_claims", {})
    out += [f"  {'ok' if ok else 'NOT MET'}: {claim}" for claim, ok in claims.items()]
    return out


# --- over all replicates --------------------------------------------------------------------------


def summarize(cfg, settings: dict, reports: list[dict], outcomes: dict) -> dict:
    """The bench's report over every replicate: settings, commit and machine, each arm's success
    per task per replicate and pooled (95% Wilson intervals), budgets, and the verdict."""
    main = reports[0]["main_arm"]
    tasks = list(cfg.tasks)
    per_rep = {
        arm: [{t: _rate(rep, t) for t in tasks} for rep in reps] for arm, reps in outcomes.items()
    }
    pooled = {arm: {t: _pooled(rates, t) for t in tasks} for arm, rates in per_rep.items()}
    return {
        "commit": _commit(),
        "machine": _machine(),
        "config": cfg.to_dict(),
        "settings": settings,
        "tasks": tasks,
        "arms": list(outcomes),
        "main_arm": main,
        "per_replicate": per_rep,
        "pooled": pooled,
        "budget": [rep.get("budget", {}) for rep in reports],
        "budget_claims": [rep.get("budget_claims", {}) for rep in reports],
        "verdict": target_verdict(outcomes, tasks, main),
        # every replicate's (arm, task) points: within a task, R x arms policies
        "agreement": agreement([p for rep in reports for p in agreement_points(rep)]),
        "agreement_with_snapshots": agreement(
            [
                p
                for rep in reports
                for p in agreement_points(rep) + snapshot_points(rep.get("imagined_snapshots", {}))
            ]
        ),
        "replicates": reports,
    }


def _rate(outcomes: dict, task: str) -> dict:
    mine = [v for (t, _), v in outcomes.items() if t == task]
    k, n = sum(mine), len(mine)
    return {"successes": k, "labelled": n, "ci95": list(wilson_interval(k, n))}


def _pooled(rates: list[dict], task: str) -> dict:
    k = sum(r[task]["successes"] for r in rates)
    n = sum(r[task]["labelled"] for r in rates)
    return {"successes": k, "labelled": n, "ci95": list(wilson_interval(k, n))}


def _cell(r: dict) -> str:
    if not r["labelled"]:
        return "-"
    lo, hi = r["ci95"]
    rate = r["successes"] / r["labelled"]
    return f"{100 * rate:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] ({r['successes']}/{r['labelled']})"


def markdown_summary(s: dict) -> str:
    """The report as markdown: success per task and arm (each replicate, pooled), the real
    budget of every arm in every replicate, and the verdict exactly as the bench printed it."""
    reps = len(s["replicates"])
    # replicates run apart and pooled keep their own indices (``pipeline.bench.results``)
    indices = [rep.get("replicate", i) for i, rep in enumerate(s["replicates"])]
    head = "| task | arm | " + " | ".join(f"replicate {r}" for r in indices) + " | pooled |"
    lines = [
        f"commit {s['commit']}; {s['machine']['cpu']} ({s['machine']['cores']} cores); "
        f"evaluation range {s['settings']['eval_range']}; {reps} replicate(s)",
        "",
        head,
        "|---|---|" + "---|" * (reps + 1),
    ]
    for t in s["tasks"]:
        for arm in s["arms"]:
            cells = [_cell(rep[t]) for rep in s["per_replicate"][arm]]
            lines.append(
                f"| {t} | {arm} | " + " | ".join(cells) + f" | {_cell(s['pooled'][arm][t])} |"
            )
    lines += ["", "| replicate | arm | " + " | ".join(CATEGORIES) + " | total |"]
    lines.append("|---|---|" + "---|" * (len(CATEGORIES) + 1))
    for r, budget in zip(indices, s["budget"], strict=True):
        for arm, b in budget.items():
            lines.append(
                f"| {r} | {arm} | "
                + " | ".join(str(b.get(c, 0)) for c in CATEGORIES)
                + f" | {b['total']} |"
            )
    if "agreement" in s:
        lines += ["", format_agreement(s["agreement"])]
    if "agreement_with_snapshots" in s:
        lines += [
            "",
            "with the checks' unselected snapshots (real: their check episodes): "
            + format_agreement(s["agreement_with_snapshots"]),
        ]
    lines += ["", "```", format_verdict(s["verdict"]), "```"]
    return "\n".join(lines) + "\n"


def write_summary(workdir: Path, s: dict) -> dict[str, Path]:
    """``bench_learning.json``, ``.md`` and ``.png`` in ``workdir``; prints the markdown."""
    from pipeline.charts import plot_arms_per_task

    out = {
        "json": Path(workdir) / "bench_learning.json",
        "markdown": Path(workdir) / "bench_learning.md",
        "figure": Path(workdir) / "bench_learning.png",
    }
    text = markdown_summary(s)
    out["json"].write_text(json.dumps(s, indent=2, default=str))
    out["markdown"].write_text(text)
    plot_arms_per_task(s["per_replicate"], s["pooled"], s["tasks"], out["figure"])
    print(text, flush=True)
    print(f"report: {out['json']}, {out['markdown']}, {out['figure']}", flush=True)
    run_id = log_to_mlflow(out, s)
    print(f"MLflow run {run_id} (experiment {BENCH_EXPERIMENT})", flush=True)
    return out


BENCH_EXPERIMENT = "gymnast-bench"


def log_to_mlflow(files: dict[str, Path], s: dict, tracking_uri: str | None = None) -> str:
    """The report as one MLflow run in experiment ``gymnast-bench``: the commit, machine and
    verdict as tags, the settings as params, each arm's pooled success per task as metrics, the
    JSON, markdown and figure as artifacts. ``tracking_uri``: MLFLOW_TRACKING_URI if set, else a
    SQLite store beside the report (``mlflow.db``, artifacts in ``mlruns/``). Returns the run id."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import flatten_params

    folder = Path(files["json"]).parent.resolve()
    uri = (
        tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder / 'mlflow.db'}"
    )
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(BENCH_EXPERIMENT)
    if exp is not None:
        exp_id = exp.experiment_id
    else:
        location = None if uri.startswith("http") else (folder / "mlruns").as_uri()
        exp_id = client.create_experiment(BENCH_EXPERIMENT, artifact_location=location)
    verdict = s["verdict"]
    run = client.create_run(
        exp_id,
        run_name=f"bench learning, {len(s['replicates'])} replicate(s)",
        tags={
            "gymnast.bench": "learning",
            "commit": s["commit"],
            "machine": json.dumps(s["machine"]),
            "eval_range": str(s["settings"].get("eval_range")),
            "main_arm": s["main_arm"],
            "verdict.met": str(verdict["met"]),
        },
    )
    run_id = run.info.run_id
    params = flatten_params({"config": s["config"], "settings": s["settings"]})
    for key, value in list(params.items())[:500]:  # MLflow's per-run bound is far above ours
        client.log_param(run_id, key[:250], str(value)[:500])
    for arm, per_task in s["pooled"].items():
        for task, r in per_task.items():
            if r["labelled"]:
                name = f"success/{re.sub(r'[^A-Za-z0-9_./ -]', '_', arm)}/{task}"
                client.log_metric(run_id, name, r["successes"] / r["labelled"])
    for path in files.values():
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+uncommitted" if dirty else "")


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform()}
