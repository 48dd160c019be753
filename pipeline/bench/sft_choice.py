"""How many demonstrations the bench's SFT starting point gets: chosen by a rule fixed here, in
code, before any run, never by hand.

Why a rule at all: World-Gymnast needs an SFT policy that leaves room to improve (an SFT that
solves every task leaves nothing to show) and that succeeds sometimes (GRPO reinforces successes
it samples; a policy that never succeeds gives every group the same reward). Where SFT lands for a
given number of demonstrations varies with the CPU and the draw, so a fixed count is a choice
made by whoever last looked at the results. Instead, each replicate trains SFT on each candidate
count (ascending, each a prefix of the same demonstrations), runs every candidate greedily on the
same check seeds (the snapshot checks' range, never the evaluation's), and keeps one by a rule:

- ``per_task`` (the default): the fewest demonstrations that leave room on at least
  ``MIN_ROOM_TASKS`` tasks, a task having room when its check success is in ``ROOM`` (it
  succeeds sometimes, and not most of the time); if none does, the most tasks with room, then
  the pooled rule's distance, then fewer demonstrations.
- ``pooled`` (the first rule, kept to reproduce runs made with it): the fewest demonstrations
  whose check success over all tasks lies in ``BAND``, else the closest. It was replaced because
  a pooled rate hides a task at its ceiling: the first final-range replicate's choice (8
  demonstrations, 15/32 = 47%) was 7/8 and 8/8 on the drawer tasks and 0/8 on both eggplant
  tasks, leaving no task with room (docs/experiments.md).

Every arm starts from the chosen count's demonstrations, and the check episodes count in every
arm's real budget (``sft_choice``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline import seeds
from pipeline.bench.common import BenchContext, episodes_of
from pipeline.round.records import ModelArtifact
from pipeline.round.stages import bootstrap_champion, collect_episodes

COUNTS = (4, 8, 16, 24)  # demonstrations per task, the candidates
BAND = (0.10, 0.50)  # the pooled rule: SFT's check success over all tasks
ROOM = (0.05, 0.60)  # the per-task rule: a task's check success that leaves room and gives signal
MIN_ROOM_TASKS = 2  # the target is judged on >= 2 tasks: SFT must leave room on as many
CHECK_EPISODES_PER_TASK = 12
RULES = ("per_task", "pooled")
# each rule with the candidates and check it was fixed with, so a run made with it is reproduced
RULE_COUNTS = {"per_task": COUNTS, "pooled": (8, 16, 24)}
RULE_CHECK_EPISODES = {"per_task": CHECK_EPISODES_PER_TASK, "pooled": 8}
# the check seeds: the top of the snapshot-check range, which snapshot checks never reach (a
# job runs at most 1000 episodes per task, and they start at the range's bottom)
CHECK_OFFSET = seeds.BENCH_CHECK + seeds.BENCH_RANGE - 1000


@dataclass(frozen=True)
class Candidate:
    demos_per_task: int
    successes: int
    episodes: int
    per_task: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # (k, n)

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def tasks_with_room(self, room: tuple[float, float] = ROOM) -> int:
        lo, hi = room
        return sum(1 for k, n in self.per_task.values() if n and lo <= k / n <= hi)


def band_distance(rate: float, band: tuple[float, float] = BAND) -> float:
    """0 inside the band, else how far outside it."""
    lo, hi = band
    return max(lo - rate, 0.0, rate - hi)


def choose(candidates: Sequence[Candidate], band: tuple[float, float] = BAND) -> Candidate:
    """The pooled rule: the fewest demonstrations whose check success is in ``band``; else the
    candidate closest to the band, the fewer demonstrations on a tie."""
    if not candidates:
        raise ValueError("no SFT candidates to choose from")
    ordered = sorted(candidates, key=lambda c: c.demos_per_task)
    return min(ordered, key=lambda c: band_distance(c.rate, band))  # min keeps the first tie


def choose_per_task(candidates: Sequence[Candidate], min_tasks: int = MIN_ROOM_TASKS) -> Candidate:
    """The per-task rule: the fewest demonstrations with room on at least ``min_tasks`` tasks;
    else the most tasks with room, then the pooled rule's distance, then fewer demonstrations."""
    if not candidates:
        raise ValueError("no SFT candidates to choose from")
    ordered = sorted(candidates, key=lambda c: c.demos_per_task)
    enough = [c for c in ordered if c.tasks_with_room() >= min_tasks]
    if enough:
        return enough[0]
    return min(ordered, key=lambda c: (-c.tasks_with_room(), band_distance(c.rate)))


RULE_TEXT = {
    "per_task": f"fewest demos per task with check success in {list(ROOM)} on >= "
    f"{MIN_ROOM_TASKS} tasks, else the most such tasks",
    "pooled": f"fewest demos per task with check success over all tasks in {list(BAND)}, "
    "else the closest",
}


def choose_sft(
    ctx: BenchContext,
    counts: Sequence[int] = COUNTS,
    check_episodes: int | None = None,
    rule: str = "per_task",
) -> ModelArtifact:
    """Train and check SFT on each of ``counts`` demonstrations per task (``check_episodes``
    greedy runs per task each, on the same seeds), keep ``rule``'s choice;
    ``ctx.cfg`` becomes the chosen count's config (what every later stage and arm reads), the
    check goes to the report and its episodes to the ledger (``sft_choice_check``)."""
    if sorted(set(counts)) != list(counts) or counts[0] < 1:
        raise ValueError(f"SFT candidate counts must be ascending and >= 1, got {list(counts)}")
    if rule not in RULES:
        raise ValueError(f"SFT choice rule must be one of {RULES}, got {rule!r}")
    if check_episodes is None:
        check_episodes = RULE_CHECK_EPISODES[rule]
    cfg = ctx.cfg
    arts, found, episodes = {}, [], []
    dest = ctx.workdir / "sft_choice"
    for n in counts:
        ctx.cfg = dataclasses.replace(cfg, demo_episodes_per_task=n)
        arts[n] = ctx.trained(
            f"demos + SFT ({n} per task)",
            "sft",
            lambda n=n: bootstrap_champion(
                ctx.client,
                ctx.workdir / "bootstrap",
                ctx.cfg,
                ctx.progress,
                policy_dir=ctx.workdir / "bootstrap" / f"policy_{n}",
            ),  # fmt: skip
            record=f"sft_{n}",
        )
        check = ctx.timed(
            f"SFT ({n} demos per task) check on station",
            lambda n=n: collect_episodes(
                ctx.client,
                arts[n].path,
                dest / f"demos_{n}",
                ctx.cfg,
                episodes_per_task=check_episodes,
                seed=cfg.seed + CHECK_OFFSET,
                progress=ctx.progress,
            ),
        )
        found.append(_candidate(n, check.outcomes))
        episodes += episodes_of(
            [dest / f"demos_{n}"],
            cfg.tasks,
            cfg.seed + CHECK_OFFSET,
            check_episodes,
            {arts[n].sha256},
        )
    chosen = choose_per_task(found) if rule == "per_task" else choose(found)
    ctx.cfg = dataclasses.replace(cfg, demo_episodes_per_task=chosen.demos_per_task)
    ctx.ledger.add("sft_choice", episodes)
    ctx.report["sft_choice"] = {
        "rule": rule,
        "rule_text": RULE_TEXT[rule],
        "candidates": [
            dataclasses.asdict(c) | {"rate": c.rate, "tasks_with_room": c.tasks_with_room()}
            for c in found
        ],
        "check_seed": cfg.seed + CHECK_OFFSET,
        "check_episodes_per_task": check_episodes,
        "chosen": chosen.demos_per_task,
    }
    print(f"[SFT choice] {ctx.report['sft_choice']}", flush=True)
    return arts[chosen.demos_per_task]


def _candidate(n: int, outcomes: dict) -> Candidate:
    """``outcomes``: {(task, seed): success or None}."""
    per_task: dict[str, tuple[int, int]] = {}
    for (task, _), v in sorted(outcomes.items()):
        if v is not None:
            k, m = per_task.get(task, (0, 0))
            per_task[task] = (k + int(v), m + 1)
    return Candidate(
        n, sum(k for k, _ in per_task.values()), sum(m for _, m in per_task.values()), per_task
    )
