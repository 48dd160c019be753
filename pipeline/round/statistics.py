"""The round's statistics: the promotion gate and the learning bench's verdict.

Both compare policies run on the same (task, seed) initial states, so outcomes are paired and the
tests are exact: the one-sided McNemar test on the discordant pairs (a binomial tail at 1/2).

**The promotion gate** (``decide_promotion``): promote a challenger only if it beats the champion
on the round's gate seeds with confidence.

**The learning bench's verdict**, fixed in code before any run reads it.

- **Per replicate and task**, an arm *beats* a baseline when its 95% Wilson interval lies wholly
  above the baseline's (``beyond``: +1 above, -1 below, 0 overlapping).
- **Pooled per task**, across replicates: the one-sided exact McNemar test on the discordant pairs
  summed over replicates. Pairs are formed only within a replicate (stratified by replicate), and
  under H0 each discordant pair is a fair coin whatever its stratum, so the summed counts give an
  exact test.
- **The target** (issue 17): the main arm beats each ``interval_baselines`` arm beyond the
  intervals on at least ``min_tasks`` tasks in *every* replicate, and beats each
  ``pooled_baselines`` arm on at least ``min_tasks`` tasks pooled. ``target_verdict`` fixes the
  arms: SFT, SFT+select and Iter-SFT per replicate, Sim-RL pooled, 2 tasks.

``verdict`` returns the tables and a one-line ``met`` that the bench prints; nothing else may
state a result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pipeline.round.records import Evaluation, PromotionDecision
from robot_bridge.dispatch import wilson_interval


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2); 1.0 when n == 0."""
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def decide_promotion(
    champion: Evaluation, challenger: Evaluation, alpha: float = 0.05
) -> PromotionDecision:
    """Promote only if the challenger is better with confidence: one-sided exact McNemar test.

    Both policies run the same (task, seed) initial states, so outcomes are paired; the test uses
    only the discordant pairs (b: champion succeeded and challenger failed; c: the reverse) and
    asks whether c is larger than chance under H0: P(c) = P(b) = 1/2.
    """
    pairs = sorted(set(champion.outcomes) & set(challenger.outcomes))
    if not pairs:
        raise ValueError(
            "no paired (task, seed) outcomes between champion and challenger; cannot decide"
        )
    b = sum(champion.outcomes[k] and not challenger.outcomes[k] for k in pairs)
    c = sum(challenger.outcomes[k] and not champion.outcomes[k] for k in pairs)
    p_value = binomial_tail(c, b + c)
    champ_rate = sum(champion.outcomes[k] for k in pairs) / len(pairs)
    chall_rate = sum(challenger.outcomes[k] for k in pairs) / len(pairs)
    promote = c > b and p_value < alpha
    per_task = {}
    for task in sorted({k[0] for k in pairs}):
        ks = [k for k in pairs if k[0] == task]
        per_task[task] = {
            "n": len(ks),
            "champion": sum(champion.outcomes[k] for k in ks) / len(ks),
            "challenger": sum(challenger.outcomes[k] for k in ks) / len(ks),
        }
    reason = (
        f"challenger better on {c} paired episodes, worse on {b}; one-sided exact McNemar p={p_value:.4f} "
        f"{'<' if promote else '>='} alpha={alpha}"
        if b + c
        else "no discordant pairs: no evidence either way"
    )
    return PromotionDecision(
        promote,
        "one-sided exact McNemar (paired by task and seed)",
        p_value,
        champ_rate,
        chall_rate,
        {"champion_only": b, "challenger_only": c},
        per_task,
        reason,
    )


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
    p = binomial_tail(only_arm, n)
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


INTERVAL_ARMS = ("SFT", "SFT+select", "Iter-SFT")  # beaten beyond the intervals, every replicate
POOLED_ARMS = ("Sim-RL",)  # beaten pooled (stratified exact McNemar)
TARGET = (
    "the main arm beats SFT, SFT+select and Iter-SFT beyond the 95% intervals on >= {n} tasks "
    "in every replicate, and Sim-RL on >= {n} tasks pooled"
)


def target_verdict(
    outcomes: Mapping[str, Sequence[Outcomes]],
    tasks: Sequence[str],
    arm: str,
    min_tasks: int = 2,
    alpha: float = 0.05,
) -> dict:
    """Issue 17's target for ``arm`` against the baselines present in ``outcomes``; a baseline
    that did not run leaves the target not met (``missing_arms``). Adds the stretch goal: every
    task, and at least twice SFT's pooled success on the hardest task SFT solves at all."""
    interval = [b for b in INTERVAL_ARMS if b in outcomes]
    pooled = [b for b in POOLED_ARMS if b in outcomes]
    v = verdict(outcomes, tasks, arm, interval, pooled, min_tasks, alpha)
    missing = [b for b in (*INTERVAL_ARMS, *POOLED_ARMS) if b not in outcomes]
    all_tasks = verdict(outcomes, tasks, arm, interval, pooled, len(tasks), alpha)["met"]
    v.update(
        target=TARGET.format(n=min_tasks),
        missing_arms=missing,
        met=v["met"] and not missing,
        stretch={
            "all_tasks": all_tasks and not missing,
            "hardest_sft_task": _twice_sft(outcomes, tasks, arm),
        },
    )
    return v


def _twice_sft(outcomes, tasks, arm: str) -> dict | None:
    """The task with the lowest non-zero pooled SFT success, and whether ``arm`` has at least
    twice it pooled; None when SFT solved no task (or did not run)."""
    if "SFT" not in outcomes:
        return None

    def pooled(name: str, task: str) -> float:
        k = n = 0
        for rep in outcomes[name]:
            kk, nn, _ = task_rate(rep, task)
            k, n = k + kk, n + nn
        return k / n if n else 0.0

    solved = {t: pooled("SFT", t) for t in tasks if pooled("SFT", t) > 0}
    if not solved:
        return None
    task = min(solved, key=solved.get)
    mine = pooled(arm, task)
    return {"task": task, "sft": solved[task], "arm": mine, "met": mine >= 2 * solved[task]}


def format_verdict(v: dict) -> str:
    lines = [f"verdict for {v['arm']} over {v['replicates']} replicate(s):"]
    if "target" in v:
        lines.append(f"  target: {v['target']}")
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
    if v.get("missing_arms"):
        lines.append(f"  not run, so the target cannot be met: {', '.join(v['missing_arms'])}")
    lines.append(f"  TARGET {'MET' if v['met'] else 'NOT MET'}")
    stretch = v.get("stretch")
    if stretch:
        hard = stretch["hardest_sft_task"]
        lines.append(
            f"  stretch: all {len(v['pooled'].get('SFT', {})) or 'the'} tasks "
            f"{'met' if stretch['all_tasks'] else 'not met'}; "
            + (
                f"hardest task SFT solves ({hard['task']}, SFT {100 * hard['sft']:.0f}% pooled): "
                f"{100 * hard['arm']:.0f}%, {'at least' if hard['met'] else 'under'} 2x SFT"
                if hard
                else "SFT solves no task"
            )
        )
    return "\n".join(lines)
