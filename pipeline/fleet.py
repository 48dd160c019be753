"""A fleet of stations (arms) driven as one: collection and evaluation fanned out across arms.

A lab with several WidowX arms lists them in a fleet file (``GYMNAST_STATIONS``, TOML or JSON)::

    timeout_s = 30
    [[station]]
    name = "arm-a"
    endpoint = "tcp://10.0.0.5:5555"
    keys = "/secrets/arm-a"            # optional CURVE keys folder
    tasks = ["open_drawer", "close_drawer"]   # optional: the tasks this arm's scene supports

Work is split by seed: each task's seed range is cut into contiguous shares, one per arm that
supports the task (``plan_shards``). The split depends only on the fleet and the range, so a seed
block that champion and challenger both run is run by both on the same arm: a paired comparison
never mixes arms. Each arm runs its share in its own thread with its own client; an arm that
drops out fails only its share. Every episode any arm finished is already copied here, and a
re-run skips every (task, seed) done, so it resumes only what the lost arm had not finished.

Each arm's episodes go to ``dest/<arm name>`` (for a fleet of one, ``dest`` itself, as before).
"""

from __future__ import annotations

import json
import re
import threading
import tomllib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from robot_bridge.client import StationClient, StationError
from robot_bridge.dispatch import (
    DispatchError,
    DispatchResult,
    already_collected,
    run_on_station,
    summarize_dispatch,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # a folder name and a Dagster pool suffix


@dataclass(frozen=True)
class Arm:
    """One station: where it listens, its keys, and the tasks its scene supports (None: all)."""

    name: str
    endpoint: str
    keys_dir: str | None = None
    tasks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"station name {self.name!r}: use letters, digits, '_', '-', '.' (it names a "
                "folder and a Dagster pool)"
            )
        if not self.endpoint.startswith(("tcp://", "ipc://")):
            raise ValueError(
                f"station {self.name!r}: endpoint must be tcp://host:port, got {self.endpoint!r}"
            )

    def supports(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    @property
    def pool(self) -> str:
        """The Dagster pool (one slot) that two runs must hold to drive this arm."""
        return f"robot/{self.name}"


@dataclass(frozen=True)
class Fleet:
    arms: tuple[Arm, ...]
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("a fleet needs at least one station")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"station names must be unique, got {names}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")

    @classmethod
    def single(cls, endpoint: str, keys_dir: str | None = None, timeout_s: float = 30.0) -> Fleet:
        return cls((Arm("station", endpoint, keys_dir),), timeout_s)

    @classmethod
    def from_file(cls, path: str | Path) -> Fleet:
        """A fleet file (``.toml`` or ``.json``): ``station`` entries with name, endpoint, keys,
        tasks; an optional ``timeout_s``."""
        path = Path(path)
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "fleet") -> Fleet:
        unknown = set(data) - {"station", "timeout_s"}
        if unknown:
            raise ValueError(f"{source}: unknown keys {sorted(unknown)}; valid: station, timeout_s")
        arms = []
        for i, entry in enumerate(data.get("station", [])):
            bad = set(entry) - {"name", "endpoint", "keys", "tasks"}
            if bad or "name" not in entry or "endpoint" not in entry:
                raise ValueError(
                    f"{source}: station {i} needs name and endpoint (optional keys, tasks); "
                    f"got {sorted(entry)}"
                )
            tasks = entry.get("tasks")
            arms.append(
                Arm(
                    entry["name"],
                    entry["endpoint"],
                    entry.get("keys"),
                    tuple(tasks) if tasks is not None else None,
                )
            )
        return cls(tuple(arms), float(data.get("timeout_s", 30.0)))

    def to_dict(self) -> dict:
        stations = []
        for a in self.arms:
            entry: dict = {"name": a.name, "endpoint": a.endpoint}
            if a.keys_dir:
                entry["keys"] = a.keys_dir
            if a.tasks is not None:
                entry["tasks"] = list(a.tasks)
            stations.append(entry)
        return {"timeout_s": self.timeout_s, "station": stations}

    def __len__(self) -> int:
        return len(self.arms)


@dataclass(frozen=True)
class Shard:
    """Part of a job that one arm runs: ``episodes_per_task`` seeds from ``seed`` for ``tasks``."""

    arm: str
    tasks: tuple[str, ...]
    seed: int
    episodes_per_task: int


def plan_shards(
    fleet: Fleet, tasks: Sequence[str], episodes_per_task: int, seed: int
) -> list[Shard]:
    """Each task's seeds ``seed .. seed+n-1`` cut into contiguous shares over the arms that
    support it (the first arms take one more when it does not divide); shares with the same seeds
    on one arm become one job. Deterministic: the same fleet and range give the same plan."""
    parts: dict[tuple[str, int, int], list[str]] = {}
    for task in tasks:
        arms = [a for a in fleet.arms if a.supports(task)]
        if not arms:
            raise ValueError(f"no station of the fleet supports task {task!r}")
        base, extra = divmod(episodes_per_task, len(arms))
        start = seed
        for j, arm in enumerate(arms):
            count = base + (j < extra)
            if count:
                parts.setdefault((arm.name, start, count), []).append(task)
            start += count
    return [Shard(arm, tuple(ts), s, n) for (arm, s, n), ts in parts.items()]


ArmHold = Callable[[Arm], AbstractContextManager]


class FleetRunner:
    """Runs a checkpoint across a fleet; what the stages call instead of one station's client.

    ``hold_arm(arm)`` is entered around each arm's work: the Dagster assets pass one that holds
    the arm's pool slot, so two runs never drive one arm while different arms work in parallel."""

    def __init__(
        self, fleet: Fleet, hold_arm: ArmHold | None = None, log=print, *, flat: bool = False
    ) -> None:
        self.fleet = fleet
        self.hold_arm = hold_arm or (lambda arm: nullcontext())
        self.log = log
        # every arm's episodes in ``dest`` itself, as one station's would be (the learning
        # bench's simulated stations: its folders and budgets stay as they are)
        self.flat = flat

    @property
    def endpoint(self) -> str:
        return ", ".join(f"{a.name} ({a.endpoint})" for a in self.fleet.arms)

    def client(self, arm: Arm) -> StationClient:
        return StationClient(arm.endpoint, keys_dir=arm.keys_dir, timeout_s=self.fleet.timeout_s)

    def arm_dest(self, dest: Path, arm: Arm) -> Path:
        return dest if self.flat or len(self.fleet) == 1 else dest / arm.name

    def upload_checkpoint(self, checkpoint_dir: str | Path, progress: bool = False) -> str:
        """Dispatch to every arm (each holds what it runs next); returns the checkpoint's id."""
        shas = {self._upload(arm, checkpoint_dir, progress) for arm in self.fleet.arms}
        if len(shas) != 1:
            raise StationError(
                "bad_checkpoint", f"stations disagree on the checkpoint's id: {shas}"
            )
        return shas.pop()

    def _upload(self, arm: Arm, checkpoint_dir, progress: bool) -> str:
        with self.client(arm) as c:
            return c.upload_checkpoint(checkpoint_dir, progress=progress)

    def run(
        self,
        checkpoint_dir: str | Path,
        tasks: Iterable[str],
        episodes_per_task: int,
        dest: str | Path,
        *,
        seed: int = 0,
        progress: bool = False,
    ) -> DispatchResult:
        """Every arm runs its shares in parallel; raises ``DispatchError`` naming each arm that
        failed (its recorded episodes are kept) after the others have finished theirs."""
        dest, tasks = Path(dest), list(tasks)
        shards = plan_shards(self.fleet, tasks, episodes_per_task, seed)
        by_arm = {a.name: [s for s in shards if s.arm == a.name] for a in self.fleet.arms}
        busy = [a for a in self.fleet.arms if by_arm[a.name]]
        fetched: list[Path] = []
        lock = threading.Lock()
        errors: dict[str, Exception] = {}
        shas: set[str] = set()

        def work(arm: Arm) -> None:
            try:
                sha, episodes = self._run_arm(arm, by_arm[arm.name], checkpoint_dir, dest, progress)
                with lock:
                    shas.add(sha)
                    fetched.extend(episodes)
            except (DispatchError, StationError, OSError) as e:
                with lock:
                    errors[arm.name] = e
                    fetched.extend(getattr(e, "episodes", []))

        with ThreadPoolExecutor(max_workers=len(busy)) as pool:
            list(pool.map(work, busy))
        if errors:
            raise DispatchError(self._failure(errors, busy, dest), fetched)
        (sha,) = shas
        return summarize_dispatch(dest, sha, tasks, episodes_per_task, seed)

    def _run_arm(self, arm, shards, checkpoint_dir, dest, progress) -> tuple[str, list[Path]]:
        with self.hold_arm(arm), self.client(arm) as client:
            sha = client.upload_checkpoint(checkpoint_dir)
            done = already_collected(dest, sha)  # every arm's, so a re-planned seed is not re-run
            episodes: list[Path] = []
            for s in shards:
                r = run_on_station(
                    client,
                    checkpoint_dir,
                    s.tasks,
                    s.episodes_per_task,
                    self.arm_dest(dest, arm),
                    seed=s.seed,
                    progress=progress and len(self.fleet) == 1,
                    skip=done,
                )
                episodes += r.episodes
            self.log(f"station {arm.name}: {len(episodes)} episode(s) of its share done")
            return sha, episodes

    def _failure(self, errors: dict[str, Exception], busy: list[Arm], dest: Path) -> str:
        lines = "; ".join(f"station {name}: {e}" for name, e in errors.items())
        return (
            f"{len(errors)} of {len(busy)} station(s) failed ({lines}). The other stations "
            f"finished their shares; every recorded episode is in {dest}, and a re-run runs only "
            "what the failed station(s) had not finished."
        )


def run_policy(
    station: StationClient | FleetRunner,
    checkpoint_dir: str | Path,
    tasks: Iterable[str],
    episodes_per_task: int,
    dest: str | Path,
    *,
    seed: int = 0,
    progress: bool = False,
) -> DispatchResult:
    """One station's client or a fleet: the stages run policies through this."""
    if isinstance(station, FleetRunner):
        return station.run(
            checkpoint_dir, tasks, episodes_per_task, dest, seed=seed, progress=progress
        )
    return run_on_station(
        station, checkpoint_dir, tasks, episodes_per_task, dest, seed=seed, progress=progress
    )
