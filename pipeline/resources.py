"""Dagster resources of the loop: the station(s), MLflow, the round settings and the round store.

Everything is configured from environment variables, so one set of definitions serves the demo,
``dagster dev`` and a deployment:

| variable | meaning | default |
|---|---|---|
| ``GYMNAST_STATION`` | station endpoint, ``tcp://host:port`` | required (unless a fleet) |
| ``GYMNAST_STATIONS`` | fleet file (TOML/JSON) of several stations, see ``pipeline.fleet`` | one station |
| ``GYMNAST_STATION_KEYS`` | CURVE keys folder (``server.key`` + ``client.key_secret``) | no auth |
| ``GYMNAST_STATION_TIMEOUT`` | seconds per station request attempt (3 attempts) | 30 |
| ``MLFLOW_TRACKING_URI`` | MLflow server | required (demo / dev start one) |
| ``GYMNAST_HOME`` | episodes, datasets, checkpoints, round records | ``./.gymnast`` |
| ``GYMNAST_PRESET`` | ``RoundConfig`` preset | ``tiny`` |
| ``GYMNAST_ROUND_OVERRIDES`` | JSON object of ``RoundConfig`` field overrides | ``{}`` |
| ``GYMNAST_JUDGE_F1_FLOOR`` / ``GYMNAST_WM_TOLERANCE`` | judge F1 floor; world-model error growth allowed | 0.5 / 0.25 |
| ``GYMNAST_EXPLOIT_TOLERANCE`` | share of the challenger's real failures the world model may imagine as successes | 0.2 |
| ``GYMNAST_ROUND_CRON`` / ``GYMNAST_TIMEZONE`` / ``GYMNAST_ROUNDS_START`` | the round schedule | ``0 2 * * *`` / UTC / 2026-01-01 |

Every variable gymnast reads or sets, these and the rest: ``pipeline.environment``, printed by
``gymnast env`` and kept in ``docs/environment.md`` (a test checks both against the code).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from pipeline.round.config import RoundConfig
from pipeline.round.records import DatasetInfo, Evaluation, ModelArtifact, PromotionDecision
from robot_bridge.dispatch import TaskResult

# --- records the assets pass to each other (stored as JSON, never pickled) -----------------------


@dataclass
class RoundEpisodes:
    """The champion's episodes of this round: training data (the gate runs on seeds of its own)."""

    champion: ModelArtifact
    champion_round: str | None  # the round that produced it; None: bootstrapped this round
    evaluation: Evaluation
    seed: int


@dataclass
class ChallengerEvaluation:
    """The gate's evidence: challenger and champion on the round's fresh gate seeds (paired)."""

    challenger: ModelArtifact
    evaluation: Evaluation
    seed: int  # the gate block's first seed
    champion_evaluation: Evaluation


@dataclass
class ChampionRecord:
    """The champion after this round: the challenger if promoted, else the one that stayed."""

    policy: ModelArtifact
    promoted: bool
    decision: PromotionDecision
    previous_sha256: str


RECORD_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (
        ModelArtifact,
        DatasetInfo,
        Evaluation,
        TaskResult,
        PromotionDecision,
        RoundEpisodes,
        ChallengerEvaluation,
        ChampionRecord,
    )
}


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = type(obj).__name__
        if RECORD_TYPES.get(name) is not type(obj):
            raise TypeError(
                f"{name} is not a registered record type; known: {', '.join(RECORD_TYPES)}"
            )
        return {
            "__record__": name,
            **{
                f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
            },
        }
    if isinstance(obj, Path):
        return {"__path__": str(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_jsonable(v) for v in obj]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: to_jsonable(v) for k, v in obj.items()}
        return {"__items__": [[to_jsonable(k), to_jsonable(v)] for k, v in obj.items()]}
    if isinstance(obj, list):
        return [to_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} as JSON: {obj!r}")


def from_jsonable(data: Any) -> Any:
    if isinstance(data, list):
        return [from_jsonable(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__path__" in data:
        return Path(data["__path__"])
    if "__tuple__" in data:
        return tuple(from_jsonable(v) for v in data["__tuple__"])
    if "__items__" in data:
        return {from_jsonable(k): from_jsonable(v) for k, v in data["__items__"]}
    if "__record__" in data:
        name = data["__record__"]
        if name not in RECORD_TYPES:
            raise TypeError(
                f"unknown record type {name!r} in the round store; known: {', '.join(RECORD_TYPES)}"
            )
        return RECORD_TYPES[name](
            **{k: from_jsonable(v) for k, v in data.items() if k != "__record__"}
        )
    return {k: from_jsonable(v) for k, v in data.items()}


# --- the round store -------------------------------------------------------------------------------


class RoundStore:
    """Files of the loop under ``home``: ``rounds/<round>/`` (episodes, dataset, records) and
    ``models/<kind>/<round>/`` (checkpoints). Round keys sort chronologically as strings."""

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home).resolve()

    def round_dir(self, round_key: str) -> Path:
        return self.home / "rounds" / round_key

    def model_dir(self, kind: str, round_key: str) -> Path:
        return self.home / "models" / kind / round_key

    def record_path(self, asset: str, round_key: str) -> Path:
        return self.round_dir(round_key) / "records" / f"{asset}.json"

    def save(self, asset: str, round_key: str, obj: Any) -> Path:
        path = self.record_path(asset, round_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(to_jsonable(obj), indent=1))
        os.replace(tmp, path)
        return path

    def has(self, asset: str, round_key: str) -> bool:
        return self.record_path(asset, round_key).is_file()

    def load(self, asset: str, round_key: str) -> Any:
        path = self.record_path(asset, round_key)
        if not path.is_file():
            raise FileNotFoundError(
                f"round {round_key} has no {asset} record at {path}; materialize it first"
            )
        return from_jsonable(json.loads(path.read_text()))

    def rounds(self) -> list[str]:
        root = self.home / "rounds"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def latest_before(self, asset: str, round_key: str) -> tuple[str, Any] | None:
        """The newest earlier round that has ``asset`` (rounds that were skipped are passed over)."""
        for k in reversed([r for r in self.rounds() if r < round_key]):
            if self.has(asset, k):
                return k, self.load(asset, k)
        return None

    def current_champion(self, round_key: str) -> tuple[str, ModelArtifact] | None:
        """What the arm runs at the start of ``round_key``: the champion after the newest earlier
        round (its promoted challenger, or the champion that stayed); None before the first round."""
        for k in reversed([r for r in self.rounds() if r < round_key]):
            if self.has("champion", k):
                return k, self.load("champion", k).policy
            if self.has("real_episodes", k):  # that round ended before its promotion
                episodes: RoundEpisodes = self.load("real_episodes", k)
                return episodes.champion_round or k, episodes.champion
        return None

    def episode_dirs(self, upto: str) -> list[Path]:
        """Every folder of real episodes recorded in rounds up to and including ``upto``: the
        champion's and challenger's runs and the first round's scripted demonstrations."""
        dirs = []
        for k in self.rounds():
            if k <= upto:
                demos = self.round_dir(k) / "bootstrap" / "demos"
                dirs += [demos] if demos.is_dir() else []
                dirs += sorted(p for p in (self.round_dir(k) / "episodes").glob("*") if p.is_dir())
        return dirs

    @staticmethod
    def fresh_dir(path: Path) -> Path:
        """A derived output folder rebuilt from scratch (a re-run replaces what a failed run left)."""
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def lock(self, round_key: str, name: str) -> Iterator[None]:
        """An inter-process lock for one round (step processes may start concurrently)."""
        path = self.round_dir(round_key) / f".{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class RoundStoreIOManager(dg.ConfigurableIOManager):
    """Asset values as JSON records in the round store (paths, metrics, shas; never pickles)."""

    home: str

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = RoundStore(self.home).save(
            context.asset_key.path[-1], context.asset_partition_key, obj
        )
        context.add_output_metadata({"record": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        return RoundStore(self.home).load(context.asset_key.path[-1], context.asset_partition_key)


# --- resources ---------------------------------------------------------------------------------------


class LoopSettings(dg.ConfigurableResource):
    """Where the loop keeps its files and how big a round is."""

    home: str
    preset: str = "tiny"
    overrides_json: str = "{}"
    judge_f1_floor: float = 0.5
    world_model_tolerance: float = (
        0.25  # held-out error may grow by this fraction before the check fails
    )
    exploitation_tolerance: float = 0.2  # real failures the world model may imagine as successes
    progress: bool = True

    def round_config(self) -> RoundConfig:
        overrides = json.loads(self.overrides_json or "{}")
        if "tasks" in overrides:
            overrides["tasks"] = tuple(overrides["tasks"])
        return RoundConfig.from_preset(self.preset, **overrides)

    @property
    def store(self) -> RoundStore:
        return RoundStore(self.home)


class StationResource(dg.ConfigurableResource):
    """The arm(s): one station endpoint (``GYMNAST_STATION``) or a fleet file
    (``GYMNAST_STATIONS``, see ``pipeline.fleet``), with optional CURVE keys."""

    endpoint: str | None = None
    keys_dir: str | None = None
    timeout_s: float = 30.0
    fleet_file: str | None = None

    def fleet(self):
        from pipeline.fleet import Fleet

        if self.fleet_file:
            return Fleet.from_file(self.fleet_file)
        if not self.endpoint:
            raise dg.Failure(
                "no station: set GYMNAST_STATION (one arm) or GYMNAST_STATIONS (a fleet file)"
            )
        return Fleet.single(self.endpoint, self.keys_dir, self.timeout_s)

    @contextmanager
    def runner(self, context: dg.AssetExecutionContext) -> Iterator[Any]:
        """The fleet as the stages drive it; each arm's work holds that arm's Dagster pool slot."""
        from pipeline.fleet import FleetRunner

        yield FleetRunner(
            self.fleet(), hold_arm=lambda arm: arm_slot(context, arm), log=context.log.info
        )


@contextmanager
def arm_slot(context: dg.AssetExecutionContext, arm) -> Iterator[None]:
    """Hold the arm's pool (``robot/<name>``, one slot) while driving it: two runs never drive one
    arm, and runs on different arms go on in parallel. A run that dies frees its slots through run
    monitoring (``dagster.yaml``)."""
    storage = context.instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        yield
        return
    step_key = f"{context.asset_key.to_user_string()}@{arm.name}"
    if arm.pool not in storage.get_concurrency_keys():
        # only when missing, as Dagster's own executor does: PostgreSQL aborts the transaction of
        # a second initialisation (a duplicate key), which SQLite forgives
        storage.initialize_concurrency_limit_to_default(arm.pool)
    if storage.get_concurrency_info(arm.pool).slot_count == 0:
        raise dg.Failure(
            f"pool {arm.pool} has no slot, so station {arm.name} cannot be driven: "
            f"`dagster instance concurrency set {arm.pool} 1` (or set pools.default_limit)"
        )
    waiting = False
    while not storage.claim_concurrency_slot(arm.pool, context.run.run_id, step_key).is_claimed:
        if not waiting:
            context.log.info(f"waiting for pool {arm.pool}: another run is driving {arm.name}")
            waiting = True
        time.sleep(1.0)
    try:
        with _local_arm_lock(context.instance, arm, context.log.info):
            yield
    finally:
        storage.free_concurrency_slot_for_step(context.run.run_id, step_key)


@contextmanager
def _local_arm_lock(instance: dg.DagsterInstance, arm, log) -> Iterator[None]:
    """An OS lock on the arm beside the pool slot, for instances whose storage lives in a local
    folder. Dagster's SQLite storage claims a slot by reading a free row and then updating it by id
    without re-checking that it is still free, so two processes can both be told they hold the
    one slot; the file lock serialises them. (PostgreSQL's row locks do not have that gap, and its
    runs may be on other machines, where a local file would not reach.)"""
    root = getattr(instance, "root_directory", None)
    if root is None or not _is_sqlite(instance.event_log_storage):
        yield
        return
    path = Path(root) / "arm_locks" / f"{arm.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    log(f"waiting for the lock on {arm.name}: another process is driving it")
                    waiting = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_sqlite(storage) -> bool:
    return any("sqlite" in cls.__module__.lower() for cls in type(storage).__mro__)


class TrackingResource(dg.ConfigurableResource):
    """MLflow: the tracking server URI and the experiment the rounds go to."""

    tracking_uri: str
    experiment: str = "gymnast"

    def tracker(self):
        from pipeline.tracking import RoundTracker

        return RoundTracker(self.tracking_uri, self.experiment)
