"""Seed ranges: every purpose of every round gets states no other round or purpose uses."""

import datetime as dt

import pytest

from pipeline import seeds
from pipeline.assets import ROUND_FMT
from pipeline.seeds import BLOCK, LOOP_PURPOSES, RoundSeeds


def _round_keys() -> list[str]:
    """Three years of nightly rounds, a month of hourly ones, and minutes apart."""
    start = dt.datetime(2026, 1, 1, 2, 0)
    times = [start + dt.timedelta(days=d) for d in range(3 * 365)]
    times += [start + dt.timedelta(hours=h, minutes=7) for h in range(31 * 24)]
    times += [start + dt.timedelta(minutes=m, seconds=0) for m in range(1, 60)]
    return sorted({t.strftime(ROUND_FMT) for t in times})


def test_no_two_rounds_or_purposes_share_a_seed():
    blocks = []
    for base in (0, 1, 7):
        for key in _round_keys():
            s = RoundSeeds.for_round(key, ROUND_FMT, base)
            blocks += [(s.block(p, BLOCK), (base, key, p)) for p in LOOP_PURPOSES]
    blocks.sort(key=lambda b: b[0].start)
    assert len(blocks) > 3 * 5 * 1800
    for (a, who_a), (b, who_b) in zip(blocks, blocks[1:], strict=False):
        assert a.stop <= b.start, f"{who_a} and {who_b} share seeds"
    # and the loop stays clear of every range of the learning bench, and below the station's cap
    bench_top = max(seeds.EVAL_RANGES.values()) + 100 * BLOCK
    assert blocks[0][0].start >= seeds.LOOP_BASE > bench_top
    assert blocks[-1][0].stop < 2**62


def test_the_bench_ranges_are_disjoint_and_final_is_not_dev():
    starts = sorted(
        [
            seeds.BENCH_COLLECT,
            seeds.BENCH_DEMO,
            seeds.BENCH_EXPLORE,
            seeds.BENCH_DYNA,
            seeds.BENCH_CHECK,
            *seeds.EVAL_RANGES.values(),
        ]
    )
    # each range holds at most 10 000 seeds (a job runs at most 1000 episodes per task; Dyna
    # steps by 1000 per iteration, up to 10)
    assert all(b - a >= 10 * BLOCK for a, b in zip(starts, starts[1:], strict=False))
    assert seeds.EVAL_RANGES["final"] != seeds.EVAL_RANGES["dev"]


def test_a_block_refuses_more_episodes_than_it_holds_and_names_its_range():
    s = RoundSeeds.for_round("2026-03-04_0200", ROUND_FMT)
    assert s.block("gate", 3) == range(s.gate, s.gate + 3)
    with pytest.raises(ValueError, match="do not fit a block"):
        s.block("gate", BLOCK + 1)
    with pytest.raises(ValueError, match="unknown purpose"):
        s.block("train", 1)
    params = s.to_params({"collect": 5, "gate": 5, "explore": 0})
    assert params == {
        "seeds.collect": f"{s.collect}-{s.collect + 4}",
        "seeds.gate": f"{s.gate}-{s.gate + 4}",
    }
    with pytest.raises(ValueError, match="does not match the format"):
        RoundSeeds.for_round("round-1", ROUND_FMT)


def test_replicates_draw_disjoint_training_seeds_that_never_reach_the_evaluation():
    starts = [seeds.bench_replicate_seed(0, r) for r in range(seeds.BENCH_MAX_REPLICATES)]
    assert starts[0] == 0  # replicate 0 is the single run the bench always was
    windows = sorted((s, s + seeds.BENCH_SPAN) for s in starts)
    assert all(a[1] <= b[0] for a, b in zip(windows, windows[1:], strict=False))
    for lo, hi in windows:
        for e in seeds.EVAL_RANGES.values():
            assert hi <= e or e + seeds.BENCH_RANGE <= lo
    assert max(hi for _, hi in windows) < seeds.LOOP_BASE
    with pytest.raises(ValueError, match="reach the dev evaluation range"):
        seeds.bench_replicate_seed(20_000, 0)
    with pytest.raises(ValueError, match="replicate must be in"):
        seeds.bench_replicate_seed(0, seeds.BENCH_MAX_REPLICATES)
