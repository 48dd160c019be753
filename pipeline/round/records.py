"""What a round's stages return: small typed records the assets pass to each other.

The round store keeps them as JSON under their class names (``pipeline.resources.RECORD_TYPES``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from robot_bridge.dispatch import TaskResult


@dataclass
class ModelArtifact:
    path: Path
    sha256: str
    metrics: dict[str, float]
    previews: list[Path] = field(default_factory=list)


@dataclass
class DatasetInfo:
    path: Path
    n_episodes: int
    n_frames: int
    per_task: dict[str, dict]
    stats_path: Path
    episode_files: list[Path]
    new_episodes: int = 0  # appended to the dataset by this round's stage


@dataclass
class Evaluation:
    checkpoint_sha256: str
    episodes: list[Path]
    per_task: dict[str, TaskResult]
    outcomes: dict[tuple[str, int], bool]  # (task, seed) -> success

    @property
    def success_rate(self) -> float:
        labelled = sum(r.labelled for r in self.per_task.values())
        return sum(r.successes for r in self.per_task.values()) / labelled if labelled else math.nan

    def to_dict(self) -> dict:
        return {
            "checkpoint_sha256": self.checkpoint_sha256,
            "episodes": len(self.episodes),
            "success_rate": self.success_rate,
            "per_task": {
                t: {
                    "episodes": r.episodes,
                    "successes": r.successes,
                    "labelled": r.labelled,
                    "success_rate": r.success_rate,
                    "ci95": list(r.ci95),
                }
                for t, r in self.per_task.items()
            },
        }


@dataclass
class PromotionDecision:
    promote: bool
    test: str
    p_value: float
    champion_rate: float
    challenger_rate: float
    discordant: dict[str, int]
    per_task: dict[str, dict]
    reason: str
