"""Reading and splitting a round's episodes: HDF5 folders, LeRobot datasets, held-out splits."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from robot_bridge.episodes import (
    Episode,
    EpisodeHeader,
    list_episodes,
    read_episode,
    read_episode_header,
)

if TYPE_CHECKING:
    from pipeline.lerobot_dataset import DatasetEpisodes
    from pipeline.round.config import RoundConfig


def episode_paths(dirs: Sequence[str | Path]) -> list[Path]:
    """Every complete episode file under the given folders, in a stable order."""
    return sorted({p for d in dirs for p in list_episodes(d)}, key=lambda p: p.name)


def load_episodes(sources: Sequence[str | Path | DatasetEpisodes]) -> list[Episode]:
    """Every episode of the sources, in a stable order: HDF5 episode folders (complete files),
    LeRobot dataset folders (every episode) and ``DatasetEpisodes`` (a round's ids in a dataset)."""
    from pipeline.lerobot_dataset import DatasetEpisodes, is_lerobot_dataset, load_lerobot_episodes

    out, dirs = [], []
    for s in sources:
        if isinstance(s, DatasetEpisodes):
            out += s.load()
        elif is_lerobot_dataset(s):
            out += load_lerobot_episodes(s)
        else:
            dirs.append(s)
    return out + [read_episode(p) for p in episode_paths(dirs)]


def external_episodes(cfg: RoundConfig) -> list[Episode]:
    """The episodes of the round's ``external_datasets`` (a lab's own LeRobot data)."""
    from pipeline.lerobot_dataset import ExternalDataset

    return [ep for spec in cfg.external_datasets for ep in ExternalDataset.parse(spec).load()]


def load_episode_headers(dirs: Sequence[str | Path]) -> list[EpisodeHeader]:
    """Labels and first frames of every complete episode under the folders (no other frames)."""
    return [read_episode_header(p) for p in episode_paths(dirs)]


def split_holdout(
    episodes: Sequence[Episode], fraction: float, salt: str = ""
) -> tuple[list[Episode], list[Episode]]:
    """Deterministic split by episode id (a hash), so a round re-run holds out the same episodes."""

    def held(ep: Episode) -> bool:
        h = int(hashlib.sha256((salt + ep.episode_id).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return h < fraction

    train = [e for e in episodes if not held(e)]
    test = [e for e in episodes if held(e)]
    if not test and len(train) > 1:  # tiny rounds: keep at least one held-out episode
        test.append(train.pop())
    return train, test


def split_by_label(
    episodes: Sequence[Episode], fraction: float, salt: str = ""
) -> tuple[list[Episode], list[Episode]]:
    """``split_holdout`` within successes and within failures, so both sides see both kinds."""
    train, test = [], []
    for label in (True, False):
        a, b = split_holdout([e for e in episodes if e.success is label], fraction, salt)
        train += a
        test += b
    return train, test
