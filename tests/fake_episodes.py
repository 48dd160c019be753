"""The metadata of the hand-written episodes the tests put on disk (one per index ``e``)."""

from __future__ import annotations

from robot_bridge.episodes import EpisodeMeta
from robot_bridge.spec import TASKS


def episode_meta(e: int, task: str) -> EpisodeMeta:
    """Episode ``e`` of ``task``: its own id, seed and policy, from one station."""
    return EpisodeMeta(
        episode_id=f"ep{e:02d}",
        task=task,
        instruction=TASKS[task].instruction,
        seed=100 + e,
        station_id="station-a",
        policy_sha256=f"{e:064x}",
        backend="instant",
    )
