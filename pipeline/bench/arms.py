"""The arms of ``gymnast bench learning``: World-Gymnast (GRPO in the learned world model, judge
reward; with and without Dyna) and the baselines it must beat with the same real budget."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import seeds
from pipeline.bench.budget import iter_sft_data
from pipeline.bench.common import DYNA_SEED, BenchContext, Leg, episodes_of
from pipeline.bench.sft_choice import choose_sft, chosen_record
from pipeline.round.config import RoundConfig
from pipeline.round.episodes import load_episode_headers
from pipeline.round.records import ModelArtifact
from pipeline.round.stages import (
    bootstrap_champion,
    challenger_candidates,
    checkpoint_sha256,
    collect_episodes,
    explore_on_station,
    named_candidates,
    refresh_judge,
    refresh_world_model,
    scalar_metrics,
    select_challenger,
    snapshot_steps,
    snapshots_dir,
    train_challenger,
    with_covering_horizon,
)
from robot_bridge.episodes import read_episode, read_episode_header


def first_leg(
    ctx: BenchContext,
    sft_recipes: Sequence[tuple[int, int | None]] = (),
    sft_rule: str = "budget",
    keep: int = 1,
) -> tuple[ModelArtifact, Leg]:
    """Demonstrations -> SFT (with ``sft_recipes``, on the demonstrations and SFT steps
    ``sft_rule`` of ``pipeline.bench.sft_choice`` picks); SFT's attempts (and exploration) on the
    station -> world model and judge; GRPO from SFT in the world model, then the snapshot check.
    Without ``sft_recipes`` in a replicate whose SFT was chosen (a later bench on its folder, with
    the chosen recipe in its config), the chosen SFT is reused. SFT keeps ``keep`` policies of its
    run (``sft_with_selection``'s candidates)."""
    if sft_recipes:
        sft = choose_sft(ctx, sft_recipes, rule=sft_rule, keep=keep)  # sets ctx.cfg's recipe
    else:
        n = ctx.cfg.demo_episodes_per_task
        chosen = chosen_record(ctx.workdir, n, ctx.cfg.sft_steps)
        sft = ctx.trained(
            "demos + SFT",
            "sft",
            lambda: bootstrap_champion(
                ctx.client,
                ctx.workdir / "bootstrap",
                ctx.cfg,
                ctx.progress,
                policy_dir=(
                    ctx.workdir / "bootstrap" / chosen.replace("sft_", "policy_", 1)
                    if chosen
                    else None
                ),
                keep=keep,
            ),
            record=chosen,
        )
    client, workdir, cfg, progress = ctx.client, ctx.workdir, ctx.cfg, ctx.progress
    attempts = ctx.timed(
        "SFT attempts on station",
        lambda: collect_episodes(
            client, sft.path, workdir / "sft_attempts", cfg, progress=progress
        ),
    )
    ctx.report["sft_attempts"] = attempts.to_dict()
    ctx.ledger.add("demos", demo_paths(ctx))
    ctx.ledger.add("attempts", attempts.episodes)
    ctx.ledger.add("exploration", [])
    data_dirs = [workdir / "bootstrap" / "demos", workdir / "sft_attempts"]
    if cfg.explore_episodes_per_task:
        explored = ctx.timed(
            "SFT exploration on station",
            lambda: explore_on_station(
                client,
                sft.path,
                workdir / "sft_explore",
                workdir / "sft_explore_policy",
                cfg,
                progress=progress,
            ),
        )
        ctx.report["sft_explore"] = explored.to_dict()
        ctx.ledger.add("exploration", explored.episodes)
        data_dirs.append(workdir / "sft_explore")
    # every GRPO of the replicate (both legs, Sim-RL) runs the horizon SFT's attempts call for
    ctx.cfg = cfg = with_covering_horizon(cfg, load_episode_headers(data_dirs), sft.sha256)
    ctx.report["grpo_horizon_chunks"] = cfg.grpo_overrides.get("horizon_chunks")
    wm = ctx.trained(
        "world model",
        "world_model",
        lambda: refresh_world_model(data_dirs, None, workdir / "world_model", cfg, progress),
    )
    judge = ctx.trained(
        "judge",
        "judge",
        lambda: refresh_judge(data_dirs, None, workdir / "judge", cfg, progress, wm.path),
        upstream=replays_key(cfg, wm),
    )
    rl = ctx.trained(
        "GRPO",
        "grpo",
        lambda: train_challenger(
            sft.path, wm.path, judge.path, data_dirs, workdir / "rl_policy", cfg, progress
        ),
    )
    rl = checked_snapshot(ctx, rl, workdir / "snapshot_check", "")
    return sft, Leg(wm, judge, rl, data_dirs)


def replays_key(cfg, wm: ModelArtifact) -> dict:
    """With ``judge_replays`` the judge also depends on the world model it replays in."""
    return {"replay_world_model": wm.sha256} if cfg.judge_replays else {}


def dyna_iteration(
    ctx: BenchContext, k: int, start: ModelArtifact, grpo_seed: int, leg: Leg
) -> Leg:
    """One Dyna step: the RL policy's real runs (greedy, training seeds) join the data; the world
    model and the judge are finetuned from their last checkpoints; GRPO starts again from
    ``start`` (the SFT policy or the last RL one). Its trained stages are reused like the first
    leg's, keyed on the checkpoints they start from."""
    cfg, progress = ctx.cfg, ctx.progress
    d = ctx.workdir / f"dyna{k}"
    # a folder per policy: an earlier run's RL policy left its runs in dyna{k}/episodes too, and
    # they must not join this run's data
    runs = d / "episodes" / leg.rl.sha256[:12]
    runs_seed = cfg.seed + DYNA_SEED + 1000 * (k - 1)
    got = ctx.timed(
        f"Dyna {k}: RL runs on station",
        lambda: collect_episodes(
            ctx.client, leg.rl.path, runs, cfg, seed=runs_seed, progress=progress
        ),
    )
    ctx.report[f"dyna{k}_episodes"] = got.to_dict()
    ctx.ledger.add(f"dyna{k}_runs", got.episodes)
    data_dirs = [*leg.data_dirs, runs]
    # the data: every earlier folder (pinned by the settings) and the runs of this RL policy
    runs_of = {"runs_of": leg.rl.sha256, "runs_seed": runs_seed}
    wm = ctx.trained(
        f"Dyna {k}: world model",
        "world_model",
        lambda: refresh_world_model(
            data_dirs, leg.world_model.path, d / "world_model", cfg, progress
        ),
        f"dyna{k}_world_model",
        runs_of | {"from": leg.world_model.sha256, "steps": cfg.world_model_finetune_steps},
    )
    judge = ctx.trained(
        f"Dyna {k}: judge",
        "judge",
        lambda: refresh_judge(data_dirs, leg.judge.path, d / "judge", cfg, progress, wm.path),
        f"dyna{k}_judge",
        runs_of
        | {"from": leg.judge.sha256, "steps": cfg.judge_finetune_steps}
        | replays_key(cfg, wm),
    )
    ctx.report[f"dyna{k}_world_model"], ctx.report[f"dyna{k}_judge"] = wm.metrics, judge.metrics
    rl = ctx.trained(
        f"Dyna {k}: GRPO",
        "grpo",
        lambda: train_challenger(
            start.path,
            wm.path,
            judge.path,
            data_dirs,
            d / "rl_policy",
            dataclasses.replace(cfg, seed=grpo_seed),
            progress,
        ),
        f"dyna{k}_grpo",
        runs_of
        | {"start": start.sha256, "world_model": wm.sha256, "judge": judge.sha256}
        | {"grpo_seed": grpo_seed},
    )
    rl = checked_snapshot(ctx, rl, d / "snapshot_check", f"dyna{k}_")
    kept = better_checked(leg.rl, rl)
    if "check_successes" in kept.metrics:
        ctx.report[f"dyna{k}_kept"] = {
            key: kept.metrics[key] for key in ("leg", "snapshot", "check_successes")
        }
    return Leg(wm, judge, kept, data_dirs, grpo=dict(rl.metrics))


def better_checked(kept: ModelArtifact, new: ModelArtifact) -> ModelArtifact:
    """The policy a Dyna leg ends with: its own checked snapshot only when the check (the same
    seeds as every earlier leg's) gave it more real successes than the policy kept so far, else
    the kept one (ties: the earlier, as ``select_challenger`` breaks them). So World-Gymnast's
    policy is the best of every snapshot its checks ran, as SFT+select's and Iter-SFT's are the
    best of as many on the same seeds; a leg's own choice could only be the best of its own
    snapshots while the arm is charged for all the checks. Without checks: the new policy."""
    old, now = kept.metrics.get("check_successes"), new.metrics.get("check_successes")
    return kept if old is not None and now is not None and now <= old else new


def checked_snapshot(
    ctx: BenchContext, rl: ModelArtifact, dest: Path, prefix: str
) -> ModelArtifact:
    """``rl`` itself, or with ``cfg.challenger_snapshots`` > 1 the snapshot (of GRPO, or of a
    baseline's SFT) that did best on the station's check seeds, the same seeds for every arm;
    the check and its real episodes go to the report and the ledger (``{prefix}check``)."""
    if ctx.cfg.challenger_snapshots == 1:
        return rl
    chosen, check = ctx.timed(
        f"{prefix}snapshot check on station",
        lambda: select_challenger(ctx.client, rl.path, dest, ctx.cfg, progress=ctx.progress),
    )
    print(f"[{prefix}snapshot check] {check}", flush=True)
    named = {n: (p, checkpoint_sha256(p)) for n, p in named_candidates(rl.path).items()}
    # each candidate and where its check episodes are: the unselected ones join the agreement
    ctx.report[f"{prefix}snapshot_check"] = check | {
        "policies": {n: {"path": str(p), "sha256": sha} for n, (p, sha) in named.items()},
        "episodes": str(dest),
    }
    shas = {sha for _, sha in named.values()}
    ctx.ledger.add(
        f"{prefix}check",
        episodes_of(
            sorted(dest.glob("check_*")),
            ctx.cfg.tasks,
            check["seed"],
            ctx.cfg.snapshot_check_episodes_per_task,
            shas,
        ),
    )
    total = sum(check["candidates"][check["chosen"]].values())
    leg = {"leg": prefix.removesuffix("_") or "first"}
    return ModelArtifact(
        chosen,
        checkpoint_sha256(chosen),
        rl.metrics | leg | {"snapshot": check["chosen"], "check_successes": total},
    )


def demo_paths(ctx: BenchContext) -> list[Path]:
    """This replicate's demonstrations (the folder may hold more from a larger earlier run)."""
    cfg = ctx.cfg
    return episodes_of(
        [ctx.workdir / "bootstrap" / "demos"],
        cfg.tasks,
        cfg.seed + seeds.BENCH_DEMO,
        cfg.demo_episodes_per_task,
    )


# --- the baselines ------------------------------------------------------------------------------


def sft_with_selection(ctx: BenchContext, sft: ModelArtifact, candidates: int) -> ModelArtifact:
    """SFT+select: the SFT arm's own training run, of which SFT kept ``candidates`` evenly
    spaced policies (``keep`` of its stage); the real check picks one, on the check seeds and
    with as many check episodes as the main arm's checks (``candidates`` = its snapshots x
    legs). No second SFT: the arm differs from SFT by the selection alone."""
    kept = challenger_candidates(sft.path)
    if len(kept) != candidates:
        raise RuntimeError(
            f"SFT+select needs {candidates} policies of SFT's run, found {len(kept)} at "
            f"{sft.path}: its SFT stage kept another number (the keep is not part of the "
            "stage's key, as it does not change SFT); delete that stage's .stage.json to retrain"
        )
    return checked_snapshot(ctx, sft, ctx.workdir / "sft_select" / "check", "sft_select_")


def iter_sft(ctx: BenchContext, main_keys: list[str], candidates: int) -> ModelArtifact:
    """Iter-SFT: SFT from scratch on the successful demonstrations and every real success among
    the main arm's episodes (attempts, exploration, Dyna runs, checks), each task's drawn equally
    often, then the same selection as SFT+select. The balance keeps the baseline fair: the arm's
    successes are mostly its easiest task's, and uniform windows taught a development
    replicate's Iter-SFT to do one drawer task whatever the instruction."""
    data = iter_sft_data(ctx.ledger, main_keys, lambda p: bool(read_episode_header(p).success))
    digest = hashlib.sha256("\n".join(sorted(p.name for p in data)).encode()).hexdigest()
    ctx.report["iter_sft_data"] = {"episodes": len(data), "digest": digest}
    d = ctx.workdir / "iter_sft"
    art = ctx.trained(
        "Iter-SFT: SFT on demos + real successes",
        "iter_sft",
        lambda: train_sft_snapshots(
            [read_episode(p) for p in data],
            ctx.cfg,
            d / "policy",
            candidates,
            ctx.progress,
            balance_instructions=True,
        ),
        upstream={"data": digest, "candidates": candidates, "balanced": True},
    )
    return checked_snapshot(ctx, art, d / "check", "iter_sft_")


def sim_rl(ctx: BenchContext, sft: ModelArtifact, data_dirs: list[Path]) -> ModelArtifact:
    """Sim-RL (SIMPLER-RL): GRPO from SFT in the gapped simulator (``sim_gap``) with its
    ground-truth reward, the same GRPO settings, steps and rollouts as World-Gymnast's leg, from
    the (task, seed) scenes of World-Gymnast's first-leg starts; then one leg's real check."""
    starts = sorted(
        {(h.task, int(h.seed)) for h in load_episode_headers(data_dirs) if h.task in ctx.cfg.tasks}
    )
    digest = hashlib.sha256(repr(starts).encode()).hexdigest()
    d = ctx.workdir / "sim_rl"
    art = ctx.trained(
        "Sim-RL: GRPO in sim_gap",
        "sim_rl",
        lambda: train_sim_rl(sft.path, starts, d / "policy", ctx.cfg, ctx.progress),
        upstream={"start": sft.sha256, "starts": digest},
    )
    ctx.report["sim_rl"] = art.metrics
    return checked_snapshot(ctx, art, d / "check", "sim_rl_")


def train_sft_snapshots(
    episodes,
    cfg: RoundConfig,
    out_dir: Path,
    candidates: int,
    progress: bool = True,
    balance_instructions: bool = False,
) -> ModelArtifact:
    """SFT as the SFT arm trains it (a fresh policy, ``cfg.sft_steps``, ``cfg.seed``), keeping
    ``candidates`` evenly spaced policies: the last is ``out_dir``, the earlier ones beside it
    where ``challenger_candidates`` finds them. ``balance_instructions``: each task's windows
    drawn equally often (``SFTConfig.balance_instructions``)."""
    from policy.config import VLAConfig
    from policy.sft import SFTConfig, train_sft_keeping

    if not 1 <= candidates <= cfg.sft_steps:
        raise ValueError(f"candidates must be in [1, sft_steps={cfg.sft_steps}], got {candidates}")
    episodes = list(episodes)
    policy, metrics = train_sft_keeping(
        VLAConfig.from_preset(cfg.model_preset),
        episodes,
        SFTConfig(
            steps=cfg.sft_steps,
            seed=cfg.seed,
            device=cfg.device,
            precision=cfg.precision,
            balance_instructions=balance_instructions,
        ),
        candidates,
        _fresh(snapshots_dir(Path(out_dir))),
        progress=progress,
    )
    out = Path(policy.save_pretrained(out_dir))
    extra = {"episodes": len(episodes), "candidates": candidates}
    return ModelArtifact(out, checkpoint_sha256(out), scalar_metrics(metrics) | extra)


def train_sim_rl(
    start: Path, starts: list[tuple[str, int]], out_dir: Path, cfg: RoundConfig, progress=True
) -> ModelArtifact:
    """GRPO of ``start`` in the gapped simulator, snapshots as ``train_challenger`` keeps them."""
    from policy.evaluate_sim import sim_start, train_grpo_in_sim
    from policy.grpo import GRPOConfig
    from policy.vla import VLAPolicy

    policy = VLAPolicy.from_pretrained(start, device=cfg.device)
    grpo_cfg = GRPOConfig.from_preset(
        "tiny",
        steps=cfg.grpo_steps,
        seed=cfg.seed,
        **{"device": cfg.device, "precision": cfg.precision, **cfg.grpo_overrides},
    )
    snapshots = _fresh(snapshots_dir(Path(out_dir)))
    at = snapshot_steps(cfg)

    def step_done(stats) -> None:
        if stats.step + 1 in at and stats.step + 1 < cfg.grpo_steps:
            policy.save_pretrained(snapshots / f"step_{stats.step + 1:04d}")

    history = train_grpo_in_sim(
        policy,
        [sim_start(t, s) for t, s in starts],
        grpo_cfg,
        progress=progress,
        on_step=step_done,
    )
    out = Path(policy.save_pretrained(out_dir))
    metrics = {
        "grpo_steps": len(history),
        "sim_success_first": history[0].success_rate,
        "sim_success_last": history[-1].success_rate,
        "kept_groups_total": sum(h.kept_groups for h in history),
        "seconds_per_step": float(np.mean([h.seconds for h in history])),
        "starts": len(starts),
    }
    return ModelArtifact(out, checkpoint_sha256(out), metrics)


def _fresh(folder: Path) -> Path:
    """An empty ``folder``: an earlier run's snapshots would pass for this one's."""
    if folder.exists():
        shutil.rmtree(folder)
    return folder
