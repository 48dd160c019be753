"""``gymnast bench learning``: does RL in the world model make the policy better on the real
station than the baselines with the same real budget? R independent replicates, one verdict.

End to end on the simulated station, tiny presets, CPU; per replicate (``pipeline.bench.arms``):

1. scripted-expert demonstrations over ZMQ -> **SFT** (the starting point of every arm);
2. the SFT policy's own attempts and exploration on the station + the demonstrations -> world
   model and success judge;
3. **WG** (World-Gymnast): GRPO of SFT in the world model, rewarded by the judge, from real
   initial frames; with ``challenger_snapshots`` > 1 the snapshot with the most real successes on
   check seeds; **WG+Dyna{k}** after k Dyna iterations (its real runs refresh the world model
   and the judge, GRPO again);
4. the baselines with the main WG arm's real budget: **SFT+select** (SFT's own snapshots, checked
   with as many real check episodes on the same check seeds), **Iter-SFT** (SFT on the
   demonstrations + every real success the main arm's episodes contained, same selection),
   **Sim-RL** (the same GRPO in the gapped simulator ``sim_gap`` with ground-truth reward, one
   leg's check);
5. real evaluation of every arm on the same held-out seeds, N episodes per task, 95% Wilson
   intervals; judge F1; imagined vs real success over every (arm, task); the real episodes each
   arm used (``pipeline.bench.budget``).

Replicate r (``rep{r}/`` in the workdir) draws its own demonstrations, attempts, checks and
torch seeds (``pipeline.seeds.bench_replicate_seed``); every stage is reused when its settings
and inputs are unchanged, so replicates resume stage by stage and can be added run after run;
each finished replicate writes ``rep{r}/results.json``, and replicates run apart (on machines
that kept only those files) pool into one report (``pipeline.bench.results``, ``--pool``).
The verdict is the rule in ``pipeline.round.statistics`` (``target_verdict``), printed with the report
(``pipeline.bench.report``: JSON, markdown and a PNG beside it). The learning code never sees the
simulator's ground truth except through episode labels (Sim-RL's simulator is its own reward).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from pathlib import Path

from pipeline import seeds
from pipeline.bench.arms import (
    dyna_iteration,
    first_leg,
    iter_sft,
    sft_with_selection,
    sim_rl,
)
from pipeline.bench.budget import (
    arm_keys,
    budget_claims,
    selection_candidates,
    wg_keys,
    wg_name,
)
from pipeline.bench.common import (
    DYNA_FROM,
    EVAL_RANGES,
    BenchContext,
    Leg,
    episodes_of,
    eval_counts,
    evaluate_policy,
    imagination_throughput,
    imagined_success,
    peak_rss_gb,
    spread_sample,
)
from pipeline.bench.report import (
    agreement,
    agreement_points,
    format_report,
    snapshot_points,
    summarize,
    write_summary,
)
from pipeline.bench.results import (
    RESULTS_FILE,
    pool,
    replicate_results,
    write_replicate_results,
)
from pipeline.round.config import RoundConfig
from pipeline.round.records import Evaluation
from pipeline.round.stages import world_model_exploitation
from pipeline.round.statistics import target_verdict
from robot_bridge.episodes import read_episode_header

BASELINES = ("SFT+select", "Iter-SFT", "Sim-RL")  # besides SFT, which every run has


@dataclasses.dataclass
class Options:
    """How a bench run is set up, beyond its RoundConfig."""

    eval_episodes: int
    task_episodes: dict[str, int] = dataclasses.field(default_factory=dict)
    dyna_iterations: int = 0
    dyna_from: str = "sft"
    dyna_seed: int | None = None
    eval_range: str = "dev"
    replicates: int = 3
    baselines: bool = True
    progress: bool = True
    # the SFT recipes (demonstrations per task, SFT steps or None for the config's) one of which
    # pipeline.bench.sft_choice's rule keeps; () keeps the config's
    sft_recipes: tuple[tuple[int, int | None], ...] = ()
    sft_rule: str = "budget"  # pipeline.bench.sft_choice.RULES
    # simulated stations the episodes are spread over (``simulated_stations``)
    stations: int = 1
    # the first replicate's index: a run may add replicates first..first+replicates-1 to those
    # earlier runs made (their results pool by ``--pool``)
    first_replicate: int = 0

    def check(self, cfg: RoundConfig) -> list[int]:
        """Refuses a bad setting before anything runs; returns each replicate's config seed."""
        if self.eval_range not in EVAL_RANGES:
            raise ValueError(
                f"eval_range must be one of {sorted(EVAL_RANGES)}, got {self.eval_range!r}"
            )
        if self.dyna_from not in DYNA_FROM:
            raise ValueError(f"dyna_from must be one of {DYNA_FROM}, got {self.dyna_from!r}")
        if self.dyna_seed is not None and (self.dyna_iterations == 0 or self.dyna_seed < 0):
            raise ValueError(
                f"dyna_seed must be >= 0 and needs Dyna iterations, got {self.dyna_seed} with "
                f"{self.dyna_iterations} iteration(s)"
            )
        from pipeline.bench.sft_choice import RULES

        if self.sft_rule not in RULES:
            raise ValueError(f"sft_rule must be one of {RULES}, got {self.sft_rule!r}")
        if self.replicates < 1:
            raise ValueError(f"replicates must be >= 1, got {self.replicates}")
        if not 1 <= self.stations <= 16:
            raise ValueError(f"stations must be in [1, 16], got {self.stations}")
        if self.first_replicate < 0:
            raise ValueError(f"first_replicate must be >= 0, got {self.first_replicate}")
        eval_counts(cfg.tasks, self.eval_episodes, self.task_episodes)
        return [seeds.bench_replicate_seed(cfg.seed, r) for r in self.indices()]

    def indices(self) -> range:
        return range(self.first_replicate, self.first_replicate + self.replicates)


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
    replicates: int = 3,
    baselines: bool = True,
    sft_recipes: tuple[tuple[int, int | None], ...] = (),
    sft_rule: str = "budget",
    first_replicate: int = 0,
    stations: int = 1,
) -> dict:
    """The benchmark: ``replicates`` independent replicates (indices ``first_replicate`` on),
    every arm evaluated on the same seeds of ``eval_range`` ("dev" while developing, "final"
    only for results to report), then the verdict over all of them. ``dyna_iterations`` > 0 adds Dyna iterations to World-Gymnast:
    ``dyna_from="sft"`` restarts GRPO from SFT each time, ``"rl"`` from the last RL policy (also
    its KL anchor); ``dyna_seed`` seeds their GRPO (default: the replicate's seed).
    ``task_episodes`` gives some tasks more (or fewer) evaluation episodes than
    ``eval_episodes``. ``baselines=False`` runs SFT and World-Gymnast only (the target is then
    not judged). ``sft_recipes``: the (demonstrations per task, SFT steps) SFT may get, one chosen
    per replicate by ``pipeline.bench.sft_choice``'s rule ``sft_rule`` (default: the config's).
    ``stations``: simulated stations the episodes are spread over (``simulated_stations``)."""
    opts = Options(
        eval_episodes,
        dict(task_episodes or {}),
        dyna_iterations,
        dyna_from,
        dyna_seed,
        eval_range,
        replicates,
        baselines,
        progress,
        tuple(sft_recipes),
        sft_rule,
        stations=stations,
        first_replicate=first_replicate,
    )
    rep_seeds = opts.check(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    reports, outcomes = [], {}
    with simulated_stations(workdir, opts.stations) as client:
        for r, seed in zip(opts.indices(), rep_seeds, strict=True):
            rep_cfg = dataclasses.replace(cfg, seed=seed)
            rep_dyna = None
            if opts.dyna_seed is not None:
                rep_dyna = opts.dyna_seed + r * seeds.BENCH_REPLICATE_STRIDE
            print(
                f"=== replicate {r} ({r - opts.first_replicate + 1} of {len(rep_seeds)}, seed {seed}) ===",
                flush=True,
            )
            report, evals = run_replicate(client, workdir / f"rep{r}", rep_cfg, opts, r, rep_dyna)
            reports.append(report)
            for name, ev in evals.items():
                outcomes.setdefault(name, []).append(ev.outcomes)
            results = replicate_results(
                r,
                cfg.to_dict(),
                dataclasses.asdict(opts),
                report,
                {name: ev.outcomes for name, ev in evals.items()},
            )
            path = write_replicate_results(workdir / f"rep{r}" / RESULTS_FILE, results)
            print(f"replicate {r}'s results: {path} (pool them with --pool)", flush=True)
    summary = summarize(cfg, dataclasses.asdict(opts), reports, outcomes)
    write_summary(workdir, summary)
    return summary


@contextlib.contextmanager
def simulated_stations(workdir: Path, n: int):
    """What the stages run policies through: one simulated station's client, or with ``n`` > 1 a
    fleet of ``n`` run as one (``pipeline.fleet.FleetRunner``), each station in its own process
    with one torch thread, every episode fetched into the stage's own folder (``flat``).

    A station job is one process that simulates, renders, runs the policy and records, step by
    step: about one core. On a 2-core machine a second station runs a second share of the
    episodes (split by seed; each episode seeds its own reset and sampling, so the episodes are
    the same whichever station runs them) while the first runs its own."""
    from pipeline.fleet import Arm, Fleet, FleetRunner
    from robot_bridge.client import StationClient
    from robot_bridge.launch import StationProcess

    def folder(i: int) -> Path:  # station 0 where a one-station run has always had it
        return workdir / "station" / ("episodes" if i == 0 else f"arm{i}/episodes")

    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                StationProcess(
                    "sim",
                    episodes_dir=folder(i),
                    lease_timeout_s=30,
                    station_id=f"station-{i}",
                    # one thread whatever n: the policy's floating point, and so its episodes,
                    # do not depend on how many stations ran them
                    extra_env={"OMP_NUM_THREADS": "1"},
                )
            )
            for i in range(n)
        ]
        if n == 1:
            yield stack.enter_context(StationClient(procs[0].endpoint, timeout_s=60))
        else:
            arms = tuple(Arm(f"station-{i}", p.endpoint) for i, p in enumerate(procs))
            yield FleetRunner(Fleet(arms, timeout_s=60), log=lambda m: None, flat=True)


def run_replicate(
    client, workdir: Path, cfg: RoundConfig, opts: Options, index: int, dyna_seed: int | None
) -> tuple[dict, dict[str, Evaluation]]:
    """One replicate, every arm: trained (or reused), evaluated, reported in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    counts = eval_counts(cfg.tasks, opts.eval_episodes, opts.task_episodes)
    report: dict = {
        "replicate": index,
        "config": cfg.to_dict(),
        "eval_episodes_per_task": counts,
        "eval_range": opts.eval_range,
        "eval_seed": EVAL_RANGES[opts.eval_range],
    }
    if opts.dyna_iterations:
        report["dyna_seed"] = cfg.seed if dyna_seed is None else dyna_seed
    ctx = BenchContext(client, workdir, cfg, report, opts.progress)
    sft, policies, last = train_arms(ctx, opts)
    eval_dir = "eval" if opts.eval_range == "dev" else f"eval_{opts.eval_range}"
    evals: dict[str, Evaluation] = once_per_policy(
        ctx,
        "real eval",
        policies,
        lambda name, art: evaluate_policy(
            client,
            art.path,
            workdir / f"{eval_dir}_{name}",
            cfg,
            counts,
            opts.progress,
            EVAL_RANGES[opts.eval_range],
        ),
    )
    finish_report(ctx, sft, policies, evals, last)
    return report, evals


def once_per_policy(ctx: BenchContext, label: str, policies: dict, run) -> dict:
    """``run(name, artifact)`` for every arm, once per distinct checkpoint (by sha256): a Dyna
    leg that kept an earlier leg's policy shares that policy's figures instead of a rerun."""
    by_sha, out = {}, {}
    for name, art in policies.items():
        if art.sha256 not in by_sha:
            by_sha[art.sha256] = ctx.timed(
                f"{label} {name}", lambda name=name, art=art: run(name, art)
            )
        out[name] = by_sha[art.sha256]
    return out


def imagine_snapshots(ctx: BenchContext, evaluated: set[str], imagine) -> dict[str, dict]:
    """Every checked policy that is not an evaluated arm (the snapshots the checks did not
    choose): imagined success from its check episodes' initial frames beside its real success
    on those episodes (the check's tasks and seeds, that policy's own: a folder may hold an
    earlier run's too), keyed ``<check>/<snapshot>``; a policy two checks ran counts once.
    ``imagine(policy, episodes)``: per-task imagined success. Not cached: about 20 s a policy."""
    n, out = ctx.cfg.snapshot_check_episodes_per_task, {}
    seen = set(evaluated)
    for key, check in list(ctx.report.items()):
        if not key.endswith("snapshot_check"):
            continue
        for name, policy in check.get("policies", {}).items():
            sha = policy["sha256"]
            if sha in seen:
                continue
            seen.add(sha)
            folder = Path(check["episodes"]) / f"check_{name}"
            episodes = episodes_of([folder], ctx.cfg.tasks, check["seed"], n, {sha})
            labels = [h for h in map(read_episode_header, episodes) if h.success is not None]
            labelled = {t: [bool(h.success) for h in labels if h.task == t] for t in ctx.cfg.tasks}
            out[f"{key}/{name}"] = {
                "sha256": sha,
                "imagined": imagine(Path(policy["path"]), episodes),
                "real": {t: sum(v) / len(v) for t, v in labelled.items() if v},
                "real_episodes": {t: len(v) for t, v in labelled.items()},
            }
    return out


def train_arms(ctx: BenchContext, opts: Options):
    """SFT, World-Gymnast's legs and the baselines, in the report's order (baselines first, the
    main arm last); records each arm's real budget and the equal-budget claims."""
    cfg = ctx.cfg
    candidates = selection_candidates(cfg.challenger_snapshots, opts.dyna_iterations)
    keep = candidates if opts.baselines else 1
    sft, leg = first_leg(ctx, opts.sft_recipes, opts.sft_rule, keep)
    cfg = ctx.cfg  # with the chosen demonstrations
    first = leg
    wg = {wg_name(0): leg.rl}
    for k in range(1, opts.dyna_iterations + 1):
        start = sft if opts.dyna_from == "sft" else leg.rl
        leg = dyna_iteration(ctx, k, start, ctx.report["dyna_seed"], leg)
        wg[wg_name(k)] = leg.rl
    main = wg_name(opts.dyna_iterations)
    checked = cfg.challenger_snapshots > 1
    main_keys = wg_keys(opts.dyna_iterations, checked)
    policies = {"SFT": sft}
    if opts.baselines:
        policies["SFT+select"] = sft_with_selection(ctx, sft, candidates)
        policies["Iter-SFT"] = iter_sft(ctx, main_keys, candidates)
        policies["Sim-RL"] = sim_rl(ctx, sft, first.data_dirs)
    policies |= wg
    chose = bool(opts.sft_recipes)
    budgets = {n: ctx.ledger.budget(arm_keys(n, main_keys, checked, chose)) for n in policies}
    ctx.report.update(main_arm=main, budget=budgets, budget_claims=budget_claims(budgets, main))
    return sft, policies, leg


def finish_report(ctx: BenchContext, sft, policies: dict, evals: dict, leg: Leg) -> None:
    """Imagined success of every arm, the judge on replays, the replicate's verdict and figures;
    prints the replicate's table and writes ``bench_learning.json`` in its folder."""
    cfg, report, main = ctx.cfg, ctx.report, ctx.report["main_arm"]
    wm, judge = leg.world_model, leg.judge  # the last leg's: imagination and replays use them
    # paths, not episodes: three policies' 200 episodes each held 10 GB of frames
    eval_eps = {name: list(ev.episodes) for name, ev in evals.items()}

    def imagine(policy: Path, episodes: list[Path]) -> dict[str, float]:
        """Imagined success from 4 of the episodes' initial frames per task, 4 rollouts each."""
        return imagined_success(
            policy,
            wm.path,
            judge.path,
            spread_sample([read_episode_header(p) for p in episodes], 4),
            group=4,
            horizon_chunks=cfg.grpo_overrides.get("horizon_chunks", 8),
            seed=cfg.seed,
            precision=cfg.precision,
        )

    imag = once_per_policy(
        ctx, "imagined eval", policies, lambda name, art: imagine(art.path, eval_eps[name])
    )
    snapshots = ctx.timed(
        "imagined eval of unselected snapshots",
        lambda: imagine_snapshots(ctx, {a.sha256 for a in policies.values()}, imagine),
    )
    judge_imagined = ctx.timed(
        "judge on imagined replays",
        lambda: world_model_exploitation(
            wm.path, judge.path, eval_eps["SFT"] + eval_eps[main], max_episodes=64, seed=cfg.seed
        ),
    )
    report["verdict"] = target_verdict(
        {name: [ev.outcomes] for name, ev in evals.items()}, cfg.tasks, main
    )
    report.update(imagined=imag, real={n: ev.to_dict() for n, ev in evals.items()})
    points = agreement_points(report)
    report.update(
        agreement=agreement(points),
        imagined_snapshots=snapshots,
        agreement_with_snapshots=agreement(points + snapshot_points(snapshots)),
        pearson_r=agreement(points)["pooled"]["r"],  # the pooled figure, as earlier reports had
        sft=dataclasses.asdict(sft) | {"path": str(sft.path)},
        world_model=dict(wm.metrics),
        judge=dict(judge.metrics),
        judge_on_imagined=judge_imagined,
        grpo=leg.rl.metrics if leg.grpo is None else leg.grpo,  # the last GRPO run's
        imagined_fps_b8=imagination_throughput(
            wm.path, read_episode_header(eval_eps["SFT"][0]).first_frame
        ),
        timings_s=ctx.timings,
        reused_stages=ctx.reused,
        peak_rss_gb=peak_rss_gb(),
    )
    print(format_report(report))
    (ctx.workdir / "bench_learning.json").write_text(json.dumps(report, indent=2, default=str))


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
        "--replicates",
        type=int,
        default=3,
        metavar="R",
        help="independent replicates (own demonstrations, attempts, checks, SFT / world-model / "
        "GRPO seeds), each resumable stage by stage in WORKDIR/rep<r>; more can be added later",
    )
    p.add_argument(
        "--first-replicate",
        type=int,
        default=0,
        metavar="K",
        help="run replicates K..K+R-1 (their seeds, folders rep<K>...): add replicates to those "
        "an earlier run made, each writing rep<r>/results.json",
    )
    p.add_argument(
        "--stations",
        type=int,
        default=1,
        metavar="N",
        help="simulated stations the episodes are spread over, one process each (2 on a 2-core "
        "machine: a station job uses about one core)",
    )
    p.add_argument(
        "--pool",
        nargs="+",
        type=Path,
        default=None,
        metavar="RESULTS",
        help="run nothing: pool these replicates' results.json files (e.g. docs/results/"
        "bench_learning_final/rep*.json) into the report, verdict and figure in WORKDIR",
    )
    p.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="SFT and World-Gymnast only (development runs; the target is then not judged)",
    )
    p.add_argument(
        "--sft-choice",
        default="auto",
        metavar="N[:STEPS],...|auto|off",
        help="the SFT recipes the bench may start from (N demonstrations per task, at STEPS SFT "
        "steps or the config's); each replicate keeps one by --sft-rule "
        "(pipeline/bench/sft_choice.py; auto: the rule's recipes with the bench preset, off "
        "otherwise; off: the config's demo_episodes_per_task and sft_steps)",
    )
    p.add_argument(
        "--sft-rule",
        choices=("budget", "per_task", "pooled"),
        default="budget",
        help="how the SFT choice picks: the least SFT (demonstrations and steps) with room on >= 2 "
        "tasks (budget); per_task and pooled reproduce runs made with the earlier rules (room "
        "on >= 2 tasks over demonstration counts; a band on the pooled check success)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override a RoundConfig field",
    )


def pool_results(paths: list[Path], workdir: Path) -> dict:
    """The bench's report over replicates run apart: their results files pooled (the same
    summary, verdict, markdown, figure and MLflow run as one run of all of them)."""
    base, settings, reports, outcomes = pool(paths)
    cfg = RoundConfig.from_dict(base)
    indices = [rep["replicate"] for rep in reports]
    settings = {**settings, "replicates": len(reports), "replicate_indices": indices}
    summary = summarize(cfg, settings, reports, outcomes)
    summary["pooled_from"] = [str(p) for p in paths]
    Path(workdir).mkdir(parents=True, exist_ok=True)
    write_summary(workdir, summary)
    return summary


def run_from_args(args: argparse.Namespace) -> int:
    if args.pool:
        pool_results(args.pool, args.workdir)
        return 0
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
        replicates=args.replicates,
        baselines=args.baselines,
        sft_recipes=sft_recipes_arg(args.sft_choice, args.preset, args.sft_rule),
        sft_rule=args.sft_rule,
        first_replicate=args.first_replicate,
        stations=args.stations,
    )
    return 0


def sft_recipes_arg(
    value: str, preset: str, rule: str = "budget"
) -> tuple[tuple[int, int | None], ...]:
    """``--sft-choice``: the candidate recipes, () for none. ``N`` is N demonstrations per task
    at the config's SFT steps, ``N:S`` at S steps."""
    from pipeline.bench.sft_choice import RULE_CANDIDATES

    if value == "auto":
        return RULE_CANDIDATES[rule] if preset == "bench" else ()
    if value == "off":
        return ()
    try:
        return tuple(
            (int(n), int(s) if s else None)
            for n, _, s in (v.partition(":") for v in value.split(","))
        )
    except ValueError:
        raise SystemExit(
            f"--sft-choice wants N[:STEPS],N[:STEPS],..., auto or off, got {value!r}"
        ) from None
