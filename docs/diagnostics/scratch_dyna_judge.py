"""Lever: the Dyna judge trained from scratch (judge_steps) on all the Dyna data, not finetuned."""

import dataclasses
import glob
import json
from pathlib import Path

from pipeline.round.config import RoundConfig
from pipeline.round.stages import refresh_judge

R = Path("/work/bench_runs/final_v3/rep0")
d = json.loads((R / "bench_learning.json").read_text())["config"]
fields = {f.name for f in dataclasses.fields(RoundConfig)}
cfg = RoundConfig(**{k: v for k, v in d.items() if k in fields})
runs = glob.glob(str(R / "dyna1/episodes/*"))
assert len(runs) == 1, runs
dirs = [R / "bootstrap/demos", R / "sft_attempts", R / "sft_explore", Path(runs[0])]
art = refresh_judge(dirs, None, Path("/work/diag/judge_scratch"), cfg, progress=False)
print(
    {
        k: round(v, 3)
        for k, v in art.metrics.items()
        if k.startswith("heldout") or k in ("threshold", "train_time_s")
    }
)
