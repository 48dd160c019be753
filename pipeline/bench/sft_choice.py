"""Which SFT the bench starts from (how many demonstrations, how many SFT steps): chosen by a
rule fixed here, in code, before any run, never by hand.

Why a rule at all: World-Gymnast needs an SFT policy that leaves room to improve (an SFT that
solves every task leaves nothing to show) and that succeeds sometimes (GRPO reinforces successes
it samples; a policy that never succeeds gives every group the same reward). Where SFT lands for a
given recipe varies with the CPU and the draw, so a fixed recipe is a choice made by whoever last
looked at the results. Instead, each replicate trains SFT on each candidate recipe (demonstrations
per task, each a prefix of the same demonstrations, and SFT steps), in order from the least SFT to
the most, runs every candidate greedily on the same check seeds (the snapshot checks' range, never
the evaluation's), and keeps one by a rule:

- ``budget`` (the default): the per-task rule over recipes that grow in demonstrations *and* SFT
  steps (``BUDGETS``). A task has room when its check success is in ``ROOM`` (it succeeds
  sometimes, and not most of the time); the first recipe with room on at least
  ``MIN_ROOM_TASKS`` tasks is kept and no larger one is trained; if none has, the most tasks with
  room, then the most tasks with signal (some success, not all: a task at 0 or at the ceiling
  gives GRPO's groups nothing to tell apart), then the pooled rule's distance, then the smaller
  recipe. Why steps as well: with the bench's 500 SFT steps no demonstration count ever gave
  the eggplant tasks a success (4 to 24 per task, and 2000 steps at 24), while the drawers'
  success jumped between 0 and 100% from one count to the next; trained longer on more demonstrations, SFT solves the eggplant tasks
  sometimes, the regime the method is for, and the SFT baseline is the stronger for it
  (docs/experiments.md).
- ``per_task`` (the second rule, kept to reproduce runs made with it): the same rule over the
  demonstration counts ``COUNTS`` at the config's SFT steps.
- ``pooled`` (the first rule): the fewest demonstrations whose check success over all tasks lies
  in ``BAND``, else the closest. It was replaced because a pooled rate hides a task at its
  ceiling: the first final-range replicate's choice (8 demonstrations, 15/32 = 47%) was 7/8 and
  8/8 on the drawer tasks and 0/8 on both eggplant tasks, leaving no task with room.

Every arm starts from the chosen recipe (its demonstrations and its SFT steps: SFT+select and
Iter-SFT train that long too), and the check episodes count in every arm's real budget
(``sft_choice``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import seeds
from pipeline.bench.common import BenchContext, episodes_of
from pipeline.round.records import ModelArtifact
from pipeline.round.stages import bootstrap_champion, collect_episodes

COUNTS = (4, 8, 16, 24)  # the per_task rule's candidates: demonstrations per task
# the budget rule's candidates, least SFT first: (demonstrations per task, SFT steps)
BUDGETS = ((8, 500), (24, 2000), (24, 4000), (32, 6000))
BAND = (0.10, 0.50)  # the pooled rule: SFT's check success over all tasks
ROOM = (0.05, 0.60)  # the per-task rule: a task's check success that leaves room and gives signal
MIN_ROOM_TASKS = 2  # the target is judged on >= 2 tasks: SFT must leave room on as many
CHECK_EPISODES_PER_TASK = 12
RULES = ("budget", "per_task", "pooled")
# each rule with the candidates (demonstrations per task, SFT steps or None for the config's) and
# check it was fixed with, so a run made with it is reproduced
RULE_CANDIDATES: dict[str, tuple[tuple[int, int | None], ...]] = {
    "budget": BUDGETS,
    "per_task": tuple((n, None) for n in COUNTS),
    "pooled": ((8, None), (16, None), (24, None)),
}
RULE_CHECK_EPISODES = {
    "budget": CHECK_EPISODES_PER_TASK,
    "per_task": CHECK_EPISODES_PER_TASK,
    "pooled": 8,
}
# the check seeds: the top of the snapshot-check range, which snapshot checks never reach (a
# job runs at most 1000 episodes per task, and they start at the range's bottom)
CHECK_OFFSET = seeds.BENCH_CHECK + seeds.BENCH_RANGE - 1000


@dataclass(frozen=True)
class Candidate:
    demos_per_task: int
    successes: int
    episodes: int
    per_task: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # (k, n)
    sft_steps: int | None = None

    @property
    def budget(self) -> tuple[int, int]:
        """How much SFT the candidate had: the order the rules read candidates in."""
        return (self.sft_steps or 0, self.demos_per_task)

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    def tasks_with_room(self, room: tuple[float, float] = ROOM) -> int:
        lo, hi = room
        return sum(1 for k, n in self.per_task.values() if n and lo <= k / n <= hi)

    def tasks_with_signal(self) -> int:
        """Tasks it succeeds on sometimes but not always: where GRPO's groups can differ."""
        return sum(1 for k, n in self.per_task.values() if 0 < k < n)


def band_distance(rate: float, band: tuple[float, float] = BAND) -> float:
    """0 inside the band, else how far outside it."""
    lo, hi = band
    return max(lo - rate, 0.0, rate - hi)


def choose(candidates: Sequence[Candidate], band: tuple[float, float] = BAND) -> Candidate:
    """The pooled rule: the fewest demonstrations whose check success is in ``band``; else the
    candidate closest to the band, the fewer demonstrations on a tie."""
    if not candidates:
        raise ValueError("no SFT candidates to choose from")
    ordered = sorted(candidates, key=lambda c: c.budget)
    return min(ordered, key=lambda c: band_distance(c.rate, band))  # min keeps the first tie


def choose_per_task(candidates: Sequence[Candidate], min_tasks: int = MIN_ROOM_TASKS) -> Candidate:
    """The per-task rule: the least SFT (steps, then demonstrations) with room on at least
    ``min_tasks`` tasks; else the most tasks with room, then the most tasks with signal (a
    success, not all: a task at 0 or at the ceiling gives GRPO nothing to tell apart), then the
    pooled rule's distance, then the less SFT."""
    if not candidates:
        raise ValueError("no SFT candidates to choose from")
    ordered = sorted(candidates, key=lambda c: c.budget)
    enough = [c for c in ordered if c.tasks_with_room() >= min_tasks]
    if enough:
        return enough[0]
    return min(
        ordered,
        key=lambda c: (-c.tasks_with_room(), -c.tasks_with_signal(), band_distance(c.rate)),
    )


RULE_TEXT = {
    "budget": f"least SFT of {[list(b) for b in BUDGETS]} (demos per task, steps) with check "
    f"success in {list(ROOM)} on >= {MIN_ROOM_TASKS} tasks, else the most such tasks, then the "
    "most tasks with some success short of all",
    "per_task": f"fewest demos per task with check success in {list(ROOM)} on >= "
    f"{MIN_ROOM_TASKS} tasks, else the most such tasks, then the most tasks with some success "
    "short of all",
    "pooled": f"fewest demos per task with check success over all tasks in {list(BAND)}, "
    "else the closest",
}


def recipe_name(demos: int, steps: int, base_steps: int) -> str:
    """A candidate's name in the replicate's folder: ``<demos>`` at the config's SFT steps (the
    names runs made before steps were a candidate kept), else ``<demos>_s<steps>``."""
    return str(demos) if steps == base_steps else f"{demos}_s{steps}"


def chosen_record(workdir: Path, demos: int, steps: int) -> str:
    """The stage record of the SFT a replicate chose with this recipe ("" when it chose none):
    what a later bench on the replicate's folder reuses. A record under the bare count's name
    is this recipe's only if it was trained for ``steps``."""
    for name in (f"sft_{demos}_s{steps}", f"sft_{demos}"):
        path = Path(workdir) / f"{name}.stage.json"
        if path.is_file() and json.loads(path.read_text())["inputs"].get("sft_steps") == steps:
            return name
    return ""


def check_recipes(
    recipes: Sequence[tuple[int, int | None]], base_steps: int
) -> list[tuple[int, int]]:
    """The candidates with the config's steps filled in, least SFT first; refuses a bad list."""
    filled = [(int(n), int(base_steps if s is None else s)) for n, s in recipes]
    if not filled or any(n < 1 or s < 1 for n, s in filled) or len(set(filled)) != len(filled):
        raise ValueError(
            f"SFT candidates must be distinct (demos >= 1, steps >= 1), got {list(recipes)}"
        )
    return sorted(filled, key=lambda r: (r[1], r[0]))


def choose_sft(
    ctx: BenchContext,
    recipes: Sequence[tuple[int, int | None]] = BUDGETS,
    check_episodes: int | None = None,
    rule: str = "budget",
    keep: int = 1,
) -> ModelArtifact:
    """Train and check SFT on each candidate recipe (demonstrations per task, SFT steps or None
    for the config's), least SFT first, ``check_episodes`` greedy runs per task each on the same
    seeds, and keep ``rule``'s choice (the per-task rules stop at the first recipe with room on
    enough tasks: a larger one could not be chosen). ``ctx.cfg`` becomes the chosen recipe's
    config (what every later stage and arm reads); the check goes to the report and its
    episodes to the ledger (``sft_choice``). Each SFT keeps ``keep`` policies of its run
    (``bootstrap_champion``), so the chosen one's serve SFT+select without a second SFT."""
    if rule not in RULES:
        raise ValueError(f"SFT choice rule must be one of {RULES}, got {rule!r}")
    if check_episodes is None:
        check_episodes = RULE_CHECK_EPISODES[rule]
    cfg = ctx.cfg
    arts, found, episodes = {}, [], []
    dest = ctx.workdir / "sft_choice"
    for n, steps in check_recipes(recipes, cfg.sft_steps):
        name = recipe_name(n, steps, cfg.sft_steps)
        ctx.cfg = dataclasses.replace(cfg, demo_episodes_per_task=n, sft_steps=steps)
        label = f"{n} per task" + ("" if steps == cfg.sft_steps else f", {steps} steps")
        arts[n, steps] = ctx.trained(
            f"demos + SFT ({label})",
            "sft",
            lambda name=name: bootstrap_champion(
                ctx.client,
                ctx.workdir / "bootstrap",
                ctx.cfg,
                ctx.progress,
                policy_dir=ctx.workdir / "bootstrap" / f"policy_{name}",
                keep=keep,
            ),  # fmt: skip
            record=f"sft_{name}",
        )
        check = ctx.timed(
            f"SFT ({label}) check on station",
            lambda n=n, steps=steps, name=name: collect_episodes(
                ctx.client,
                arts[n, steps].path,
                dest / f"demos_{name}",
                ctx.cfg,
                episodes_per_task=check_episodes,
                seed=cfg.seed + CHECK_OFFSET,
                progress=ctx.progress,
            ),
        )
        found.append(_candidate(n, check.outcomes, steps))
        episodes += episodes_of(
            [dest / f"demos_{name}"],
            cfg.tasks,
            cfg.seed + CHECK_OFFSET,
            check_episodes,
            {arts[n, steps].sha256},
        )
        if rule != "pooled" and found[-1].tasks_with_room() >= MIN_ROOM_TASKS:
            break
    chosen = choose(found) if rule == "pooled" else choose_per_task(found)
    ctx.cfg = dataclasses.replace(
        cfg, demo_episodes_per_task=chosen.demos_per_task, sft_steps=chosen.sft_steps
    )
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
        "chosen_sft_steps": chosen.sft_steps,
    }
    print(f"[SFT choice] {ctx.report['sft_choice']}", flush=True)
    return arts[chosen.demos_per_task, chosen.sft_steps]


def _candidate(n: int, outcomes: dict, steps: int | None = None) -> Candidate:
    """``outcomes``: {(task, seed): success or None}."""
    per_task: dict[str, tuple[int, int]] = {}
    for (task, _), v in sorted(outcomes.items()):
        if v is not None:
            k, m = per_task.get(task, (0, 0))
            per_task[task] = (k + int(v), m + 1)
    return Candidate(
        n,
        sum(k for k, _ in per_task.values()),
        sum(m for _, m in per_task.values()),
        per_task,
        steps,
    )
