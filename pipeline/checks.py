"""Asset checks of the round: data integrity, model regressions, and the promotion gate."""

import json
import math
from pathlib import Path

import dagster as dg

from pipeline.assets import ROUNDS, judge, real_episodes, real_evaluation, world_model
from pipeline.resources import ChallengerEvaluation, LoopSettings, RoundEpisodes
from pipeline.round.records import Evaluation, ModelArtifact
from robot_bridge.episodes import list_episodes, read_episode_header, validate_episode

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN


def episode_problems(
    ev: Evaluation, folder: Path, tasks: tuple[str, ...], per_task: int
) -> list[str]:
    """Counts per task, no partial files, every episode valid and success-labelled."""
    problems = []
    for task in tasks:
        got = ev.per_task[task].episodes if task in ev.per_task else 0
        if got != per_task:
            problems.append(f"{task}: expected {per_task} episodes, found {got}")
    complete = set(list_episodes(folder))
    partial = [p.name for p in list_episodes(folder, include_partial=True) if p not in complete]
    partial += [p.name for p in folder.glob(".*.download")]
    if partial:
        problems.append(f"partial files in {folder}: {partial}")
    for p in ev.episodes:
        problems += [f"{Path(p).name}: {m}" for m in validate_episode(p)]
        ep = read_episode_header(p)
        if ep.success is None or ep.success_source == "none":
            problems.append(f"{Path(p).name}: no success label")
    return problems


def _integrity(
    ev: Evaluation, folder: Path, settings: LoopSettings, per_task: int
) -> dg.AssetCheckResult:
    problems = episode_problems(ev, folder, settings.round_config().tasks, per_task)
    return dg.AssetCheckResult(
        passed=not problems,
        severity=ERROR,
        metadata={
            "episodes": len(ev.episodes),
            "expected_per_task": per_task,
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
    )


@dg.asset_check(
    asset=real_episodes,
    blocking=True,
    partitions_def=ROUNDS,
    description="Champion episodes: count per task, no partial files, valid and labelled.",
)
def champion_episode_integrity(
    context: dg.AssetCheckExecutionContext, settings: LoopSettings, real_episodes: RoundEpisodes
) -> dg.AssetCheckResult:
    folder = settings.store.round_dir(context.partition_key) / "episodes" / "champion"
    return _integrity(
        real_episodes.evaluation,
        folder,
        settings,
        settings.round_config().collect_episodes_per_task,
    )


@dg.asset_check(
    asset=real_evaluation,
    blocking=True,
    partitions_def=ROUNDS,
    description="Gate episodes (champion and challenger): count per task, no partial files, valid "
    "and labelled.",
)
def challenger_episode_integrity(
    context: dg.AssetCheckExecutionContext,
    settings: LoopSettings,
    real_evaluation: ChallengerEvaluation,
) -> dg.AssetCheckResult:
    episodes = settings.store.round_dir(context.partition_key) / "episodes"
    n = settings.round_config().eval_episodes_per_task
    champion = _integrity(
        real_evaluation.champion_evaluation, episodes / "gate_champion", settings, n
    )
    if not champion.passed:
        return champion
    return _integrity(real_evaluation.evaluation, episodes / "challenger", settings, n)


HELDOUT_METRIC = "next_frame_mse"


@dg.asset_check(
    asset=world_model,
    partitions_def=ROUNDS,
    description="Held-out next-frame error not worse than last round's beyond a tolerance; "
    "with it, open-loop rollouts on held-out real episodes over the GRPO horizon: PSNR per step "
    "beside repeating the real first frame (a world model worth training in beats it).",
)
def world_model_heldout_error(
    context: dg.AssetCheckExecutionContext, settings: LoopSettings, world_model: ModelArtifact
) -> dg.AssetCheckResult:
    result = _heldout_error(context, settings, world_model)
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=result.severity,
        description=result.description,
        metadata={**result.metadata, **open_loop_metadata(world_model.path)},
    )


def open_loop_metadata(model_dir: Path) -> dict:
    """The open-loop figures saved beside a world model (``stages.OPEN_LOOP_FILE``), if any."""
    from pipeline.round.stages import OPEN_LOOP_FILE

    path = Path(model_dir) / OPEN_LOOP_FILE
    if not path.is_file():
        return {}
    r = json.loads(path.read_text())
    rows = [
        f"| {k + 1} | {p:.1f} | {c:.1f} | {p - c:+.1f} |"
        for k, (p, c) in enumerate(
            zip(r["psnr_per_step"], r["copy_first_psnr_per_step"], strict=True)
        )
    ]
    table = (
        "| step | imagined PSNR dB | copy-first PSNR dB | lead |\n|---|---|---|---|\n"
        + "\n".join(rows)
    )
    return {
        "open_loop_horizon": r["horizon"],
        "psnr_over_copy_first_min_db": r["psnr_over_copy_first_min_db"],
        "open_loop_psnr": dg.MetadataValue.md(table),
    }


def _heldout_error(
    context: dg.AssetCheckExecutionContext, settings: LoopSettings, world_model: ModelArtifact
) -> dg.AssetCheckResult:
    if HELDOUT_METRIC not in world_model.metrics:
        return dg.AssetCheckResult(
            passed=False,
            severity=ERROR,
            metadata={
                "error": f"the world model reported no {HELDOUT_METRIC}; metrics: {sorted(world_model.metrics)}"
            },
        )
    now = world_model.metrics[HELDOUT_METRIC]
    previous = settings.store.latest_before("world_model", context.partition_key)
    if previous is None or HELDOUT_METRIC not in previous[1].metrics:
        return dg.AssetCheckResult(
            passed=math.isfinite(now),
            severity=ERROR,
            metadata={HELDOUT_METRIC: now, "previous_round": "none"},
        )
    before = previous[1].metrics[HELDOUT_METRIC]
    limit = before * (1 + settings.world_model_tolerance)
    return dg.AssetCheckResult(
        passed=math.isfinite(now) and now <= limit,
        severity=WARN,
        metadata={
            HELDOUT_METRIC: now,
            "previous": before,
            "previous_round": previous[0],
            "limit": limit,
            "tolerance": settings.world_model_tolerance,
        },
    )


@dg.asset_check(
    asset=judge,
    blocking=True,
    partitions_def=ROUNDS,
    description="Held-out F1 of the success judge at or above the floor (a lenient judge invites "
    "reward hacking).",
)
def judge_f1_floor(
    context: dg.AssetCheckExecutionContext, settings: LoopSettings, judge: ModelArtifact
) -> dg.AssetCheckResult:
    f1 = judge.metrics.get("heldout_f1")
    meta = {
        "floor": settings.judge_f1_floor,
        **{k: v for k, v in judge.metrics.items() if k.startswith("heldout_")},
    }
    if f1 is None or not math.isfinite(f1):
        # Undefined F1 (no positive labels or predictions held out) is no evidence either way:
        # flagged, not blocking; the promotion gate still guards the arm.
        return dg.AssetCheckResult(
            passed=False,
            severity=WARN,
            metadata={
                **meta,
                "note": "held-out F1 undefined (no positives held out); collect more episodes",
            },
        )
    return dg.AssetCheckResult(
        passed=f1 >= settings.judge_f1_floor, severity=ERROR, metadata={"heldout_f1": f1, **meta}
    )


@dg.asset_check(
    asset=real_evaluation,
    blocking=True,
    partitions_def=ROUNDS,
    additional_ins={"real_episodes": dg.AssetIn("real_episodes")},
    description="Promotion gate (one-sided exact McNemar test on paired (task, seed) real outcomes "
    "on the round's fresh gate seeds): passes when the challenger is better with confidence; a "
    "warning when it is not (the champion stays); blocks the round when the evidence is not "
    "paired or its seeds were trained on.",
)
def promotion_gate(
    context: dg.AssetCheckExecutionContext,
    settings: LoopSettings,
    real_evaluation: ChallengerEvaluation,
    real_episodes: RoundEpisodes,
) -> dg.AssetCheckResult:
    champ, chall = real_evaluation.champion_evaluation, real_evaluation.evaluation
    unpaired = sorted(set(chall.outcomes) ^ set(champ.outcomes))
    seen = sorted(set(chall.outcomes) & set(real_episodes.evaluation.outcomes))
    if not chall.outcomes or unpaired or seen:
        why = (
            f"{len(unpaired)} (task, seed) run by only one of champion and challenger: "
            f"{unpaired[:5]}"
            if unpaired or not chall.outcomes
            else f"{len(seen)} gate (task, seed) were also collected for training: {seen[:5]}"
        )
        return dg.AssetCheckResult(
            passed=False,
            severity=ERROR,
            metadata={"error": f"the gate's evidence is not paired on fresh seeds: {why}"},
        )
    from pipeline.round.statistics import decide_promotion

    d = decide_promotion(champ, chall, settings.round_config().promotion_alpha)
    return dg.AssetCheckResult(
        passed=d.promote,
        severity=WARN,
        description=d.reason,
        metadata={
            "test": d.test,
            "p_value": d.p_value,
            "alpha": settings.round_config().promotion_alpha,
            "champion_success": d.champion_rate,
            "challenger_success": d.challenger_rate,
            "champion_only": d.discordant["champion_only"],
            "challenger_only": d.discordant["challenger_only"],
            "decision": "promote" if d.promote else "champion stays",
        },
    )


@dg.asset_check(
    asset=real_evaluation,
    partitions_def=ROUNDS,
    additional_ins={"world_model": dg.AssetIn("world_model"), "judge": dg.AssetIn("judge")},
    description="World-model exploitation: the challenger's real episodes replayed in this round's "
    "world model and judged; warns when too many real failures look like successes in imagination "
    "(GRPO then learns from hallucinated rewards).",
)
def world_model_exploitation(
    context: dg.AssetCheckExecutionContext,
    settings: LoopSettings,
    real_evaluation: ChallengerEvaluation,
    world_model: ModelArtifact,
    judge: ModelArtifact,
) -> dg.AssetCheckResult:
    from pipeline.round.stages import world_model_exploitation as measure

    m = measure(world_model.path, judge.path, real_evaluation.evaluation.episodes)
    rate = m["false_success_rate"]
    return dg.AssetCheckResult(
        passed=rate is None or rate <= settings.exploitation_tolerance,
        severity=WARN,
        metadata={
            "false_success_rate": "no real failure replayed" if rate is None else rate,
            "tolerance": settings.exploitation_tolerance,
            **{k: m[k] for k in ("tp", "fp", "fn", "tn", "n", "max_steps")},
        },
    )


ROUND_CHECKS = [
    champion_episode_integrity,
    challenger_episode_integrity,
    world_model_heldout_error,
    judge_f1_floor,
    promotion_gate,
    world_model_exploitation,
]
