"""A world-model lever on a replicate's own data: train the first leg's world model again with
``world_model_overrides`` (same data, steps, seed and held-out split) and print its open-loop PSNR
lead over copy-first-frame per step beside the replicate's own world model.

    python3 -m uv run python docs/diagnostics/world_model_lever.py REP_DIR OUT_DIR \
        '{"anchor_first_frame": true}'
"""

import dataclasses
import json
import sys
from pathlib import Path

from pipeline.round.config import ROUND_PRESETS, RoundConfig
from pipeline.round.stages import OPEN_LOOP_FILE, refresh_world_model


def lead(record: dict) -> list[float]:
    return [
        a - b
        for a, b in zip(record["psnr_per_step"], record["copy_first_psnr_per_step"], strict=True)
    ]


def main(rep: Path, out: Path, overrides: dict) -> None:
    stage = json.loads((rep / "world_model.stage.json").read_text())
    base = json.loads((Path(stage["path"]) / OPEN_LOOP_FILE).read_text())
    chunks = base["horizon"] // 5  # the tiny VLA's chunk: the horizon the replicate's GRPO ran
    fields = {f.name for f in dataclasses.fields(RoundConfig)}
    preset = {k: v for k, v in ROUND_PRESETS["bench"].items() if k in fields}
    cfg = RoundConfig(**{**preset, **stage["inputs"]})
    cfg = dataclasses.replace(
        cfg,
        grpo_horizon="fixed",
        grpo_overrides={**cfg.grpo_overrides, "horizon_chunks": chunks},
        world_model_overrides=overrides,
    )
    dirs = [rep / "bootstrap" / "demos", rep / "sft_attempts", rep / "sft_explore"]
    art = refresh_world_model(dirs, None, out, cfg, progress=False)
    ours = json.loads((out / OPEN_LOOP_FILE).read_text())
    assert ours["horizon"] == base["horizon"], (ours["horizon"], base["horizon"])
    print(f"horizon {base['horizon']} steps; lead over copy-first-frame (dB) per step")
    print("step | replicate's world model | with", json.dumps(overrides))
    for i, (a, b) in enumerate(zip(lead(base), lead(ours), strict=True), start=1):
        print(f"{i:4d} | {a:+6.2f} | {b:+6.2f}")
    print(f"worst step: {min(lead(base)):+.2f} | {min(lead(ours)):+.2f}")
    print("metrics:", json.dumps(art.metrics))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]))
