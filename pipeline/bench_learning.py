"""``gymnast bench learning``: does RL in the world model make the policy better on the real station?

End to end on the simulated station, tiny presets, CPU:

1. scripted-expert demonstrations over ZMQ -> SFT policy (the starting point);
2. the SFT policy's own attempts on the station (failures included) + the demonstrations ->
   world model and success judge;
3. GRPO of the SFT policy in the world model, rewarded by the judge, from real initial frames
   (with ``challenger_snapshots`` > 1: the snapshot with the most real successes on check seeds);
4. real evaluation of SFT and RL on held-out seeds, N episodes per task, 95% Wilson intervals;
5. judge F1 on held-out real episodes; agreement between success in imagination and real success
   across several policies (Pearson r); imagined frames/s, seconds per GRPO step, peak memory.

The learning code never sees the simulator's ground truth except through episode labels.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

import numpy as np

from pipeline import seeds
from pipeline.stages import (
    Evaluation,
    ModelArtifact,
    RoundConfig,
    bootstrap_champion,
    checkpoint_sha256,
    collect_episodes,
    explore_on_station,
    initial_frames,
    refresh_judge,
    refresh_world_model,
    select_challenger,
    train_challenger,
    world_model_exploitation,
)
from pipeline.verdict import format_verdict, intervals_beyond, verdict
from robot_bridge.dispatch import wilson_interval
from robot_bridge.episodes import read_episode_header

EVAL_RANGES = seeds.EVAL_RANGES  # "dev" (all runs so far, tuning saw it) and "final" (untouched)
EVAL_SEED = EVAL_RANGES["dev"]
DYNA_SEED = seeds.BENCH_DYNA  # + 1000 per iteration
DYNA_FROM = ("sft", "rl")

# The RoundConfig fields each trained stage depends on (cumulative). The benchmark takes an hour,
# so a re-run in the same workdir reuses a stage's checkpoint when these are unchanged (and the
# checkpoint still hashes to what was recorded): change only the GRPO settings and only GRPO and
# its evaluation run again. Episodes resume on their own (finished (task, seed) pairs are skipped).
_SFT = ("tasks", "model_preset", "demo_episodes_per_task", "demo_noise", "demo_mistake_prob")
_DATA = ("collect_episodes_per_task", "explore_episodes_per_task", "explore_temperature")
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "sft": (*_SFT, "sft_steps", "seed"),
    "world_model": (
        *_SFT,
        "sft_steps",
        "seed",
        *_DATA,
        "world_model_steps",
        "holdout_fraction",
    ),
    "judge": (
        *_SFT,
        "sft_steps",
        "seed",
        *_DATA,
        "holdout_fraction",
        "judge_steps",
    ),
    "grpo": (
        *_SFT,
        "sft_steps",
        "seed",
        *_DATA,
        "world_model_steps",
        "holdout_fraction",
        "judge_steps",
        "grpo_steps",
        "grpo_overrides",
        "challenger_snapshots",
    ),
}


def reuse_or_train(
    record: Path, stage: str, cfg: RoundConfig, train, upstream: dict | None = None
) -> tuple[ModelArtifact, bool]:
    """``train()`` unless ``record`` says an identical earlier run left this stage's checkpoint.
    ``upstream`` adds what the settings do not pin down: a Dyna stage's inputs are the checkpoints
    it starts from (their sha256) and its seeds, so a re-run reuses it exactly when they match."""
    fields = {f: getattr(cfg, f) for f in STAGE_INPUTS[stage]} | (upstream or {})
    inputs = json.loads(json.dumps(fields))
    if record.is_file():
        saved = json.loads(record.read_text())
        art = ModelArtifact(
            Path(saved["path"]),
            saved["sha256"],
            saved["metrics"],
            [Path(p) for p in saved["previews"]],
        )
        if (
            saved["inputs"] == inputs
            and art.path.is_dir()
            and checkpoint_sha256(art.path) == art.sha256
        ):
            return art, True
    art = train()
    record.write_text(
        json.dumps(
            {
                "inputs": inputs,
                "path": str(art.path),
                "sha256": art.sha256,
                "metrics": art.metrics,
                "previews": [str(p) for p in art.previews],
            },
            indent=1,
        )
    )
    return art, False


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def imagined_success(
    policy_dir: Path,
    world_model_dir: Path,
    judge_dir: Path,
    episodes,
    group: int,
    horizon_chunks: int,
    seed: int,
) -> dict[str, float]:
    """Per-task success rate in imagination: closed-loop rollouts from real initial frames, judged."""
    import torch

    from policy.grpo import GRPOConfig, imagine_rollouts, score_rollouts
    from policy.vla import VLAPolicy
    from reward.judge import load_judge
    from world_model.model import ActionConditionedWorldModel

    policy = VLAPolicy.from_pretrained(policy_dir)
    wm = ActionConditionedWorldModel.from_pretrained(world_model_dir)
    judge = load_judge(judge_dir)
    cfg = GRPOConfig.preset("tiny", group_size=group, horizon_chunks=horizon_chunks, seed=seed)
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    out: dict[str, float] = {}
    for task in sorted({e.task for e in episodes}):
        starts = [s for s in initial_frames(episodes) if s.task == task]
        rollouts = imagine_rollouts(policy, wm, starts, cfg, gen)
        out[task] = float(score_rollouts(judge, rollouts, cfg).mean())
    return out


def imagination_throughput(
    world_model_dir: Path, frame: np.ndarray, batch: int = 8, steps: int = 40
) -> float:
    import torch

    from world_model.model import ActionConditionedWorldModel

    wm = ActionConditionedWorldModel.from_pretrained(world_model_dir)
    actions = torch.zeros(batch, steps, 7)
    actions[..., 6] = 1.0
    t0 = time.perf_counter()
    wm.rollout(np.stack([frame] * batch), actions)
    return batch * steps / (time.perf_counter() - t0)


def eval_counts(tasks, default: int, per_task: dict[str, int] | None = None) -> dict[str, int]:
    """Real evaluation episodes per task: ``default`` unless ``per_task`` says otherwise (a task
    whose comparison is close gets more episodes, the one that only ever fails need not)."""
    per_task = per_task or {}
    unknown = sorted(set(per_task) - set(tasks))
    if unknown:
        raise ValueError(f"evaluation episodes given for tasks not in this run: {unknown}")
    counts = {t: int(per_task.get(t, default)) for t in tasks}
    bad = {t: n for t, n in counts.items() if n < 1}
    if bad:
        raise ValueError(f"evaluation episodes per task must be >= 1, got {bad}")
    return counts


def evaluate_policy(
    client,
    policy_dir: Path,
    dest: Path,
    cfg: RoundConfig,
    counts: dict[str, int],
    progress: bool = True,
    eval_seed: int = EVAL_SEED,
) -> Evaluation:
    """The real evaluation: ``counts[task]`` greedy episodes per task on seeds ``eval_seed``+
    (one of ``EVAL_RANGES``), the same for every policy (paired); one station job per distinct
    count, merged."""
    by_count: dict[int, list[str]] = {}
    for task, n in counts.items():
        by_count.setdefault(n, []).append(task)
    parts = [
        collect_episodes(
            client,
            policy_dir,
            dest,
            cfg.for_tasks(tasks),
            episodes_per_task=n,
            seed=eval_seed,
            progress=progress,
        )
        for n, tasks in by_count.items()
    ]
    return Evaluation(
        parts[0].checkpoint_sha256,
        [p for part in parts for p in part.episodes],
        {t: part.per_task[t] for t in counts for part in parts if t in part.per_task},
        {k: v for part in parts for k, v in part.outcomes.items()},
    )


def spread_sample(headers, per_task: int) -> list:
    """``per_task`` episodes of each task, spread evenly over its seeds (imagination's starts)."""
    out = []
    for task in dict.fromkeys(h.task for h in headers):
        mine = sorted((h for h in headers if h.task == task), key=lambda h: h.seed)
        out += mine[:: max(1, len(mine) // per_task)][:per_task]
    return out


def beyond_intervals(sft: dict, rl: dict) -> int:
    """+1 when ``rl``'s 95% interval lies wholly above ``sft``'s, -1 wholly below, else 0."""
    return intervals_beyond(rl["ci95"], sft["ci95"])


@dataclasses.dataclass
class BenchContext:
    """What every stage of one bench run shares: the station, the workdir and settings, the
    report being written, stage wall times and the stages reused from an earlier run."""

    client: object
    workdir: Path
    cfg: RoundConfig
    report: dict
    progress: bool = True
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    reused: list[str] = dataclasses.field(default_factory=list)

    def timed(self, name: str, fn):
        t0 = time.perf_counter()
        value = fn()
        self._done(name, t0)
        return value

    def trained(self, name: str, key: str, train, record: str = "", upstream=None) -> ModelArtifact:
        """A trained stage, timed; reused from an earlier run with the same settings."""
        t0 = time.perf_counter()
        path = self.workdir / f"{record or key}.stage.json"
        art, was_reused = reuse_or_train(path, key, self.cfg, train, upstream)
        if was_reused:
            self.reused.append(name)
            print(f"[{name}] reusing {art.path} (same settings, same sha256)", flush=True)
        else:
            self._done(name, t0)
        return art

    def _done(self, name: str, t0: float) -> None:
        self.timings[name] = time.perf_counter() - t0
        print(f"[{name}] {self.timings[name]:.0f} s, peak RSS {peak_rss_gb():.2f} GB", flush=True)


@dataclasses.dataclass
class Leg:
    """One GRPO leg's models and the data its world model and judge learned from."""

    world_model: ModelArtifact
    judge: ModelArtifact
    rl: ModelArtifact
    data_dirs: list[Path]


def run(
    workdir: Path,
    cfg: RoundConfig,
    eval_episodes: int,
    progress: bool = True,
    dyna_iterations: int = 0,
    dyna_from: str = "sft",
    dyna_seed: int | None = None,
    task_episodes: dict[str, int] | None = None,
    eval_range: str = "dev",
) -> dict:
    """The benchmark; ``dyna_iterations`` > 0 then runs each RL policy on the station (training
    seeds), finetunes the world model and judge with those episodes, and trains GRPO again:
    ``dyna_from="sft"`` from the SFT policy, as the nightly loop does when the challenger loses;
    ``"rl"`` from the last RL policy (also its KL anchor), as the loop does once it has won.
    ``dyna_seed`` seeds the Dyna iterations' GRPO (default: ``cfg.seed``): the same recipe on
    the same data, drawn afresh (its starts and rollouts).
    ``task_episodes`` gives some tasks more (or fewer) evaluation episodes than ``eval_episodes``
    for SFT and the final policy, the pair whose intervals the verdict compares.
    ``eval_range``: "dev" while developing, "final" only for results to report (see
    ``pipeline.seeds``)."""
    if eval_range not in EVAL_RANGES:
        raise ValueError(f"eval_range must be one of {sorted(EVAL_RANGES)}, got {eval_range!r}")
    if dyna_from not in DYNA_FROM:
        raise ValueError(f"dyna_from must be one of {DYNA_FROM}, got {dyna_from!r}")
    if dyna_seed is not None and (dyna_iterations == 0 or dyna_seed < 0):
        raise ValueError(
            f"dyna_seed must be >= 0 and needs Dyna iterations, got {dyna_seed} with "
            f"{dyna_iterations} iteration(s)"
        )
    from robot_bridge.client import StationClient
    from robot_bridge.launch import StationProcess

    # SFT and the final policy (the pair the bench compares) get the per-task counts; a policy
    # in between gets ``eval_episodes`` on every task
    counts = eval_counts(cfg.tasks, eval_episodes, task_episodes)
    between = eval_counts(cfg.tasks, eval_episodes)
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "config": cfg.to_dict(),
        "eval_episodes_per_task": counts,
        "eval_range": eval_range,
        "eval_seed": EVAL_RANGES[eval_range],
    }
    eval_dir = "eval" if eval_range == "dev" else f"eval_{eval_range}"
    if dyna_iterations:
        report["dyna_seed"] = cfg.seed if dyna_seed is None else dyna_seed

    with (
        StationProcess(
            "sim", episodes_dir=workdir / "station" / "episodes", lease_timeout_s=30
        ) as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        ctx = BenchContext(client, workdir, cfg, report, progress)
        sft, leg = first_leg(ctx)
        policies = [("SFT", sft), ("RL", leg.rl)]
        for k in range(1, dyna_iterations + 1):
            start = sft if dyna_from == "sft" else leg.rl
            leg = dyna_iteration(ctx, k, start, report["dyna_seed"], leg)
            policies.append((f"RL+Dyna{k}", leg.rl))
        evals = {}
        for name, art in policies:
            evals[name] = ctx.timed(
                f"real eval {name}",
                lambda art=art, name=name: evaluate_policy(
                    client,
                    art.path,
                    workdir / f"{eval_dir}_{name}",
                    cfg,
                    counts if name in ("SFT", policies[-1][0]) else between,
                    progress,
                    EVAL_RANGES[eval_range],
                ),
            )
    wm, judge = leg.world_model, leg.judge  # the last leg's: imagination and replays use them
    # this run's policies only (an earlier GRPO variant's episodes may share the folder); paths,
    # not episodes: three policies' 200 episodes each held 10 GB of frames
    eval_eps = {name: list(ev.episodes) for name, ev in evals.items()}
    imag = {
        name: ctx.timed(
            f"imagined eval {name}",
            lambda name=name, art=art: imagined_success(
                art.path,
                wm.path,
                judge.path,
                spread_sample([read_episode_header(p) for p in eval_eps[name]], 4),
                group=4,
                horizon_chunks=cfg.grpo_overrides.get("horizon_chunks", 8),
                seed=cfg.seed,
            ),
        )
        for name, art in policies
    }
    judge_imagined = ctx.timed(
        "judge on imagined replays",
        lambda: world_model_exploitation(
            wm.path,
            judge.path,
            eval_eps["SFT"] + eval_eps[policies[-1][0]],
            max_episodes=64,
            seed=cfg.seed,
        ),
    )
    last = policies[-1][0]
    report["verdict"] = verdict(
        {name: [ev.outcomes] for name, ev in evals.items()}, cfg.tasks, last, ["SFT"]
    )
    real = {name: {t: r.success_rate for t, r in ev.per_task.items()} for name, ev in evals.items()}
    xs = [imag[n][t] for n in imag for t in imag[n]]
    ys = [real[n][t] for n in imag for t in imag[n]]
    report.update(
        sft=dataclasses.asdict(sft) | {"path": str(sft.path)},
        world_model={k: v for k, v in wm.metrics.items()},
        judge={k: v for k, v in judge.metrics.items()},
        judge_on_imagined=judge_imagined,
        grpo=leg.rl.metrics,
        real={n: ev.to_dict() for n, ev in evals.items()},
        imagined=imag,
        pearson_r=float(np.corrcoef(xs, ys)[0, 1])
        if np.std(xs) > 0 and np.std(ys) > 0
        else float("nan"),
        imagined_fps_b8=imagination_throughput(
            wm.path, read_episode_header(eval_eps["SFT"][0]).first_frame
        ),
        timings_s=ctx.timings,
        reused_stages=ctx.reused,
        peak_rss_gb=peak_rss_gb(),
    )
    print(format_report(report))
    (workdir / "bench_learning.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def first_leg(ctx: BenchContext) -> tuple[ModelArtifact, Leg]:
    """Demonstrations -> SFT; SFT's attempts (and exploration) on the station -> world model and
    judge; GRPO from SFT in the world model, then the snapshot check."""
    client, workdir, cfg, progress = ctx.client, ctx.workdir, ctx.cfg, ctx.progress
    sft = ctx.trained(
        "demos + SFT",
        "sft",
        lambda: bootstrap_champion(client, workdir / "bootstrap", cfg, progress),
    )
    attempts = ctx.timed(
        "SFT attempts on station",
        lambda: collect_episodes(
            client, sft.path, workdir / "sft_attempts", cfg, progress=progress
        ),
    )
    ctx.report["sft_attempts"] = attempts.to_dict()
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
        data_dirs.append(workdir / "sft_explore")
    wm = ctx.trained(
        "world model",
        "world_model",
        lambda: refresh_world_model(data_dirs, None, workdir / "world_model", cfg, progress),
    )
    judge = ctx.trained(
        "judge",
        "judge",
        lambda: refresh_judge(data_dirs, None, workdir / "judge", cfg, progress),
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
        runs_of | {"from": leg.world_model.sha256},
    )
    judge = ctx.trained(
        f"Dyna {k}: judge",
        "judge",
        lambda: refresh_judge(data_dirs, leg.judge.path, d / "judge", cfg, progress),
        f"dyna{k}_judge",
        runs_of | {"from": leg.judge.sha256},
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
    return Leg(wm, judge, rl, data_dirs)


def checked_snapshot(
    ctx: BenchContext, rl: ModelArtifact, dest: Path, prefix: str
) -> ModelArtifact:
    """``rl`` itself, or with ``cfg.challenger_snapshots`` > 1 the GRPO snapshot that did best on
    the station's check seeds (recorded in the report)."""
    if ctx.cfg.challenger_snapshots == 1:
        return rl
    chosen, check = ctx.timed(
        f"{prefix}snapshot check on station",
        lambda: select_challenger(ctx.client, rl.path, dest, ctx.cfg, progress=ctx.progress),
    )
    ctx.report[f"{prefix}snapshot_check"] = check
    print(f"[{prefix}snapshot check] {check}", flush=True)
    return ModelArtifact(
        chosen, checkpoint_sha256(chosen), rl.metrics | {"snapshot": check["chosen"]}
    )


def format_report(r: dict) -> str:
    names = list(r["real"])  # SFT, RL, then RL after each Dyna iteration
    last = names[-1]
    lines = [
        "| task | "
        + " | ".join(f"{n} real" for n in names)
        + f" | {last} - SFT | beyond 95% CIs | episodes | "
        + " | ".join(f"{n} imagined" for n in names)
        + " |",
        "|---|" + "---|" * (2 * len(names) + 3),
    ]
    verdicts = {}
    for task, s in r["real"]["SFT"]["per_task"].items():
        q = r["real"][last]["per_task"][task]
        verdicts[task] = beyond_intervals(s, q)
        lines.append(
            f"| {task} | "
            + " | ".join(_ci(r["real"][n]["per_task"][task]) for n in names)
            + f" | {100 * (q['success_rate'] - s['success_rate']):+.0f} | "
            + {1: "better", -1: "worse", 0: "no"}[verdicts[task]]
            + f" | {q['labelled']} | "
            + " | ".join(f"{100 * r['imagined'][n].get(task, float('nan')):.0f}%" for n in names)
            + " |"
        )
    better = [t for t, v in verdicts.items() if v > 0]
    lines += [
        "",
        f"{last} beats SFT beyond the 95% intervals on {len(better)} of {len(verdicts)} tasks"
        + (f" ({', '.join(better)})" if better else ""),
        *([format_verdict(r["verdict"])] if "verdict" in r else []),
        "world model open-loop on held-out real episodes, worst step's PSNR lead over "
        f"repeating the first frame: {r['world_model'].get('rollout_psnr_over_copy_first_min_db', float('nan')):+.1f} dB "
        f"over {r['world_model'].get('rollout_horizon', float('nan')):.0f} steps (target >= +3)",
        f"judge held-out F1: {r['judge'].get('heldout_f1', float('nan')):.3f} over "
        f"{_count(r['judge'], 'tp', 'fn')} successes and {_count(r['judge'], 'fp', 'tn')} failures  "
        f"(precision {r['judge'].get('heldout_precision', float('nan')):.3f}, recall {r['judge'].get('heldout_recall', float('nan')):.3f})",
        "judge on imagined replays of real episodes vs their real outcome: "
        + _prf(r["judge_on_imagined"]),
        f"imagined vs real success, Pearson r over (policy, task): {r['pearson_r']:.3f}",
        f"imagined frames/s (batch 8): {r['imagined_fps_b8']:.1f}",
        f"GRPO seconds/step: {r['grpo']['seconds_per_step']:.1f}",
        *(
            f"{k.replace('_', ' ')} (real successes per task on check seeds; chosen "
            f"{v['chosen']}): {v['candidates']}"
            for k, v in r.items()
            if k.endswith("snapshot_check")
        ),
        f"peak RSS: {r['peak_rss_gb']:.2f} GB",
        "stage wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in r["timings_s"].items()),
        "reused from an earlier run (same settings): " + (", ".join(r["reused_stages"]) or "none"),
    ]
    return "\n".join(lines)


def _count(judge: dict, *cells: str) -> str:
    """Held-out positives (tp + fn) or negatives (fp + tn) of the judge's confusion counts."""
    values = [judge.get(f"heldout_{c}") for c in cells]
    return "?" if any(v is None for v in values) else f"{sum(values):.0f}"


def _prf(m: dict) -> str:
    f = {k: "n/a" if m.get(k) is None else f"{m[k]:.3f}" for k in ("f1", "precision", "recall")}
    return (
        f"F1 {f['f1']} (precision {f['precision']}, recall {f['recall']}; "
        f"tp {m['tp']}, fp {m['fp']}, fn {m['fn']}, tn {m['tn']})"
    )


def _ci(t: dict) -> str:
    lo, hi = wilson_interval(round(t["success_rate"] * t["labelled"]), t["labelled"])
    return f"{100 * t['success_rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", type=Path, default=Path(".gymnast/bench_learning"))
    p.add_argument("--preset", default="bench", help="RoundConfig preset (tiny for a smoke run)")
    p.add_argument(
        "--eval-episodes", type=int, default=50, help="real evaluation episodes per task and policy"
    )
    p.add_argument(
        "--eval-task-episodes",
        action="append",
        default=[],
        metavar="TASK=N",
        help="a different number of evaluation episodes for one task (repeatable)",
    )
    p.add_argument(
        "--dyna",
        type=int,
        default=0,
        metavar="N",
        help="Dyna iterations: RL runs on the station refresh the world model and judge, GRPO again",
    )
    p.add_argument(
        "--dyna-from",
        choices=DYNA_FROM,
        default="sft",
        help="each Dyna iteration's GRPO starts from (and is anchored to) the SFT policy or the "
        "last RL policy",
    )
    p.add_argument(
        "--dyna-seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the Dyna iterations' GRPO (default: the round's seed); another value draws "
        "the same recipe afresh",
    )
    p.add_argument(
        "--eval-range",
        choices=sorted(EVAL_RANGES),
        default="dev",
        help="evaluation seeds: dev (seen by all tuning so far) or final (reported results only)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override a RoundConfig field",
    )


def run_from_args(args: argparse.Namespace) -> int:
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    cfg = RoundConfig.from_preset(args.preset, **overrides)
    task_episodes = {}
    for item in args.eval_task_episodes:
        task, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise SystemExit(f"--eval-task-episodes wants TASK=N, got {item!r}")
        task_episodes[task] = int(n)
    run(
        args.workdir,
        cfg,
        args.eval_episodes,
        task_episodes=task_episodes,
        dyna_iterations=args.dyna,
        dyna_from=args.dyna_from,
        dyna_seed=args.dyna_seed,
        eval_range=args.eval_range,
    )
    return 0
