"""``gymnast bench capabilities``: what RL in a world model can do that SFT cannot.

Given a learning-bench replicate (``--from W/rep0``: its SFT policy, world model, judge and WG
policy, reused through the stage records; trained by the learning bench's own first leg where
absent), this bench trains three more policies and evaluates them on the simulated station, on
the bench's evaluation seeds, the same seeds for every arm (paired):

- **WG-Distract**: GRPO from SFT in the same world model, as WG, but every start's real frame
  has distractor shapes pasted in with probability ``distractor_prob`` (``GRPOConfig``);
  evaluated in the station's ``distractors`` scene against SFT and WG (row group ``distract``);
- **WG-Language**: the same with the start's instruction replaced by a training paraphrase with
  probability ``paraphrase_prob``; evaluated on the held-out paraphrases (``instruction_set=
  "heldout"``) against SFT and WG (``language``);
- SFT vs WG on the two language tasks, when the replicate trained on them (``language_tasks``);
- **TTT**: per task, test-time training (``policy.test_time``) of WG (or SFT) from ONE frame of
  an episode in a novel scene (``background`` by default; a training seed, not an evaluation
  one); evaluated before vs after in that scene, and in the base scene (regression) (``ttt``).

Each row group's table has, per task, successes/n with a 95% Wilson interval per arm and a
verdict by rule: an arm beats another when its interval's lower bound is above the other's upper
bound (``pipeline.round.statistics.intervals_beyond``). The report goes to
``W/rep0/capabilities/bench_capabilities.{json,md}``. Re-runs reuse every trained policy
(``pipeline.bench.reuse``) and every evaluation whose settings and inputs are unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from pipeline import seeds
from pipeline.bench.arms import checked_snapshot, first_leg
from pipeline.bench.common import EVAL_RANGES, BenchContext, Leg, eval_counts
from pipeline.round.config import RoundConfig
from pipeline.round.records import ModelArtifact
from pipeline.round.stages import checkpoint_sha256, train_challenger
from pipeline.round.statistics import intervals_beyond
from robot_bridge.dispatch import wilson_interval
from robot_bridge.spec import LANGUAGE_TASKS, TASKS

ROWS = ("distract", "language", "language_tasks", "ttt")
TTT_SCENES = ("background", "camera")
VERDICT = {1: "better", -1: "worse", 0: "no difference beyond the intervals"}
FOLDER = "capabilities"


@dataclasses.dataclass
class Options:
    """How a capabilities run is set up, beyond the replicate's RoundConfig."""

    eval_episodes: int = 50
    rows: tuple[str, ...] = ROWS
    eval_range: str = "dev"
    distractor_prob: float = 0.5
    paraphrase_prob: float = 0.5
    ttt_scene: str = "background"
    ttt_from: str = "WG"
    ttt_steps: int | None = None  # None: the replicate's grpo_steps
    progress: bool = True

    def check(self) -> None:
        """Refuses a bad setting before anything runs."""
        unknown = sorted(set(self.rows) - set(ROWS))
        if unknown or not self.rows:
            raise ValueError(f"rows must be some of {', '.join(ROWS)}, got {list(self.rows)}")
        if self.eval_range not in EVAL_RANGES:
            raise ValueError(f"eval_range must be one of {sorted(EVAL_RANGES)}")
        if self.eval_episodes < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {self.eval_episodes}")
        for name in ("distractor_prob", "paraphrase_prob"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.ttt_scene not in TTT_SCENES:
            raise ValueError(f"ttt_scene must be one of {TTT_SCENES}, got {self.ttt_scene!r}")
        if self.ttt_from not in ("SFT", "WG"):
            raise ValueError(f"ttt_from must be SFT or WG, got {self.ttt_from!r}")
        if self.ttt_steps is not None and self.ttt_steps < 1:
            raise ValueError(f"ttt_steps must be >= 1, got {self.ttt_steps}")


@dataclasses.dataclass(frozen=True)
class Condition:
    """Where an evaluation runs: a scene variant and an instruction set of the station."""

    name: str
    scene: str | None = None
    instruction_set: str | None = None


BASE = Condition("base")
DISTRACTORS = Condition("distractors", scene="distractors")
HELDOUT = Condition("heldout_paraphrases", instruction_set="heldout")


# --- the run ---------------------------------------------------------------------------------------


def run(rep_dir: Path, cfg: RoundConfig, opts: Options) -> dict:
    """The bench on one replicate folder: train (or reuse), evaluate, report."""
    opts.check()
    from robot_bridge.client import StationClient
    from robot_bridge.launch import StationProcess

    out = Path(rep_dir) / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    with (
        StationProcess("sim", episodes_dir=out / "station", lease_timeout_s=30) as station,
        StationClient(station.endpoint, timeout_s=60) as client,
    ):
        ctx = BenchContext(client, Path(rep_dir), cfg, {}, opts.progress)
        sft, leg = first_leg(ctx)  # the replicate's stages, reused when it trained them
        groups = {row: ROW_GROUPS[row](ctx, opts, sft, leg) for row in opts.rows}
    report = make_report(cfg, opts, groups, ctx)
    write_report(out, report)
    return report


def ev_seed(opts: Options) -> int:
    return EVAL_RANGES[opts.eval_range]


# --- the trained arms ------------------------------------------------------------------------------


def grpo_variant(ctx: BenchContext, name: str, sft, leg: Leg, overrides: dict) -> ModelArtifact:
    """GRPO from SFT in the replicate's world model with its judge, as WG (steps, settings,
    starts, snapshot check), with ``overrides`` added to its GRPO settings."""
    slug = _slug(name)
    cfg = dataclasses.replace(ctx.cfg, grpo_overrides={**ctx.cfg.grpo_overrides, **overrides})
    vctx = dataclasses.replace(ctx, cfg=cfg)
    d = ctx.workdir / FOLDER / slug
    art = vctx.trained(
        f"{name}: GRPO",
        "grpo",
        lambda: train_challenger(
            sft.path,
            leg.world_model.path,
            leg.judge.path,
            leg.data_dirs,
            d / "policy",
            cfg,
            ctx.progress,
        ),
        f"{FOLDER}/{slug}",
        {"start": sft.sha256, "world_model": leg.world_model.sha256, "judge": leg.judge.sha256},
    )
    return checked_snapshot(vctx, art, d / "check", f"{slug}_")


def ttt_frame(ctx: BenchContext, policy: ModelArtifact, task: str, opts: Options) -> np.ndarray:
    """The one real input of test-time training: the first frame of one episode of ``task`` in
    the novel scene, on the replicate's first training seed (never an evaluation seed)."""
    from robot_bridge.dispatch import run_on_station
    from robot_bridge.episodes import read_episode_header

    seed = ctx.cfg.seed + seeds.BENCH_COLLECT
    dest = ctx.workdir / FOLDER / "ttt_frames" / opts.ttt_scene
    got = run_on_station(ctx.client, policy.path, [task], 1, dest, seed=seed, scene=opts.ttt_scene)
    (path,) = got.episodes
    return np.asarray(read_episode_header(path).first_frame)


def ttt_policy(
    ctx: BenchContext, start: ModelArtifact, leg: Leg, task: str, opts: Options
) -> ModelArtifact:
    """``start`` test-time trained on ``task`` from one novel-scene frame (reused when the same)."""
    frame = ttt_frame(ctx, start, task, opts)
    steps = opts.ttt_steps or ctx.cfg.grpo_steps
    frame_sha = hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest()
    return ctx.trained(
        f"TTT {task}: GRPO from one {opts.ttt_scene} frame",
        "grpo",
        lambda: train_ttt(
            start.path,
            leg,
            frame,
            task,
            ctx.workdir / FOLDER / f"ttt_{task}",
            ctx.cfg,
            steps,
            ctx.progress,
        ),
        f"{FOLDER}/ttt_{task}",
        {"start": start.sha256, "world_model": leg.world_model.sha256}
        | {"judge": leg.judge.sha256, "frame": frame_sha, "scene": opts.ttt_scene}
        | {"ttt_steps": steps},
    )


def train_ttt(
    start: Path, leg: Leg, frame: np.ndarray, task: str, out_dir: Path, cfg: RoundConfig,
    steps: int, progress: bool = True,
) -> ModelArtifact:  # fmt: skip
    """``policy.test_time.test_time_train`` with WG's GRPO settings for ``steps`` steps."""
    from policy.grpo import GRPOConfig
    from policy.test_time import test_time_train
    from policy.vla import VLAPolicy
    from reward.judge import load_judge
    from world_model.model import ActionConditionedWorldModel

    policy = VLAPolicy.from_pretrained(start, device=cfg.device)
    wm = ActionConditionedWorldModel.from_pretrained(leg.world_model.path, device=cfg.device)
    judge = load_judge(leg.judge.path, device=cfg.device)
    overrides = {k: v for k, v in cfg.grpo_overrides.items() if k != "train_tasks"}
    gcfg = GRPOConfig.from_preset(
        "tiny", steps=steps, seed=cfg.seed,
        **{"device": cfg.device, "precision": cfg.precision, **overrides},
    )  # fmt: skip
    history = test_time_train(
        policy, wm, judge, frame, TASKS[task].instruction, gcfg, tasks=[task], progress=progress
    )
    out = Path(policy.save_pretrained(out_dir))
    (out / "grpo_history.json").write_text(
        json.dumps([dataclasses.asdict(h) for h in history], indent=1)
    )
    metrics = {
        "grpo_steps": len(history),
        "imagined_success_first": history[0].success_rate,
        "imagined_success_last": history[-1].success_rate,
        "kept_groups_total": sum(h.kept_groups for h in history),
    }
    return ModelArtifact(out, checkpoint_sha256(out), metrics)


# --- the evaluations -------------------------------------------------------------------------------


def evaluate(
    ctx: BenchContext, arm: str, art: ModelArtifact, tasks, cond: Condition, opts: Options
) -> dict[str, dict]:
    """Per task: successes, n and the 95% Wilson interval of ``art`` in ``cond`` on the eval
    seeds; reused from a record with the same checkpoint, condition, seeds and counts."""
    counts = eval_counts(tasks, opts.eval_episodes)
    inputs = {"sha256": art.sha256, "condition": dataclasses.asdict(cond)}
    inputs |= {"seed": ev_seed(opts), "counts": counts}
    # a folder per checkpoint (the station job resumes in it), a record per evaluation
    d = ctx.workdir / FOLDER / "eval" / opts.eval_range / cond.name / art.sha256[:12]
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]
    record = d / f"evaluation_{digest}.json"
    if record.is_file() and json.loads(record.read_text())["inputs"] == inputs:
        print(f"[eval {arm} ({cond.name})] reusing {record}", flush=True)
        return json.loads(record.read_text())["per_task"]
    per_task = ctx.timed(
        f"eval {arm} ({cond.name})", lambda: _run_eval(ctx, art, list(tasks), cond, d, opts)
    )
    record.write_text(json.dumps({"inputs": inputs, "per_task": per_task}, indent=1))
    return per_task


def _run_eval(ctx, art, tasks, cond: Condition, dest: Path, opts: Options) -> dict:
    """One station job: ``opts.eval_episodes`` greedy episodes per task in ``cond``."""
    from robot_bridge.dispatch import run_on_station

    got = run_on_station(
        ctx.client, art.path, tasks, opts.eval_episodes, dest, seed=ev_seed(opts),
        progress=opts.progress, scene=cond.scene, instruction_set=cond.instruction_set,
    )  # fmt: skip
    return {t: cell(r.successes, r.labelled) for t, r in got.per_task.items()}


def cell(successes: int, n: int) -> dict:
    return {"successes": successes, "n": n, "ci95": list(wilson_interval(successes, n))}


# --- the row groups --------------------------------------------------------------------------------


def row_group(title: str, cond: Condition, arms: dict, per_task: dict, pairs) -> dict:
    """A table: per task, each arm's cell and a verdict for each (arm, baseline) pair."""
    rows = {}
    for task in per_task[next(iter(arms))]:
        cells = {a: per_task[a][task] for a in arms}
        verdicts = {
            f"{a} vs {b}": VERDICT[intervals_beyond(cells[a]["ci95"], cells[b]["ci95"])]
            for a, b in pairs
        }
        rows[task] = {"arms": cells, "verdict": verdicts}
    return {"title": title, "condition": dataclasses.asdict(cond), "arms": list(arms)} | {
        "sha256": {a: art.sha256 for a, art in arms.items()},
        "tasks": rows,
    }


def _eval_all(ctx, arms: dict, tasks, cond: Condition, opts) -> dict:
    return {a: evaluate(ctx, a, art, tasks, cond, opts) for a, art in arms.items()}


def distract_rows(ctx: BenchContext, opts: Options, sft, leg: Leg) -> dict:
    new = grpo_variant(ctx, "WG-Distract", sft, leg, {"distractor_prob": opts.distractor_prob})
    arms = {"SFT": sft, "WG": leg.rl, "WG-Distract": new}
    per_task = _eval_all(ctx, arms, ctx.cfg.tasks, DISTRACTORS, opts)
    pairs = [("WG-Distract", "SFT"), ("WG-Distract", "WG"), ("WG", "SFT")]
    return row_group("distractor scenes (scene=distractors)", DISTRACTORS, arms, per_task, pairs)


def language_rows(ctx: BenchContext, opts: Options, sft, leg: Leg) -> dict:
    new = grpo_variant(ctx, "WG-Language", sft, leg, {"paraphrase_prob": opts.paraphrase_prob})
    arms = {"SFT": sft, "WG": leg.rl, "WG-Language": new}
    per_task = _eval_all(ctx, arms, ctx.cfg.tasks, HELDOUT, opts)
    pairs = [("WG-Language", "SFT"), ("WG-Language", "WG"), ("WG", "SFT")]
    return row_group(
        "held-out paraphrases (instruction_set=heldout)", HELDOUT, arms, per_task, pairs
    )


def language_task_rows(ctx: BenchContext, opts: Options, sft, leg: Leg) -> dict:
    tasks = [t for t in ctx.cfg.tasks if t in LANGUAGE_TASKS]
    title = "language tasks (base scene)"
    if not tasks:
        note = (
            "needs a replicate trained with --set tasks=[...] including the language tasks "
            f"{list(LANGUAGE_TASKS)}; this one trained on {list(ctx.cfg.tasks)}"
        )
        print(f"[language_tasks] skipped: {note}", flush=True)
        return {"title": title, "skipped": note, "arms": [], "tasks": {}}
    arms = {"SFT": sft, "WG": leg.rl}
    per_task = _eval_all(ctx, arms, tasks, BASE, opts)
    return row_group(title, BASE, arms, per_task, [("WG", "SFT")])


def ttt_rows(ctx: BenchContext, opts: Options, sft, leg: Leg) -> dict:
    """Per task: the policy before and after test-time training on that task's one frame, in
    the novel scene and in the base scene (regression)."""
    before = leg.rl if opts.ttt_from == "WG" else sft
    novel = Condition(opts.ttt_scene, scene=opts.ttt_scene)
    after = {t: ttt_policy(ctx, before, leg, t, opts) for t in ctx.cfg.tasks}
    out = {"title": f"test-time training from one {opts.ttt_scene} frame", "from": opts.ttt_from}
    for cond in (novel, BASE):
        per_task = {"before": evaluate(ctx, "before", before, ctx.cfg.tasks, cond, opts)}
        per_task["after"] = {}
        for t in ctx.cfg.tasks:
            per_task["after"] |= evaluate(ctx, f"after {t}", after[t], [t], cond, opts)
        arms = {"before": before, "after": after[ctx.cfg.tasks[0]]}
        g = row_group(f"in the {cond.name} scene", cond, arms, per_task, [("after", "before")])
        g["sha256"]["after"] = {t: a.sha256 for t, a in after.items()}
        out[cond.name if cond is BASE else "novel"] = g
    out["arms"] = ["before", "after"]
    return out


ROW_GROUPS = {
    "distract": distract_rows,
    "language": language_rows,
    "language_tasks": language_task_rows,
    "ttt": ttt_rows,
}


# --- the report ------------------------------------------------------------------------------------


def make_report(cfg: RoundConfig, opts: Options, groups: dict, ctx: BenchContext) -> dict:
    return {
        "config": cfg.to_dict(),
        "options": dataclasses.asdict(opts),
        "eval_seed": ev_seed(opts),
        "groups": groups,
        "stages": ctx.report,
        "timings_s": ctx.timings,
        "reused_stages": ctx.reused,
    }


def _fmt(c: dict) -> str:
    lo, hi = c["ci95"]
    if not c["n"]:
        return "-"
    return f"{c['successes']}/{c['n']} [{100 * lo:.0f}, {100 * hi:.0f}]"


def format_table(g: dict, level: str = "###") -> list[str]:
    """One row group as a markdown table (a skipped group as its note)."""
    if "skipped" in g:
        return [f"{level} {g['title']}", "", f"skipped: {g['skipped']}", ""]
    pairs = list(next(iter(g["tasks"].values()))["verdict"])
    lines = [
        f"{level} {g['title']}",
        "",
        "| task | " + " | ".join(g["arms"]) + " | " + " | ".join(pairs) + " |",
        "|---|" + "---|" * (len(g["arms"]) + len(pairs)),
    ]
    for task, row in g["tasks"].items():
        cells = [_fmt(row["arms"][a]) for a in g["arms"]]
        lines.append(f"| {task} | " + " | ".join(cells + [row["verdict"][p] for p in pairs]) + " |")
    return [*lines, ""]


def format_report(r: dict) -> str:
    """Every row group's table: successes/n [95% Wilson interval, %] and the verdicts."""
    lines = [
        f"## capabilities (eval seeds {r['eval_seed']}+, {r['options']['eval_episodes']} "
        "episodes per task and arm; a verdict says better/worse only beyond the 95% intervals)",
        "",
    ]
    for row, g in r["groups"].items():
        if row == "ttt":
            lines += [f"### {g['title']} (from {g['from']})", ""]
            lines += format_table(g["novel"], "####") + format_table(g["base"], "####")
        else:
            lines += format_table(g)
    lines.append("reused from an earlier run: " + (", ".join(r["reused_stages"]) or "none"))
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    text = format_report(report)
    (out / "bench_capabilities.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "bench_capabilities.md").write_text(text)
    print(text, flush=True)
    print(f"report: {out / 'bench_capabilities.json'}, {out / 'bench_capabilities.md'}", flush=True)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


# --- the command -----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="rep_dir",
        type=Path,
        default=Path(".gymnast/bench_learning/rep0"),
        help="a learning-bench replicate folder (W/rep0): its stages are reused, or trained there",
    )
    p.add_argument(
        "--preset",
        default="bench",
        help="RoundConfig preset when the replicate has no bench_learning.json to take it from",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="override a RoundConfig field",
    )
    p.add_argument("--rows", default=",".join(ROWS), help=f"row groups, some of {','.join(ROWS)}")
    p.add_argument("--eval-episodes", type=int, default=50, help="per task, arm and condition")
    p.add_argument("--eval-range", choices=sorted(EVAL_RANGES), default="dev")
    p.add_argument("--distractor-prob", type=float, default=0.5, help="WG-Distract's GRPO")
    p.add_argument("--paraphrase-prob", type=float, default=0.5, help="WG-Language's GRPO")
    p.add_argument("--ttt-scene", choices=TTT_SCENES, default="background")
    p.add_argument("--ttt-from", choices=("SFT", "WG"), default="WG")
    p.add_argument(
        "--ttt-steps", type=int, default=None, help="default: the replicate's grpo_steps"
    )


def replicate_config(rep_dir: Path, preset: str, sets: list[str]) -> RoundConfig:
    """The replicate's own config (its ``bench_learning.json``), else ``preset`` with the seed of
    replicate r for a folder named ``rep<r>``; ``--set`` overrides either."""
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in sets)}
    saved = Path(rep_dir) / "bench_learning.json"
    if saved.is_file():
        cfg = RoundConfig.from_dict(json.loads(saved.read_text())["config"])
        return dataclasses.replace(cfg, **overrides) if overrides else cfg
    cfg = RoundConfig.from_preset(preset, **overrides)
    m = re.fullmatch(r"rep(\d+)", Path(rep_dir).name)
    return dataclasses.replace(
        cfg, seed=seeds.bench_replicate_seed(cfg.seed, int(m[1]) if m else 0)
    )


def run_from_args(args: argparse.Namespace) -> int:
    cfg = replicate_config(args.rep_dir, args.preset, args.set)
    opts = Options(
        eval_episodes=args.eval_episodes,
        rows=tuple(r.strip() for r in args.rows.split(",") if r.strip()),
        eval_range=args.eval_range,
        distractor_prob=args.distractor_prob,
        paraphrase_prob=args.paraphrase_prob,
        ttt_scene=args.ttt_scene,
        ttt_from=args.ttt_from,
        ttt_steps=args.ttt_steps,
    )
    run(args.rep_dir, cfg, opts)
    return 0
