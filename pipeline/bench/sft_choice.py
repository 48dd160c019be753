"""How many demonstrations the bench's SFT starting point gets: chosen by a rule fixed here, in
code, before any run, never by hand.

Why a rule at all: World-Gymnast needs an SFT policy that leaves room to improve (an SFT that
solves every task leaves nothing to show) and that succeeds sometimes (GRPO reinforces successes
it samples; a policy that never succeeds gives every group the same reward). Where SFT lands for a
given number of demonstrations varies with the CPU and the draw, so a fixed count is a choice
made by whoever last looked at the results. Instead, each replicate trains SFT on each candidate
count (ascending, each a prefix of the same demonstrations), runs every candidate greedily on the
same check seeds (the snapshot checks' range, never the evaluation's), and keeps the smallest
count whose success over all tasks lies in ``BAND``; if none does, the count closest to the band
(ties: the smaller). Every arm starts from the chosen count's demonstrations, and the check
episodes count in every arm's real budget (``sft_choice``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline import seeds
from pipeline.bench.common import BenchContext, episodes_of
from pipeline.round.records import ModelArtifact
from pipeline.round.stages import bootstrap_champion, collect_episodes

COUNTS = (8, 16, 24)  # demonstrations per task, the candidates
BAND = (0.10, 0.50)  # SFT's check success over all tasks that leaves room and gives signal
CHECK_EPISODES_PER_TASK = 8
# the check seeds: the top of the snapshot-check range, which snapshot checks never reach (a
# job runs at most 1000 episodes per task, and they start at the range's bottom)
CHECK_OFFSET = seeds.BENCH_CHECK + seeds.BENCH_RANGE - 1000


@dataclass(frozen=True)
class Candidate:
    demos_per_task: int
    successes: int
    episodes: int

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


def band_distance(rate: float, band: tuple[float, float] = BAND) -> float:
    """0 inside the band, else how far outside it."""
    lo, hi = band
    return max(lo - rate, 0.0, rate - hi)


def choose(candidates: Sequence[Candidate], band: tuple[float, float] = BAND) -> Candidate:
    """The rule: the fewest demonstrations whose check success is in ``band``; else the
    candidate closest to the band, the fewer demonstrations on a tie."""
    if not candidates:
        raise ValueError("no SFT candidates to choose from")
    ordered = sorted(candidates, key=lambda c: c.demos_per_task)
    return min(ordered, key=lambda c: band_distance(c.rate, band))  # min keeps the first tie


def choose_sft(
    ctx: BenchContext,
    counts: Sequence[int] = COUNTS,
    check_episodes: int = CHECK_EPISODES_PER_TASK,
) -> ModelArtifact:
    """Train and check SFT on each of ``counts`` demonstrations per task (``check_episodes``
    greedy runs per task each, on the same seeds), keep the rule's choice;
    ``ctx.cfg`` becomes the chosen count's config (what every later stage and arm reads), the
    check goes to the report and its episodes to the ledger (``sft_choice_check``)."""
    if sorted(set(counts)) != list(counts) or counts[0] < 1:
        raise ValueError(f"SFT candidate counts must be ascending and >= 1, got {list(counts)}")
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
    chosen = choose(found)
    ctx.cfg = dataclasses.replace(cfg, demo_episodes_per_task=chosen.demos_per_task)
    ctx.ledger.add("sft_choice", episodes)
    ctx.report["sft_choice"] = {
        "rule": f"fewest demos per task with check success in {list(BAND)}, else the closest",
        "candidates": [dataclasses.asdict(c) | {"rate": c.rate} for c in found],
        "check_seed": cfg.seed + CHECK_OFFSET,
        "check_episodes_per_task": check_episodes,
        "chosen": chosen.demos_per_task,
    }
    print(f"[SFT choice] {ctx.report['sft_choice']}", flush=True)
    return arts[chosen.demos_per_task]


def _candidate(n: int, outcomes: dict) -> Candidate:
    labelled = [v for v in outcomes.values() if v is not None]
    return Candidate(n, int(sum(labelled)), len(labelled))
