"""The shared pieces: the learning-rate schedule every trainer uses, and config errors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from gymnast_common.config import Config, ConfigError
from gymnast_common.schedule import warmup_cosine, warmup_cosine_factor


def lrs(steps: int, **schedule) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps (base lr 1)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=steps, **schedule)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_warmup_starts_at_one_step_of_the_ramp_and_the_cosine_ends_at_the_floor():
    got = lrs(10, warmup_steps=4, floor=0.1)
    assert got[:4] == [0.25, 0.5, 0.75, 1.0]
    assert got[4] == 1.0 and all(a > b for a, b in zip(got[4:], got[5:], strict=False))
    assert math.isclose(warmup_cosine_factor(10, 4, 10, 0.1), 0.1)
    assert warmup_cosine_factor(99, 4, 10, 0.1) == pytest.approx(0.1)  # held after the end


def test_floor_one_is_warmup_then_constant_and_zero_warmup_starts_at_full_lr():
    assert lrs(6, warmup_steps=3, floor=1.0) == [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]
    assert lrs(3, warmup_steps=0, floor=1.0) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"floor must be in \[0, 1\].*got 1.5"):
        lrs(3, warmup_steps=1, floor=1.5)


@dataclass
class _Example(Config):
    PRESETS = {"tiny": {"width": 2}, "large": {"width": 64}}
    PRESET_FIELD = "preset"

    preset: str = "tiny"
    width: int = 2
    sizes: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        self.sizes = tuple(self.sizes)


def test_a_config_names_its_preset_and_round_trips_tuples_through_lists():
    cfg = _Example.from_preset("large", sizes=(3,))
    assert (cfg.preset, cfg.width, cfg.to_dict()["sizes"]) == ("large", 64, [3])
    assert _Example.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(
        ConfigError, match="unknown _Example preset 'huge'; valid presets: tiny, large"
    ):
        _Example.from_preset("huge")
    with pytest.raises(
        ConfigError, match=r"\['depth'\] in dict; valid fields: preset, width, sizes"
    ):
        _Example.from_dict({"depth": 3})
