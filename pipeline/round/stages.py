"""The stages of one improvement round (collect, evaluate, refresh, train, select), as typed
functions.

Dagster assets, ``gymnast bench learning`` and the CLI all call these; each takes paths and a
``RoundConfig`` and returns a small result record, so orchestration stays thin and every stage
can be run and tested on its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import seeds
from pipeline.fleet import FleetRunner, run_policy
from pipeline.round.config import RoundConfig
from pipeline.round.episodes import (
    episode_paths,
    external_episodes,
    load_episode_headers,
    load_episodes,
    split_by_label,
    split_holdout,
)
from pipeline.round.records import DatasetInfo, Evaluation, ModelArtifact
from robot_bridge.checkpoints import build_manifest
from robot_bridge.client import StationClient
from robot_bridge.dispatch import DispatchResult
from robot_bridge.episodes import (
    Episode,
    EpisodeHeader,
    episode_id_of,
    read_episode,
    read_episode_header,
)
from robot_bridge.policies import write_policy_config

if TYPE_CHECKING:
    from pipeline.lerobot_dataset import DatasetEpisodes


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch (``pipeline.round.launch``), or a single process: the one
    that saves, evaluates and returns the stage's artifact (torch imported only when asked)."""
    from policy.distributed import is_main_process as main

    return main()


def barrier() -> None:
    from policy.distributed import barrier as wait_for_every_rank

    wait_for_every_rank()


Station = StationClient | FleetRunner  # one arm's client, or a fleet run as one


# --- helpers ----------------------------------------------------------------------------------


def checkpoint_sha256(path: Path) -> str:
    return build_manifest(path)[0]


def _evaluation(result: DispatchResult) -> Evaluation:
    outcomes = {}
    for p in result.episodes:
        ep = read_episode_header(p)
        if ep.success is not None:
            outcomes[(ep.task, int(ep.seed))] = bool(ep.success)
    return Evaluation(result.checkpoint_sha256, result.episodes, result.per_task, outcomes)


# --- stages -----------------------------------------------------------------------------------


def bootstrap_champion(
    station: Station,
    workdir: Path,
    cfg: RoundConfig,
    progress: bool = True,
    *,
    demo_seed: int | None = None,
    dataset: Path | None = None,
    policy_dir: Path | None = None,
    keep: int = 1,
) -> ModelArtifact:
    """No champion yet: scripted-expert demonstrations on the station, then SFT.

    ``demo_seed``: the demonstrations' first seed (default: the bench's demonstration range).
    SFT reads the demonstrations back from the LeRobotDataset ``dataset`` (appended to; default
    ``workdir/demos_dataset``), as the world model and the judge read theirs. The policy goes
    to ``policy_dir`` (default ``workdir/policy``); with ``keep`` > 1, ``keep`` - 1 earlier
    policies of the same run go beside it, where ``challenger_candidates`` finds them (the
    bench's SFT+select checks them)."""
    from policy.config import VLAConfig
    from policy.sft import SFTConfig, train_sft_keeping

    workdir = Path(workdir)
    expert = write_policy_config(
        workdir / "scripted_expert",
        "scripted_expert",
        noise=cfg.demo_noise,
        mistake_prob=cfg.demo_mistake_prob,
        seed=cfg.seed,
    )
    ran = run_policy(
        station,
        expert,
        cfg.tasks,
        cfg.demo_episodes_per_task,
        workdir / "demos",
        seed=cfg.seed + seeds.BENCH_DEMO if demo_seed is None else demo_seed,
        progress=progress,
    )
    # this configuration's demonstrations only: the folder may hold more from an earlier, larger run
    demos = dataset_episodes(ran.episodes, dataset or workdir / "demos_dataset")
    successful = [e for e in demos if e.success]
    if not successful:
        raise RuntimeError(
            f"none of the {len(demos)} scripted demonstrations succeeded; nothing to imitate"
        )
    out = Path(policy_dir) if policy_dir is not None else workdir / "policy"
    snapshots = snapshots_dir(out)
    if is_main_process():
        shutil.rmtree(snapshots, ignore_errors=True)  # an earlier run's, of other settings
    policy, metrics = train_sft_keeping(
        VLAConfig.from_preset(cfg.model_preset),
        successful,
        SFTConfig(steps=cfg.sft_steps, seed=cfg.seed, device=cfg.device, precision=cfg.precision),
        keep,
        snapshots,
        progress=progress,
    )
    # Launched data-parallel (torchrun), every rank trained the same policy: one writes it, the
    # others wait for it before they hash it.
    if is_main_process():
        policy.save_pretrained(out)
    barrier()
    return ModelArtifact(
        Path(out),
        checkpoint_sha256(Path(out)),
        scalar_metrics(metrics)
        | {"demos": len(demos), "demos_successful": len(successful), "kept": keep},
    )


def collect_episodes(
    station: Station,
    policy_dir: Path,
    dest: Path,
    cfg: RoundConfig,
    *,
    episodes_per_task: int | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> Evaluation:
    """Run a policy checkpoint on the station (resumable: finished episodes are not run again)."""
    n = cfg.collect_episodes_per_task if episodes_per_task is None else episodes_per_task
    result = run_policy(
        station,
        policy_dir,
        cfg.tasks,
        n,
        dest,
        seed=cfg.seed if seed is None else seed,
        progress=progress,
    )
    return _evaluation(result)


def explore_on_station(
    station: Station,
    policy_dir: Path,
    dest: Path,
    sampled_dir: Path,
    cfg: RoundConfig,
    *,
    seed: int | None = None,
    progress: bool = True,
) -> Evaluation | None:
    """Dyna exploration: the policy sampled at ``cfg.explore_temperature`` on the station, through
    a copy of the checkpoint (``sampled_dir``) that decodes so; ``None`` when the config asks for
    none. ``seed`` is the first seed (default: the bench's exploration range, disjoint from the
    greedy collection's)."""
    if cfg.explore_episodes_per_task == 0:
        return None
    sampled = sampling_checkpoint(Path(policy_dir), Path(sampled_dir), cfg.explore_temperature)
    return collect_episodes(
        station,
        sampled,
        dest,
        cfg,
        episodes_per_task=cfg.explore_episodes_per_task,
        seed=cfg.seed + seeds.BENCH_EXPLORE if seed is None else seed,
        progress=progress,
    )


def sampling_checkpoint(src: Path, dst: Path, temperature: float) -> Path:
    """A copy of a policy checkpoint whose station jobs decode at ``temperature`` (same weights)."""
    meta = json.loads((Path(src) / "config.json").read_text())
    if meta.get("policy_type") != "vla":
        raise ValueError(
            f"exploration samples a VLA policy at a temperature; {src} is a "
            f"{meta.get('policy_type')!r} policy (set explore_episodes_per_task=0 for it)"
        )
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    meta["station_temperature"] = float(temperature)
    (dst / "config.json").write_text(json.dumps(meta, indent=2))
    return dst


def evaluate_on_station(
    station: Station,
    policy_dir: Path,
    dest: Path,
    cfg: RoundConfig,
    *,
    seed: int | None = None,
    progress: bool = True,
) -> Evaluation:
    """AutoEval-style real evaluation: ``eval_episodes_per_task`` greedy episodes per task from
    ``seed`` on. The loop's gate runs champion and challenger on the same fresh seeds (paired)."""
    return collect_episodes(
        station,
        policy_dir,
        dest,
        cfg,
        episodes_per_task=cfg.eval_episodes_per_task,
        seed=seed,
        progress=progress,
    )


def build_dataset(episode_dirs: Sequence[Path], dataset_dir: Path) -> DatasetInfo:
    """The round's training episodes in the loop's LeRobotDataset (v3) at ``dataset_dir``: the
    ones it does not hold yet are appended (earlier rounds' files are not touched, a re-run adds
    nothing), with action statistics. The record lists the round's episodes: what the world
    model and the judge train on (``DatasetEpisodes``), even if later rounds appended more."""
    from pipeline.lerobot_dataset import ACTION_STATS_FILE, append_episodes, dataset_entries

    paths = episode_paths(episode_dirs)
    if not paths:
        raise ValueError(f"no complete episodes under {[str(d) for d in episode_dirs]}")
    appended = append_episodes(paths, dataset_dir, repo_id="gymnast/rounds", use_videos=True)
    entries = dataset_entries(dataset_dir)
    per_task: dict[str, dict] = {}
    n_frames = 0
    for p in paths:
        ep = entries[episode_id_of(p)]
        n_frames += ep["num_frames"]
        t = per_task.setdefault(ep["task"], {"episodes": 0, "successes": 0, "failures": 0})
        t["episodes"] += 1
        t["successes"] += int(ep["success"] is True)
        t["failures"] += int(ep["success"] is False)
    return DatasetInfo(
        Path(dataset_dir),
        len(paths),
        n_frames,
        per_task,
        Path(dataset_dir) / ACTION_STATS_FILE,
        paths,
        len(appended.added),
    )


def dataset_episodes(paths: Sequence[Path], dataset_dir: Path) -> list[Episode]:
    """These episode files as training reads them: appended to the LeRobotDataset (if not in it
    yet) and read back from it."""
    from pipeline.lerobot_dataset import DatasetEpisodes, append_episodes

    append_episodes(paths, dataset_dir)
    ids = [episode_id_of(p) for p in paths]
    by_id = {e.episode_id: e for e in DatasetEpisodes(Path(dataset_dir), tuple(ids)).load()}
    return [by_id[i] for i in ids]


def refresh_world_model(
    sources: Sequence[Path | DatasetEpisodes],
    previous: Path | None,
    out_dir: Path,
    cfg: RoundConfig,
    progress: bool = True,
) -> ModelArtifact | None:
    """Train (or warm-start from last round and finetune) the world model; held-out error and a
    preview. ``sources``: see ``load_episodes`` (the loop passes its round's ``DatasetEpisodes``);
    ``cfg.external_datasets`` join the training split (held-out error stays on our arm's data)."""
    from world_model.evaluate import evaluate_world_model, rollout_error, write_side_by_side_video
    from world_model.train import WorldModelTrainConfig, train_world_model

    episodes = load_episodes(sources)
    train, held = split_holdout(episodes, cfg.holdout_fraction)
    train += external_episodes(cfg)
    steps = cfg.world_model_finetune_steps if previous is not None else cfg.world_model_steps
    model, metrics = train_world_model(
        cfg.world_model_config(),
        train,
        WorldModelTrainConfig(
            steps=steps, seed=cfg.seed, device=cfg.device, precision=cfg.precision
        ),
        progress=progress,
        init_from=previous,
    )
    if not is_main_process():
        return None  # a torchrun launch's other ranks: rank 0 saves and evaluates
    out = Path(model.save_pretrained(out_dir))
    horizon = grpo_horizon_steps(cfg)  # what GRPO imagines, judged against the real episode
    # 16 episodes: on 4, a lever's effect on the worst step was within the draw's own spread
    # (docs/experiments.md, world-model levers); a rollout of 16 costs seconds
    evaluation = evaluate_world_model(
        model, held, horizon=horizon, max_windows=64, max_episodes=16, seed=cfg.seed
    )
    (out / OPEN_LOOP_FILE).write_text(json.dumps(open_loop_record(evaluation), indent=1))
    sample = rollout_error(model, held[:1], horizon=horizon, max_episodes=1, seed=cfg.seed)
    preview = write_side_by_side_video(
        sample["real"][0], sample["imagined"][0], out / "preview.mp4"
    )
    return ModelArtifact(
        out,
        checkpoint_sha256(out),
        scalar_metrics(metrics) | scalar_metrics(evaluation),
        [Path(preview)],
    )


OPEN_LOOP_FILE = "open_loop.json"  # beside a world model: its open-loop PSNR per step


def grpo_horizon_steps(cfg: RoundConfig) -> int:
    """Imagined frames per GRPO rollout: policy calls x the VLA's action chunk."""
    from policy.config import VLAConfig
    from policy.grpo import GRPOConfig

    chunks = cfg.grpo_overrides.get("horizon_chunks", GRPOConfig.from_preset("tiny").horizon_chunks)
    return int(chunks) * VLAConfig.from_preset(cfg.model_preset).chunk_size


def open_loop_record(evaluation: dict) -> dict:
    """Open-loop rollouts on held-out real episodes: PSNR per step beside copy-first-frame."""
    return {
        "horizon": evaluation["rollout_horizon"],
        "psnr_per_step": evaluation["rollout_psnr_per_step"],
        "copy_first_psnr_per_step": evaluation["rollout_copy_first_psnr_per_step"],
        "psnr_over_copy_first_min_db": evaluation["rollout_psnr_over_copy_first_min_db"],
    }


def refresh_judge(
    sources: Sequence[Path | DatasetEpisodes],
    previous: Path | None,
    out_dir: Path,
    cfg: RoundConfig,
    progress: bool = True,
    world_model: Path | None = None,
) -> ModelArtifact | None:
    """Finetune the success judge on the success-labelled real episodes; F1 on held-out ones.
    ``sources`` as for ``refresh_world_model``; labelled episodes of ``cfg.external_datasets``
    join the training split only (threshold and held-out F1 stay on our arm's data). With
    ``cfg.judge_replays``, the training episodes replayed in ``world_model`` (this round's) join
    the training split too, with their real labels."""
    from reward.config import JudgeTrainConfig, VLMJudgeConfig
    from reward.train import evaluate_judge, finetune_judge
    from reward.vlm import VLMJudge

    if cfg.judge_replays and world_model is None:
        raise ValueError("judge_replays needs the round's world model (world_model=...)")
    episodes = [e for e in load_episodes(sources) if e.success is not None]
    rest, held = split_by_label(episodes, cfg.holdout_fraction)
    # the threshold is calibrated on its own split, so held-out F1 is not flattered by it
    train, val = split_by_label(rest, cfg.holdout_fraction, salt="judge-threshold")
    replays = imagined_training_replays(train, world_model, cfg) if cfg.judge_replays else []
    train += replays + [e for e in external_episodes(cfg) if e.success is not None]
    if len({e.success for e in val}) < 2:  # too few episodes of one kind to calibrate on
        val = None
    start = (
        VLMJudge.from_pretrained(previous, device=cfg.device)
        if previous is not None
        else VLMJudgeConfig.from_preset(cfg.model_preset)
    )
    steps = cfg.judge_finetune_steps if previous is not None else cfg.judge_steps
    judge, metrics = finetune_judge(
        start,
        train,
        JudgeTrainConfig(
            steps=steps,
            seed=cfg.seed,
            device=cfg.device,
            precision=cfg.precision,
            threshold_rule=cfg.judge_threshold_rule,
        ),
        val_episodes=val,
        progress=progress,
    )
    if not is_main_process():
        return None  # a torchrun launch's other ranks: rank 0 saves and evaluates
    out = Path(judge.save_pretrained(out_dir))
    held_metrics = evaluate_judge(judge, held)
    return ModelArtifact(
        out,
        checkpoint_sha256(out),
        scalar_metrics(metrics)
        | {f"heldout_{k}": v for k, v in scalar_metrics(held_metrics).items()}
        | {
            "threshold_calibrated": float(val is not None),
            "heldout_episodes": float(len(held)),
            "replay_episodes": float(len(replays)),
        },
    )


def imagined_training_replays(train: Sequence[Episode], world_model: Path, cfg: RoundConfig):
    """The judge's training episodes replayed open-loop in the world model over GRPO's horizon
    (the kind of video GRPO's judge is shown), with their real labels."""
    import torch

    from reward.train import replay_in_imagination
    from world_model.model import ActionConditionedWorldModel

    wm = ActionConditionedWorldModel.from_pretrained(world_model, device=cfg.device)
    with torch.no_grad():
        return replay_in_imagination(wm, train, max_steps=grpo_horizon_steps(cfg), seed=cfg.seed)


def covering_horizon(
    episodes: Sequence[EpisodeHeader], chunk_size: int, floor: int, cap: int, quantile: float = 0.9
) -> int:
    """GRPO's imagined horizon in policy calls: long enough for ``quantile`` of the policy's own
    real successes (an episode ends at its success: ``num_frames - 1`` steps, ``chunk_size`` a
    call), within ``[floor, cap]``; ``floor`` when it has none. A horizon shorter than the policy
    takes to succeed shows GRPO no success to reinforce, whatever the policy does."""
    if not 1 <= floor <= cap or chunk_size < 1 or not 0 < quantile <= 1:
        raise ValueError(
            f"need 1 <= floor <= cap, chunk_size >= 1 and quantile in (0, 1], got {floor}, {cap}, "
            f"{chunk_size}, {quantile}"
        )
    need = sorted(-(-(e.num_frames - 1) // chunk_size) for e in episodes if e.success)
    if not need:
        return floor
    return max(floor, min(cap, need[math.ceil(quantile * len(need)) - 1]))


# "cover": the longest horizon (30 steps of the tiny VLA; the world model's sampling was
# measured over 40)
COVER_CAP_CHUNKS = 6
COVER_QUANTILE = 0.9


def with_covering_horizon(
    cfg: RoundConfig, episodes: Sequence[EpisodeHeader], policy_sha256: str
) -> RoundConfig:
    """``cfg`` with GRPO's horizon set by ``cfg.grpo_horizon``: "fixed" keeps
    ``grpo_overrides``; "cover" lengthens it to cover ``COVER_QUANTILE`` of the starting
    policy's own real successes among ``episodes`` (``covering_horizon``, at most
    ``COVER_CAP_CHUNKS``). Applying it again to the same episodes changes nothing."""
    if cfg.grpo_horizon == "fixed":
        return cfg
    from policy.config import VLAConfig

    chunk = VLAConfig.from_preset(cfg.model_preset).chunk_size
    floor = grpo_horizon_steps(cfg) // chunk
    own = [e for e in episodes if e.policy_sha256 == policy_sha256]
    chunks = covering_horizon(own, chunk, floor, max(floor, COVER_CAP_CHUNKS), COVER_QUANTILE)
    return dataclasses.replace(cfg, grpo_overrides={**cfg.grpo_overrides, "horizon_chunks": chunks})


def initial_frames(episodes: Sequence[Episode | EpisodeHeader]) -> list:
    """GRPO starts: each real episode's first frame with its instruction."""
    from policy.grpo import Start

    return [Start(np.asarray(e.first_frame), e.instruction, e.task) for e in episodes]


def train_challenger(
    champion: Path,
    world_model: Path,
    judge: Path,
    episode_dirs: Sequence[Path],
    out_dir: Path,
    cfg: RoundConfig,
    progress: bool = True,
    on_step: Callable | None = None,
    on_rollouts: Callable | None = None,
) -> ModelArtifact | None:
    """GRPO-finetune the champion in the world model, rewarded by the judge, from real initial frames.
    ``on_rollouts``: ``train_grpo``'s (e.g. a ``pipeline.rollout_strip.RolloutKeeper``)."""
    from policy.grpo import GRPOConfig, train_grpo
    from policy.vla import VLAPolicy
    from reward.judge import load_judge
    from world_model.model import ActionConditionedWorldModel

    policy = VLAPolicy.from_pretrained(champion, device=cfg.device)
    wm = ActionConditionedWorldModel.from_pretrained(world_model, device=cfg.device)
    judge_model = load_judge(judge, device=cfg.device)
    headers = load_episode_headers(episode_dirs)
    cfg = with_covering_horizon(cfg, headers, checkpoint_sha256(champion))
    starts = initial_frames(headers)
    grpo_cfg = GRPOConfig.from_preset(
        "tiny",
        steps=cfg.grpo_steps,
        seed=cfg.seed,
        **{"device": cfg.device, "precision": cfg.precision, **cfg.grpo_overrides},
    )
    snapshots = snapshots_dir(Path(out_dir))
    if snapshots.exists() and is_main_process():
        shutil.rmtree(snapshots)  # an earlier run's: they would pass for this one's
    at = snapshot_steps(cfg)

    def step_done(stats) -> None:
        if stats.step + 1 in at and stats.step + 1 < cfg.grpo_steps:
            policy.save_pretrained(snapshots / f"step_{stats.step + 1:04d}")
        if on_step is not None:
            on_step(stats)

    history = train_grpo(
        policy, wm, judge_model, starts, grpo_cfg,
        progress=progress, on_step=step_done, on_rollouts=on_rollouts,
    )  # fmt: skip
    if not is_main_process():
        return None  # a torchrun launch's other ranks: rank 0 saves (snapshots too, in on_step)
    out = Path(policy.save_pretrained(out_dir))
    metrics = {
        "grpo_steps": len(history),
        "imagined_success_first": history[0].success_rate,
        "imagined_success_last": history[-1].success_rate,
        "kept_groups_total": sum(h.kept_groups for h in history),
        "seconds_per_step": float(np.mean([h.seconds for h in history])),
        "grpo_seed": float(grpo_cfg.seed),
    }
    (out / "grpo_history.json").write_text(
        json.dumps([dataclasses.asdict(h) for h in history], indent=1)
    )
    return ModelArtifact(out, checkpoint_sha256(out), metrics)


def grpo_history(challenger_dir: Path) -> list:
    """The ``GRPOStats`` of every step ``train_challenger`` took, from beside its policy."""
    from policy.grpo import GRPOStats

    rows = json.loads((Path(challenger_dir) / "grpo_history.json").read_text())
    return [GRPOStats(**row) for row in rows]


def snapshot_steps(cfg: RoundConfig) -> list[int]:
    """The GRPO steps whose policies are candidates: ``challenger_snapshots`` evenly spaced,
    ending at the last step."""
    k = cfg.challenger_snapshots
    return sorted({round(cfg.grpo_steps * i / k) for i in range(1, k + 1)})


def snapshots_dir(challenger_dir: Path) -> Path:
    """Beside the challenger, not in it: its checksum and its dispatch stay the final policy's."""
    return challenger_dir.with_name(challenger_dir.name + "_snapshots")


def challenger_candidates(challenger_dir: Path) -> list[Path]:
    """The earlier snapshots train_challenger saved, oldest first, then the final policy."""
    return [*sorted(snapshots_dir(Path(challenger_dir)).glob("step_*")), Path(challenger_dir)]


def named_candidates(challenger_dir: Path) -> dict[str, Path]:
    """The policies a snapshot check runs, by the names its folders and tables use (the last
    one, the run's final policy, is ``final``)."""
    candidates = challenger_candidates(Path(challenger_dir))
    return dict(zip([p.name for p in candidates[:-1]] + ["final"], candidates, strict=True))


def select_challenger(
    station: Station,
    challenger_dir: Path,
    dest: Path,
    cfg: RoundConfig,
    *,
    seed: int | None = None,
    progress: bool = True,
) -> tuple[Path, dict]:
    """The GRPO snapshot with the most real successes on check seeds (ties: the earliest, the
    one nearest the champion); returns its path and every candidate's successes per task.
    ``seed`` is the check's first seed (default: the bench's check range).
    Each candidate's episodes go to ``dest/check_<step_NNNN|final>``.

    The check seeds are the same for every candidate (paired) and disjoint from every other
    seed range, so the real evaluation that follows is not the data the choice was made on."""
    named = named_candidates(challenger_dir)
    candidates, names = list(named.values()), list(named)
    first = cfg.seed + seeds.BENCH_CHECK if seed is None else seed
    table: dict[str, dict[str, int]] = {}
    for name, path in named.items():
        ev = collect_episodes(
            station,
            path,
            Path(dest) / f"check_{name}",
            cfg,
            episodes_per_task=cfg.snapshot_check_episodes_per_task,
            seed=first,
            progress=progress,
        )
        table[name] = {t: r.successes for t, r in ev.per_task.items()}
    totals = [sum(table[n].values()) for n in names]
    best = totals.index(max(totals))  # the first of the best: the earliest
    return candidates[best], {"candidates": table, "chosen": names[best], "seed": first}


def world_model_exploitation(
    world_model: Path,
    judge: Path,
    episodes: Sequence[Path],
    max_episodes: int = 32,
    seed: int = 0,
    device: str | None = None,
) -> dict:
    """How often the world model "completes" what failed on the arm.

    Real episode files (up to ``max_episodes``, half successes and half failures where there are
    enough, so a rare class is not drowned) are replayed open-loop in the world model and judged;
    ``false_success_rate`` is the share of real failures judged successes in imagination. GRPO
    climbs exactly that gap (measured: a challenger at 0% real close-drawer success was 13/16
    successes in imagination), so a high rate says the next challenger will be trained on
    hallucinated rewards. ``None`` when no real failure was replayed. ``device``: a
    ``robot_bridge.devices`` setting for both models (None: "auto").
    """
    from reward.judge import load_judge
    from reward.train import evaluate_judge_on_imagined
    from world_model.model import ActionConditionedWorldModel

    rng = np.random.default_rng(seed)
    headers = [read_episode_header(p) for p in episodes]
    picked = []
    for label in (True, False):
        same = [h.path for h in headers if h.success is label]
        chosen = rng.permutation(len(same))[: max(1, max_episodes // 2)]
        picked += [read_episode(same[i]) for i in chosen]  # only these are read whole
    wm = ActionConditionedWorldModel.from_pretrained(world_model, device=device)
    judge_model = load_judge(judge, device=device if device is not None else "auto")
    m = evaluate_judge_on_imagined(judge_model, wm, picked, seed=seed)
    failures = m["fp"] + m["tn"]
    return {**m, "false_success_rate": m["fp"] / failures if failures else None}


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The numeric, finite-or-not scalar entries of a metrics dict (lists and nested maps dropped)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, int | float | np.floating | np.integer):  # bool is an int
            out[k] = float(v)
    return out
