"""GRPO's imagined horizon under ``grpo_horizon="cover"``: long enough for the starting policy's
own real successes (an episode ends at its success), never past the cap, and only the starting
policy's episodes count."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from pipeline.round.config import RoundConfig
from pipeline.round.stages import (
    COVER_CAP_CHUNKS,
    covering_horizon,
    grpo_horizon_steps,
    with_covering_horizon,
)


def _ep(steps: int, success: bool, sha: str = "sft") -> SimpleNamespace:
    return SimpleNamespace(num_frames=steps + 1, success=success, policy_sha256=sha)


def test_the_horizon_covers_the_quantile_of_successes_within_floor_and_cap():
    # chunks needed (5 steps a call): 4 -> 1, 11 -> 3, 17 -> 4, 22 -> 5
    eps = [_ep(4, True), _ep(11, True), _ep(17, True), _ep(22, True), _ep(70, False)]
    assert covering_horizon(eps, 5, floor=1, cap=8, quantile=0.5) == 3
    assert covering_horizon(eps, 5, floor=1, cap=8, quantile=0.75) == 4
    assert covering_horizon(eps, 5, floor=1, cap=8, quantile=1.0) == 5
    assert covering_horizon(eps, 5, floor=1, cap=4, quantile=1.0) == 4  # capped
    assert covering_horizon(eps, 5, floor=6, cap=8, quantile=1.0) == 6  # never below the floor
    # failures do not count, however long: without a success the floor stands
    assert covering_horizon([_ep(100, False)] * 5, 5, floor=3, cap=6) == 3
    for bad in ({"floor": 0, "cap": 3}, {"floor": 4, "cap": 3}):
        with pytest.raises(ValueError, match="floor <= cap"):
            covering_horizon(eps, 5, **bad)


def test_cover_uses_the_starting_policys_successes_and_fixed_changes_nothing():
    cfg = RoundConfig.from_preset("bench")
    assert cfg.grpo_horizon == "cover" and cfg.grpo_overrides["horizon_chunks"] == 3
    fast = [_ep(4, True)] * 8  # drawer-like successes: the preset's 3 calls already cover them
    assert with_covering_horizon(cfg, fast, "sft") == cfg
    slow = fast + [_ep(24, True)] * 4 + [_ep(19, True, sha="other")] * 20
    got = with_covering_horizon(cfg, slow, "sft")
    assert got.grpo_overrides["horizon_chunks"] == 5  # the 90% quantile of 12 is the 11th: 24 steps
    assert grpo_horizon_steps(got) == 25
    assert {k: v for k, v in got.grpo_overrides.items() if k != "horizon_chunks"} == {
        k: v for k, v in cfg.grpo_overrides.items() if k != "horizon_chunks"
    }
    # applied again to the same episodes (the bench, then train_challenger): unchanged
    assert with_covering_horizon(got, slow, "sft") == got
    # another policy's long successes only: the floor
    assert with_covering_horizon(cfg, slow, "nobody") == cfg
    assert (
        with_covering_horizon(cfg, [_ep(95, True)] * 3, "sft").grpo_overrides["horizon_chunks"]
        == COVER_CAP_CHUNKS
    )
    fixed = dataclasses.replace(cfg, grpo_horizon="fixed")
    assert with_covering_horizon(fixed, slow, "sft") == fixed
    with pytest.raises(ValueError, match="grpo_horizon must be"):
        RoundConfig.from_preset("bench", grpo_horizon="long")
