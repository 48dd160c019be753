"""The learning bench's verdict, fixed in code before any run reads it.

Every arm of a replicate runs the same (task, seed) initial states, so outcomes are paired.

- **Per replicate and task**, an arm *beats* a baseline when its 95% Wilson interval lies wholly
  above the baseline's (``beyond``: +1 above, -1 below, 0 overlapping).
- **Pooled per task**, across replicates: the one-sided exact McNemar test on the discordant pairs
  summed over replicates. Pairs are formed only within a replicate (stratified by replicate), and
  under H0 each discordant pair is a fair coin whatever its stratum, so the summed counts give an
  exact test.
- **The target** (issue 17): the main arm beats each ``interval_baselines`` arm beyond the
  intervals on at least ``min_tasks`` tasks in *every* replicate, and beats each
  ``pooled_baselines`` arm on at least ``min_tasks`` tasks pooled.

``verdict`` returns the tables and a one-line ``met`` that the bench prints; nothing else may
state a result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from robot_bridge.dispatch import wilson_interval

Outcomes = Mapping[tuple[str, int], bool]  # (task, seed) -> success


def task_rate(outcomes: Outcomes, task: str) -> tuple[int, int, tuple[float, float]]:
    """(successes, episodes, 95% Wilson interval) of one task."""
    mine = [v for (t, _), v in outcomes.items() if t == task]
    k, n = sum(mine), len(mine)
    return k, n, wilson_interval(k, n)


def beyond(arm: Outcomes, baseline: Outcomes, task: str) -> int:
    """+1 when ``arm``'s interval is wholly above ``baseline``'s on ``task``, -1 below, else 0."""
    *_, a = task_rate(arm, task)
    *_, b = task_rate(baseline, task)
    if math.isnan(a[0]) or math.isnan(b[0]):
        raise ValueError(f"no episodes of {task!r} for one of the arms")
    return intervals_beyond(a, b)


def intervals_beyond(arm_ci: Sequence[float], baseline_ci: Sequence[float]) -> int:
    """+1 when the first interval lies wholly above the second, -1 wholly below, else 0."""
    (a_lo, a_hi), (b_lo, b_hi) = arm_ci, baseline_ci
    return 1 if a_lo > b_hi else -1 if a_hi < b_lo else 0


def pooled_mcnemar(
    arm: Sequence[Outcomes], baseline: Sequence[Outcomes], task: str, alpha: float = 0.05
) -> dict:
    """One-sided exact McNemar on ``task``'s discordant pairs summed over replicates."""
    if len(arm) != len(baseline) or not arm:
        raise ValueError(
            f"need the same replicates for both arms, got {len(arm)} and {len(baseline)}"
        )
    only_arm = only_base = pairs = 0
    for a, b in zip(arm, baseline, strict=True):
        keys = [k for k in a if k[0] == task]
        missing = [k for k in keys if k not in b] + [k for k in b if k[0] == task and k not in a]
        if missing:
            raise ValueError(f"outcomes not paired within a replicate: {missing[:3]}")
        pairs += len(keys)
        only_arm += sum(a[k] and not b[k] for k in keys)
        only_base += sum(b[k] and not a[k] for k in keys)
    n = only_arm + only_base
    p = sum(math.comb(n, i) for i in range(only_arm, n + 1)) / 2**n if n else 1.0
    return {
        "pairs": pairs,
        "arm_only": only_arm,
        "baseline_only": only_base,
        "p_value": p,
        "beats": only_arm > only_base and p < alpha,
    }


def verdict(
    outcomes: Mapping[str, Sequence[Outcomes]],
    tasks: Sequence[str],
    arm: str,
    interval_baselines: Sequence[str],
    pooled_baselines: Sequence[str] = (),
    min_tasks: int = 2,
    alpha: float = 0.05,
) -> dict:
    """``outcomes[name][r]``: arm ``name``'s outcomes in replicate ``r``."""
    for name in (arm, *interval_baselines, *pooled_baselines):
        if name not in outcomes:
            raise ValueError(f"no outcomes for arm {name!r}; have {sorted(outcomes)}")
    replicates = len(outcomes[arm])
    per_replicate = {
        base: [
            {t: beyond(outcomes[arm][r], outcomes[base][r], t) for t in tasks}
            for r in range(replicates)
        ]
        for base in interval_baselines
    }
    pooled = {
        base: {t: pooled_mcnemar(outcomes[arm], outcomes[base], t, alpha) for t in tasks}
        for base in (*interval_baselines, *pooled_baselines)
    }
    interval_ok = {
        base: [sum(v == 1 for v in rep.values()) >= min_tasks for rep in reps]
        for base, reps in per_replicate.items()
    }
    pooled_ok = {
        base: sum(pooled[base][t]["beats"] for t in tasks) >= min_tasks for base in pooled_baselines
    }
    met = all(all(v) for v in interval_ok.values()) and all(pooled_ok.values())
    return {
        "arm": arm,
        "replicates": replicates,
        "min_tasks": min_tasks,
        "per_replicate_beyond": per_replicate,
        "pooled": pooled,
        "interval_target_per_replicate": interval_ok,
        "pooled_target": pooled_ok,
        "met": met,
    }


def format_verdict(v: dict) -> str:
    lines = [f"verdict for {v['arm']} over {v['replicates']} replicate(s):"]
    for base, oks in v["interval_target_per_replicate"].items():
        wins = [sum(x == 1 for x in rep.values()) for rep in v["per_replicate_beyond"][base]]
        lines.append(
            f"  vs {base}: tasks beyond the 95% intervals per replicate {wins} "
            f"(needs >= {v['min_tasks']} in every one): {'met' if all(oks) else 'NOT met'}"
        )
    for base, ok in v["pooled_target"].items():
        won = [t for t, r in v["pooled"][base].items() if r["beats"]]
        lines.append(
            f"  vs {base}: tasks won pooled (stratified exact McNemar) {won} "
            f"(needs >= {v['min_tasks']}): {'met' if ok else 'NOT met'}"
        )
    lines.append(f"  TARGET {'MET' if v['met'] else 'NOT MET'}")
    return "\n".join(lines)
