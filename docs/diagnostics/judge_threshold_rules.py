"""Lever: the judge's threshold by another rule (on the same validation split), held-out metrics."""

import dataclasses
import glob
import json
from pathlib import Path

import numpy as np

from pipeline.round.config import RoundConfig
from pipeline.round.stages import load_episodes, split_by_label
from reward.judge import load_judge
from reward.train import _score_episodes, binary_metrics

R = Path("/work/bench_runs/final_v3/rep0")
d = json.loads((R / "bench_learning.json").read_text())["config"]
cfg = RoundConfig(
    **{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(RoundConfig)}}
)
dirs = [
    R / "bootstrap/demos",
    R / "sft_attempts",
    R / "sft_explore",
    Path(glob.glob(str(R / "dyna1/episodes/*"))[0]),
]
eps = [e for e in load_episodes(dirs) if e.success is not None]
rest, held = split_by_label(eps, cfg.holdout_fraction)
train, val = split_by_label(rest, cfg.holdout_fraction, salt="judge-threshold")
print("val", len(val), sum(e.success for e in val), "held", len(held), sum(e.success for e in held))


def rules(p, y):
    u = np.unique(np.clip(p, 1e-7, 1 - 1e-7))
    lg = np.log(u / (1 - u))
    cands = np.append(1 / (1 + np.exp(-(lg[:-1] + lg[1:]) / 2)), 0.5)

    def pick(score):
        return max(cands, key=lambda t: (score(p >= t, y), -abs(t - 0.5)))

    def f1(v, y):
        return binary_metrics(v, y)["f1"] or 0

    def bal(v, y):
        return (v[y].mean() + (~v[~y]).mean()) / 2

    def fb(v, y, b=0.5):
        m = binary_metrics(v, y)
        P, Rr = m["precision"] or 0, m["recall"] or 0
        return 0 if P + Rr == 0 else (1 + b * b) * P * Rr / (b * b * P + Rr)

    return {"f1": pick(f1), "balanced_acc": pick(bal), "f0.5": pick(fb), "0.5": 0.5}


judges = {
    "dyna1/judge": R / "dyna1/judge",
    "judge": R / "judge",
    "scratch": Path("/work/diag/judge_scratch"),
}
for name, path in judges.items():
    j = load_judge(path, device="cpu")
    pv, yv = _score_episodes(j, val, "val")
    ph, yh = _score_episodes(j, held, "held")
    tasks = np.array([e.task for e in held])
    for rule, t in rules(pv, yv).items():
        m = binary_metrics(ph >= t, yh)
        per = {
            tk: f"{int(((ph >= t) & ~yh & (tasks == tk)).sum())}/{int((~yh & (tasks == tk)).sum())}"
            for tk in sorted(set(tasks))
        }
        print(
            f"{name:12s} {rule:13s} thr {t:.4f}  P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f}  false successes per task {per}"
        )
