"""Every initial-state seed range of the project, in one module, disjoint by construction.

A seed picks a simulated scene's initial state (on a real arm: the reset's index), so two uses of
the same (task, seed) see the same state. A policy must be judged on states no stage that trained
or chose it has seen: every range below has one purpose.

The nightly loop gives every (round, purpose) its own block of ``BLOCK`` seeds, numbered from the
round's window start in minutes, so no two rounds and no two purposes ever share a seed, whatever
the cron. The promotion gate runs champion and challenger on the round's ``gate`` block: fresh,
paired states; its episodes may then join the next round's data, because later rounds gate on
blocks of their own.

The learning bench (``gymnast bench learning``) keeps the offsets from its config's seed that every
run so far used; its evaluation has a development range (every earlier run, and all tuning, saw
it) and a final-test range that no development run touches.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# --- the learning bench: offsets from RoundConfig.seed ------------------------------------------
BENCH_COLLECT = 0  # a policy's greedy training runs
BENCH_DEMO = 10_000  # scripted demonstrations
BENCH_EXPLORE = 20_000  # sampled (exploration) runs
BENCH_DYNA = 30_000  # + 1000 per Dyna iteration: the RL policy's own runs
BENCH_CHECK = 40_000  # snapshot checks that choose a policy
EVAL_RANGES = {
    "dev": 50_000,  # development: every earlier run and all tuning saw it
    "final": 9_000_000,  # final test: only for reported results, never for choosing anything
}
BENCH_RANGE = 10_000  # seeds per bench purpose (a job runs at most 1000 episodes per task)
BENCH_SPAN = BENCH_CHECK + BENCH_RANGE  # one replicate's training ranges: [seed, seed + SPAN)
# Replicate r of a bench run uses the offsets above from ``base + r * BENCH_REPLICATE_STRIDE``:
# its own demonstrations, attempts, exploration, Dyna runs and checks, and its own torch seeds
# (SFT, world model, judge, GRPO). The evaluation ranges are absolute: every replicate and every
# arm runs the same evaluation seeds, which no replicate's training window reaches.
BENCH_REPLICATE_STRIDE = 100_000
BENCH_MAX_REPLICATES = 50


def bench_replicate_seed(base: int, replicate: int) -> int:
    """The config seed of replicate ``replicate`` (0: ``base`` itself, as single runs had);
    refuses a window that would reach an evaluation range."""
    if not 0 <= replicate < BENCH_MAX_REPLICATES:
        raise ValueError(f"replicate must be in [0, {BENCH_MAX_REPLICATES}), got {replicate}")
    if base < 0:
        raise ValueError(f"the bench's seed must be >= 0, got {base}")
    seed = base + replicate * BENCH_REPLICATE_STRIDE
    for name, start in EVAL_RANGES.items():
        if seed < start + BENCH_RANGE and start < seed + BENCH_SPAN:
            raise ValueError(
                f"replicate {replicate} of seed {base} trains on seeds {seed}-"
                f"{seed + BENCH_SPAN - 1}, which reach the {name} evaluation range {start}+"
            )
    return seed


# --- the nightly loop -----------------------------------------------------------------------------
LOOP_PURPOSES = ("demo", "collect", "explore", "check", "gate")
BLOCK = 1000  # seeds per (round, purpose): a station job runs at most 1000 episodes per task
LOOP_BASE = 10**9  # above every bench range
_EPOCH = dt.datetime(2020, 1, 1)
_MAX_ROUND_INDEX = 200 * 366 * 24 * 60  # minutes in two centuries


def round_index(round_key: str, fmt: str) -> int:
    """The round's window start in minutes since 2020-01-01: distinct rounds, distinct indices."""
    try:
        start = dt.datetime.strptime(round_key, fmt)
    except ValueError:
        raise ValueError(f"round key {round_key!r} does not match the format {fmt!r}") from None
    minutes = int((start - _EPOCH).total_seconds() // 60)
    if not 0 <= minutes < _MAX_ROUND_INDEX:
        raise ValueError(f"round {round_key!r} is outside 2020..2219")
    return minutes


@dataclass(frozen=True)
class RoundSeeds:
    """The first seed of each purpose's block in one round (a block holds ``BLOCK`` seeds)."""

    demo: int
    collect: int
    explore: int
    check: int
    gate: int

    @classmethod
    def for_round(cls, round_key: str, fmt: str, base_seed: int = 0) -> RoundSeeds:
        if base_seed < 0:
            raise ValueError(f"base_seed must be >= 0, got {base_seed}")
        index = base_seed * _MAX_ROUND_INDEX + round_index(round_key, fmt)
        n = len(LOOP_PURPOSES)
        return cls(*(LOOP_BASE + (index * n + p) * BLOCK for p in range(n)))

    def block(self, purpose: str, count: int) -> range:
        """The seeds a purpose uses for ``count`` episodes per task; refuses more than a block."""
        if purpose not in LOOP_PURPOSES:
            raise ValueError(f"unknown purpose {purpose!r}; valid: {', '.join(LOOP_PURPOSES)}")
        if not 0 <= count <= BLOCK:
            raise ValueError(f"{count} episodes per task do not fit a block of {BLOCK} seeds")
        start = getattr(self, purpose)
        return range(start, start + count)

    def to_params(self, counts: dict[str, int]) -> dict[str, str]:
        """``{"seeds.<purpose>": "first-last"}`` for the purposes used (MLflow params)."""
        out = {}
        for purpose, count in counts.items():
            r = self.block(purpose, count)
            if count:
                out[f"seeds.{purpose}"] = f"{r.start}-{r.stop - 1}"
        return out
