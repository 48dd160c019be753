r"""The improvement round as Dagster assets, partitioned by round.

    real_episodes -> dataset -> world_model (+ prev) ---> challenger -> real_evaluation -> champion (+ prev)
                             \-> judge (+ prev) ----------^                [promotion_gate]

A round is one window of a cron schedule (``GYMNAST_ROUND_CRON``, default nightly at 02:00, in
``GYMNAST_TIMEZONE``). ``world_model``, ``judge`` and ``champion`` depend on their own previous
round (``TimeWindowPartitionMapping(-1, -1)``), so the lineage graph shows round-to-round flow.

Why the champion reaches the next round's ``real_episodes`` through the round store and not
through an edge: Dagster's asset graph must be acyclic between *different* assets; only an asset's
dependency on its own earlier partitions may cross rounds. ``real_episodes`` therefore asks the
store for the champion after the newest earlier round (``RoundStore.current_champion``), which is
exactly ``champion``'s previous partition (or, if that round stopped before promotion, the
champion it collected with); it records which round that was in its metadata.

Asset bodies only wire resources to the typed stage functions in ``pipeline.round``.
"""

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from pipeline.cluster import step_tags
from pipeline.previews import (
    common_metadata,
    evaluation_metadata,
    evaluation_metrics,
    frame_strip,
    gate_metadata,
    model_metadata,
    preview_md,
    success_chart,
    trained_in_preview,
)
from pipeline.resources import (
    ChallengerEvaluation,
    ChampionRecord,
    LoopSettings,
    RoundEpisodes,
    StationResource,
    TrackingResource,
)
from pipeline.rollout_strip import publish_strip
from pipeline.round import launch, stages
from pipeline.round.config import RoundConfig
from pipeline.round.records import DatasetInfo, ModelArtifact
from pipeline.round.statistics import decide_promotion
from pipeline.seeds import RoundSeeds
from robot_bridge.client import StationError
from robot_bridge.dispatch import DispatchError
from robot_bridge.episodes import episode_id_of

# allow_nonexistent_upstream_partitions (beta) and partitioned asset checks (preview) are used
# knowingly; without this every step process repeats both warnings in the run log.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

ROUND_FMT = "%Y-%m-%d_%H%M"  # no ":" (a folder name that Python tools accept)


def round_partitions() -> dg.TimeWindowPartitionsDefinition:
    """One partition per scheduled round; cron, timezone and first round from the environment."""
    return dg.TimeWindowPartitionsDefinition(
        cron_schedule=os.environ.get("GYMNAST_ROUND_CRON", "0 2 * * *"),
        timezone=os.environ.get("GYMNAST_TIMEZONE", "UTC"),
        start=os.environ.get("GYMNAST_ROUNDS_START", "2026-01-01_0000"),
        fmt=ROUND_FMT,
    )


ROUNDS = round_partitions()
PREVIOUS_ROUND = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
)
GROUP = "round"
# No step is retried automatically: steps that move the arm must not be (an e-stop or a dropped
# station is looked at by a person first; a re-run resumes without repeating finished episodes),
# and training on a CPU fails deterministically (data, config), so a retry only hides the error.
ARM_TAGS = {"gymnast/moves_arm": "true"}
# The assets that drive arms hold a pool per arm (``robot/<station name>``, one slot each) while
# they drive it (``resources.arm_slot``), not one pool for the asset: two runs never drive one arm,
# and runs on different arms of a fleet go on in parallel.


def round_seeds(cfg: RoundConfig, round_key: str) -> RoundSeeds:
    """The round's seed blocks: one per purpose, never shared with another round or purpose."""
    return RoundSeeds.for_round(round_key, ROUND_FMT, cfg.seed)


def seed_params(cfg: RoundConfig, round_key: str) -> dict[str, str]:
    """The blocks this round uses, as MLflow params (``seeds.gate = first-last`` ...)."""
    return round_seeds(cfg, round_key).to_params(
        {
            "demo": cfg.demo_episodes_per_task,
            "collect": cfg.collect_episodes_per_task,
            "explore": cfg.explore_episodes_per_task,
            "check": cfg.snapshot_check_episodes_per_task if cfg.challenger_snapshots > 1 else 0,
            "gate": cfg.eval_episodes_per_task,
        }
    )


# --- helpers the bodies share -----------------------------------------------------------------------


@contextmanager
def tracked_stage(
    context: dg.AssetExecutionContext,
    settings: LoopSettings,
    tracking: TrackingResource,
    stage: str,
) -> Iterator:
    """The round's MLflow run (made on first use) and a nested run for this stage."""
    r = context.partition_key
    tracker = tracking.tracker()
    with settings.store.lock(r, "mlflow"):
        cfg = settings.round_config()
        parent = tracker.round_run(
            r, {"round": r, "preset": settings.preset, **cfg.to_dict(), **seed_params(cfg, r)}
        )
    with tracker.stage(r, stage, parent_run_id=parent) as run:
        context.log.info(f"MLflow run for {stage}: {run.link}")
        yield tracker, run


@contextmanager
def on_the_arm(stage: str, round_key: str) -> Iterator[None]:
    """A station that is unreachable, drops mid-job or reports an e-stop fails the step with one
    clear message, never retried; what was recorded stays (``run_on_station`` copies episodes as
    they finish), and a re-run resumes."""
    try:
        yield
    except (DispatchError, StationError) as e:
        raise dg.Failure(
            description=f"{stage} of round {round_key} stopped on the station: {e}. Re-run the round to "
            "resume: finished episodes are kept and not collected again.",
            metadata={"episodes_kept_this_attempt": len(getattr(e, "episodes", []))},
            allow_retries=False,
        ) from e


def log_model(
    tracker, run, kind: str, art: ModelArtifact, round_key: str, aliases: tuple[str, ...]
) -> str:
    """Checkpoint + previews as artifacts of the stage run, and a registered-model version."""
    run.log_metrics(art.metrics)
    run.log_artifacts(art.path, kind)
    for p in art.previews:
        run.log_artifact(p, "previews")
    return tracker.version_for_sha(kind, art.sha256) or tracker.register(
        kind, run, kind, aliases=aliases, tags={"sha256": art.sha256, "round": round_key}
    )


def _started() -> float:
    return time.monotonic()


# --- the round ---------------------------------------------------------------------------------------


@dg.asset(
    partitions_def=ROUNDS,
    group_name=GROUP,
    op_tags={**ARM_TAGS, **step_tags("real_episodes")},
    kinds={"robot"},
    description="The champion's episodes this round, collected on the station (its real evaluation, "
    "too); the first round bootstraps a champion from scripted demonstrations (SFT).",
)
def real_episodes(
    context: dg.AssetExecutionContext,
    settings: LoopSettings,
    station: StationResource,
    tracking: TrackingResource,
) -> dg.Output[RoundEpisodes]:
    r, cfg, store, t0 = context.partition_key, settings.round_config(), settings.store, _started()
    with (
        tracked_stage(context, settings, tracking, "real_episodes") as (tracker, run),
        station.runner(context) as arms,
        on_the_arm("collection", r),
    ):
        champion_round, champion = current_champion(context, settings, arms, tracker, run)
        ev = stages.collect_episodes(
            arms,
            champion.path,
            store.round_dir(r) / "episodes" / "champion",
            cfg,
            seed=round_seeds(cfg, r).collect,
            progress=settings.progress,
        )
        run.log_metrics(evaluation_metrics(ev, "champion"))
        explored = stages.explore_on_station(
            arms,
            champion.path,
            store.round_dir(r) / "episodes" / "explore",
            store.round_dir(r) / "explore_policy",
            cfg,
            seed=round_seeds(cfg, r).explore,
            progress=settings.progress,
        )
        if explored is not None:
            run.log_metrics(evaluation_metrics(explored, "explore"))
        preview = frame_strip(ev.episodes[0], store.round_dir(r) / "previews" / "real_episodes.png")
        run.log_artifact(preview, "previews")
    return dg.Output(
        RoundEpisodes(champion, champion_round, ev, round_seeds(cfg, r).collect),
        metadata={
            **evaluation_metadata(ev),
            "champion_from_round": champion_round or "bootstrapped this round",
            "preview": preview_md(preview, "a real episode of the champion"),
            **common_metadata(run, t0, champion.sha256),
        },
    )


def current_champion(
    context, settings: LoopSettings, arms, tracker, run
) -> tuple[str | None, ModelArtifact]:
    """The champion after the newest earlier round, or (first round) a bootstrapped one."""
    r, store = context.partition_key, settings.store
    found = store.current_champion(r)
    if found is not None:
        context.log.info(
            f"collecting with the champion of round {found[0]} ({found[1].sha256[:12]})"
        )
        return found
    if not store.has(
        "bootstrap", r
    ):  # a re-run reuses it, so the arm never re-collects for a new sha
        context.log.info(
            "no earlier round: bootstrapping a champion (scripted demonstrations -> SFT)"
        )
        cfg = settings.round_config()
        art = stages.bootstrap_champion(
            arms,
            store.round_dir(r) / "bootstrap",
            cfg,
            progress=settings.progress,
            demo_seed=round_seeds(cfg, r).demo,
            dataset=store.home / "dataset",  # the round's dataset stage then finds them there
        )
        store.save("bootstrap", r, art)
    art = store.load("bootstrap", r)
    log_model(tracker, run, "policy", art, r, aliases=("champion",))
    return None, art


@dg.asset(
    partitions_def=ROUNDS,
    group_name=GROUP,
    kinds={"lerobot"},
    description="The round's training episodes in the loop's one LeRobotDataset (v3), with action "
    "statistics: each round appends only the episodes it does not hold yet; the world model and "
    "the judge train from it.",
)
def dataset(
    context: dg.AssetExecutionContext,
    settings: LoopSettings,
    tracking: TrackingResource,
    real_episodes: RoundEpisodes,
) -> dg.Output[DatasetInfo]:
    r, store, t0 = context.partition_key, settings.store, _started()
    with tracked_stage(context, settings, tracking, "dataset") as (_, run):
        # one dataset for every round, appended to (earlier rounds' files are never rewritten)
        info = stages.build_dataset(training_dirs(store, r), store.home / "dataset")
        run.log_metrics(
            {"episodes": info.n_episodes, "frames": info.n_frames, "appended": info.new_episodes}
        )
        run.log_artifact(info.stats_path, "dataset")
    return dg.Output(
        info,
        metadata={
            "episodes": info.n_episodes,
            "appended_episodes": info.new_episodes,
            "frames": info.n_frames,
            "per_task": dg.MetadataValue.json(info.per_task),
            "path": dg.MetadataValue.path(str(info.path)),
            "preview": preview_md(
                store.round_dir(r) / "previews" / "real_episodes.png", "newest real episode"
            ),
            **common_metadata(run, t0),
        },
    )


def training_dirs(store, round_key: str) -> list[Path]:
    """Real episodes of every earlier round (champion and challenger runs), bootstrap demonstrations,
    and this round's champion and exploration episodes (this round's challenger episodes are next
    round's data)."""
    here = store.round_dir(round_key)
    earlier = [d for d in store.episode_dirs(upto=round_key) if here not in d.parents]
    return earlier + [
        d
        for d in (
            here / "bootstrap" / "demos",
            here / "episodes" / "champion",
            here / "episodes" / "explore",
        )
        if d.is_dir()
    ]


@dg.asset(
    partitions_def=ROUNDS,
    group_name=GROUP,
    pool="gpu",
    op_tags=step_tags("world_model"),
    kinds={"pytorch"},
    deps=[dg.AssetDep("world_model", partition_mapping=PREVIOUS_ROUND)],
    description="The action-conditioned video world model, warm-started from last round's and "
    "finetuned on the new data; held-out error and an imagined-vs-real preview.",
)
def world_model(
    context: dg.AssetExecutionContext,
    settings: LoopSettings,
    tracking: TrackingResource,
    dataset: DatasetInfo,
) -> dg.Output[ModelArtifact]:
    return _refresh(context, settings, tracking, "world_model", dataset)


@dg.asset(
    partitions_def=ROUNDS,
    group_name=GROUP,
    pool="gpu",
    op_tags=step_tags("judge"),
    kinds={"pytorch"},
    deps=[dg.AssetDep("judge", partition_mapping=PREVIOUS_ROUND)],
    description="The VLM success judge, refreshed on the success-labelled real episodes (with "
    "judge_replays, also on them replayed in this round's world model); held-out F1.",
)
def judge(
    context: dg.AssetExecutionContext,
    settings: LoopSettings,
    tracking: TrackingResource,
    dataset: DatasetInfo,
    world_model: ModelArtifact,
) -> dg.Output[ModelArtifact]:
    return _refresh(context, settings, tracking, "judge", dataset, world_model=world_model.path)


def _refresh(
    context,
    settings: LoopSettings,
    tracking: TrackingResource,
    kind: str,
    dataset: DatasetInfo,
    **inputs,
) -> dg.Output:
    """World model and judge: warm start from the newest earlier round's checkpoint, if any; the
    round's episodes read from the LeRobotDataset (``dataset``), not the HDF5 files. On
    ``train_processes`` data-parallel processes (``pipeline.round.launch``). ``inputs``: the
    stage's other arguments (the judge's: this round's world model)."""
    from pipeline.lerobot_dataset import DatasetEpisodes

    r, store, t0 = context.partition_key, settings.store, _started()
    previous = store.latest_before(kind, r)
    ids = tuple(episode_id_of(p) for p in dataset.episode_files)
    with tracked_stage(context, settings, tracking, kind) as (tracker, run):
        run.set_tags({"warm_start_from": previous[0] if previous else "scratch"})
        art = launch.run_stage(
            kind,
            settings.round_config(),
            store.round_dir(r) / "launch",
            sources=[DatasetEpisodes(dataset.path, ids)],
            previous=previous[1].path if previous else None,
            out_dir=store.fresh_dir(store.model_dir(kind, r)),
            progress=settings.progress,
            **inputs,
        )
        version = log_model(tracker, run, kind, art, r, aliases=("challenger",))
    return dg.Output(
        art,
        metadata={
            "warm_start_from": previous[0] if previous else "scratch (first round)",
            "registered_version": f"{kind} v{version}",
            **model_metadata(art, store.round_dir(r) / "previews"),
            **common_metadata(run, t0, art.sha256),
        },
    )


@dg.asset(
    partitions_def=ROUNDS,
    group_name=GROUP,
    pool="gpu",
    op_tags=step_tags("challenger"),
    kinds={"pytorch"},
    description="The challenger: the champion GRPO-finetuned in the world model, rewarded by the judge, "
    "from real initial frames.",
)
def challenger(
    context: dg.AssetExecutionContext,
    settings: LoopSettings,
    tracking: TrackingResource,
    real_episodes: RoundEpisodes,
    dataset: DatasetInfo,
    world_model: ModelArtifact,
    judge: ModelArtifact,
) -> dg.Output[ModelArtifact]:
    r, store, t0 = context.partition_key, settings.store, _started()
    cfg = settings.round_config()
    strip = store.round_dir(r) / "previews" / "grpo_rollouts.png"  # first and last step's
    with tracked_stage(context, settings, tracking, "challenger") as (tracker, run):
        run.set_tags({"champion_sha256": real_episodes.champion.sha256})

        def log_step(s) -> None:  # extra: ref_kl, success/<task>, kept/<task>
            metrics = {k: v for k, v in vars(s).items() if k not in ("step", "extra")}
            run.log_metrics(metrics | s.extra, step=s.step)

        # live metrics in one process; a launch's ranks leave their history on disk instead
        live = launch.processes_for(cfg) == 1
        art = launch.run_stage(
            "challenger",
            cfg,
            store.round_dir(r) / "launch",
            champion=real_episodes.champion.path,
            world_model=world_model.path,
            judge=judge.path,
            episode_dirs=training_dirs(store, r),
            out_dir=store.fresh_dir(store.model_dir("policy", r)),
            progress=settings.progress,
            rollout_strip=strip,
            **({"on_step": log_step} if live else {}),
        )
        if not live:
            for s in stages.grpo_history(art.path):
                log_step(s)
        version = log_model(tracker, run, "policy", art, r, aliases=("challenger",))
        rollouts = publish_strip(strip, run)
    return dg.Output(
        art,
        metadata={
            "registered_version": f"policy v{version}",
            "grew_from_champion": real_episodes.champion.sha256,
            **model_metadata(art, store.round_dir(r) / "previews"),
            **trained_in_preview(world_model, store.round_dir(r) / "previews"),
            **rollouts,  # the strip of imagined rollouts, scored: where reward hacking shows
            **common_metadata(run, t0, art.sha256),
        },
    )


@dg.asset(
    partitions_def=ROUNDS,
    group_name=GROUP,
    op_tags={**ARM_TAGS, **step_tags("real_evaluation")},
    kinds={"robot"},
    description="The promotion gate's evidence: champion and challenger on this round's gate "
    "seeds, which no collection, exploration, check or training stage of any round uses (paired, "
    "AutoEval-style). Its episodes are next round's data.",
)
def real_evaluation(
    context: dg.AssetExecutionContext,
    settings: LoopSettings,
    station: StationResource,
    tracking: TrackingResource,
    real_episodes: RoundEpisodes,
    challenger: ModelArtifact,
) -> dg.Output[ChallengerEvaluation]:
    r, cfg, store, t0 = context.partition_key, settings.round_config(), settings.store, _started()
    with (
        tracked_stage(context, settings, tracking, "real_evaluation") as (tracker, run),
        station.runner(context) as arms,
        on_the_arm("real evaluation", r),
    ):
        snapshot = {}
        if cfg.challenger_snapshots > 1:
            challenger, snapshot = checked_challenger(arms, tracker, run, challenger, cfg, store, r)
        gate = round_seeds(cfg, r).gate
        champion_ev = stages.evaluate_on_station(
            arms,
            real_episodes.champion.path,
            store.round_dir(r) / "episodes" / "gate_champion",
            cfg,
            seed=gate,
            progress=settings.progress,
        )
        ev = stages.evaluate_on_station(
            arms,
            challenger.path,
            store.round_dir(r) / "episodes" / "challenger",
            cfg,
            seed=gate,
            progress=settings.progress,
        )
        run.log_metrics(evaluation_metrics(champion_ev, "gate_champion"))
        run.log_metrics(evaluation_metrics(ev, "challenger"))
        preview = frame_strip(
            ev.episodes[0], store.round_dir(r) / "previews" / "real_evaluation.png"
        )
        run.log_artifact(preview, "previews")
    return dg.Output(
        ChallengerEvaluation(challenger, ev, gate, champion_ev),
        metadata={
            **gate_metadata(ChallengerEvaluation(challenger, ev, gate, champion_ev)),
            **({"snapshot_check": dg.MetadataValue.json(snapshot)} if snapshot else {}),
            "preview": preview_md(preview, "a real episode of the challenger"),
            **common_metadata(run, t0, challenger.sha256),
        },
    )


def checked_challenger(arms, tracker, run, challenger, cfg, store, r):
    """The GRPO snapshot with most real successes on check seeds (``stages.select_challenger``);
    its check runs join the round's episodes (next round's data). A snapshot other than the final
    policy is registered and takes the ``challenger`` alias: what is evaluated is what is named."""
    chosen, check = stages.select_challenger(
        arms,
        challenger.path,
        store.round_dir(r) / "episodes",
        cfg,
        seed=round_seeds(cfg, r).check,
        progress=False,
    )
    run.log_dict(check, "snapshot_check.json")
    run.set_tags({"challenger_snapshot": check["chosen"]})
    if chosen != challenger.path:
        challenger = ModelArtifact(
            chosen, stages.checkpoint_sha256(chosen), challenger.metrics, challenger.previews
        )
        version = log_model(tracker, run, "policy", challenger, r, aliases=("challenger",))
        tracker.set_alias("policy", "challenger", version)  # also when it was registered before
    return challenger, check


@dg.asset(
    partitions_def=ROUNDS,
    group_name=GROUP,
    kinds={"robot"},
    deps=[dg.AssetDep("champion", partition_mapping=PREVIOUS_ROUND)],
    description="Promotion and dispatch: the challenger replaces the champion only if the one-sided "
    "exact McNemar test on paired real outcomes says it is better; otherwise the champion "
    "stays. Either way the round is recorded.",
)
def champion(
    context: dg.AssetExecutionContext,
    settings: LoopSettings,
    station: StationResource,
    tracking: TrackingResource,
    real_episodes: RoundEpisodes,
    real_evaluation: ChallengerEvaluation,
) -> dg.Output[ChampionRecord]:
    r, cfg, t0 = context.partition_key, settings.round_config(), _started()
    decision = decide_promotion(
        real_evaluation.champion_evaluation, real_evaluation.evaluation, cfg.promotion_alpha
    )
    new = real_evaluation.challenger if decision.promote else real_episodes.champion
    with (
        tracked_stage(context, settings, tracking, "champion") as (tracker, run),
        station.runner(context) as arms,
        on_the_arm("dispatch of the champion", r),
    ):
        arms.upload_checkpoint(new.path)  # dispatch: every station holds what its arm runs next
        if decision.promote:
            promote_aliases(tracker, new, r)
        record = ChampionRecord(new, decision.promote, decision, real_episodes.champion.sha256)
        metrics = {
            "promoted": float(decision.promote),
            "p_value": decision.p_value,
            "champion_success": decision.champion_rate,
            "challenger_success": decision.challenger_rate,
        }
        run.log_metrics(metrics)
        run.set_tags({"decision": decision.reason})
        chart = success_chart(settings.store, r, real_evaluation, decision.promote)
        run.log_artifact(chart, "charts")
        tracker.log_round_artifact(r, chart, "charts")
        tracker.finish_round(
            r, metrics=metrics, tags={"promoted": decision.promote, "decision": decision.reason}
        )
    return dg.Output(
        record,
        metadata={
            "promoted": decision.promote,
            "test": decision.test,
            "p_value": decision.p_value,
            "champion_success": decision.champion_rate,
            "challenger_success": decision.challenger_rate,
            "reason": decision.reason,
            "per_task": dg.MetadataValue.json(decision.per_task),
            "success_over_rounds": preview_md(
                chart, "success over rounds: champion vs challenger, 95% Wilson intervals"
            ),
            "preview": preview_md(
                settings.store.round_dir(r)
                / "previews"
                / ("real_evaluation.png" if decision.promote else "real_episodes.png"),
                "the champion on the arm",
            ),
            **common_metadata(run, t0, new.sha256),
        },
    )


def promote_aliases(tracker, policy: ModelArtifact, round_key: str) -> None:
    """``champion`` moves to the promoted policy and the world model and judge it was trained with."""
    tracker.set_alias("policy", "champion", tracker.version_for_sha("policy", policy.sha256))
    for kind in ("world_model", "judge"):
        version = tracker.alias_version(kind, "challenger")
        if version is not None:
            tracker.set_alias(kind, "champion", version)


ROUND_ASSETS = [real_episodes, dataset, world_model, judge, challenger, real_evaluation, champion]
