"""A world-model lever on a replicate's own data: train the first leg's world model again with
``world_model_overrides`` added to the preset's (same data, steps, seed and held-out split) and
print its open-loop PSNR lead over copy-first-frame per step beside the replicate's own world
model (run it again once the replicate has trained that, to compare).

    python3 -m uv run python docs/diagnostics/world_model_lever.py REP_DIR OUT_DIR \
        '{"anchor_first_frame": true}'
"""

import dataclasses
import json
import sys
from pathlib import Path

from pipeline.round.config import ROUND_PRESETS, RoundConfig
from pipeline.round.episodes import load_episode_headers
from pipeline.round.stages import OPEN_LOOP_FILE, refresh_world_model, with_covering_horizon


def lead(record: dict) -> list[float]:
    return [
        a - b
        for a, b in zip(record["psnr_per_step"], record["copy_first_psnr_per_step"], strict=True)
    ]


def replicate_config(rep: Path, dirs: list[Path]) -> RoundConfig:
    """The first leg's world-model settings as the bench made them: the `bench` preset, the
    chosen SFT's recipe (the stage record of a policy whose attempts are in ``sft_attempts``;
    where an earlier SFT choice left its attempts there too, the one the replicate's world-model
    stage record names), GRPO's covering horizon over SFT's own episodes."""
    headers = load_episode_headers(dirs)
    shas = {h.policy_sha256 for h in load_episode_headers([rep / "sft_attempts"])}
    stages = [
        r
        for r in map(json.loads, map(Path.read_text, rep.glob("sft_*.stage.json")))
        if r["sha256"] in shas
    ]
    wm_stage = rep / "world_model.stage.json"
    if len(stages) > 1 and wm_stage.exists():
        recipe = ("demo_episodes_per_task", "sft_steps")
        wm_inputs = json.loads(wm_stage.read_text())["inputs"]
        stages = [r for r in stages if all(r["inputs"][k] == wm_inputs[k] for k in recipe)]
    (stage,) = stages
    fields = {f.name for f in dataclasses.fields(RoundConfig)}
    preset = {k: v for k, v in ROUND_PRESETS["bench"].items() if k in fields}
    cfg = RoundConfig(**{**preset, **stage["inputs"]})
    return with_covering_horizon(cfg, headers, stage["sha256"])


def main(rep: Path, out: Path, overrides: dict) -> None:
    dirs = [rep / "bootstrap" / "demos", rep / "sft_attempts", rep / "sft_explore"]
    if not (out / OPEN_LOOP_FILE).exists():
        cfg = replicate_config(rep, dirs)
        # on top of the preset's own (the `bench` preset's own_context_prob stays unless named)
        cfg = dataclasses.replace(cfg, world_model_overrides=cfg.world_model_overrides | overrides)
        art = refresh_world_model(dirs, None, out, cfg, progress=False)
        print("metrics:", json.dumps(art.metrics))
    ours = json.loads((out / OPEN_LOOP_FILE).read_text())
    base_file = rep / "world_model" / OPEN_LOOP_FILE
    if not base_file.exists():
        print("the replicate's own world model is not trained yet; run again to compare")
        print("lead per step:", [round(x, 2) for x in lead(ours)])
        return
    base = json.loads(base_file.read_text())
    assert ours["horizon"] == base["horizon"], (ours["horizon"], base["horizon"])
    print(f"horizon {base['horizon']} steps; lead over copy-first-frame (dB) per step")
    print("step | replicate's world model | with", json.dumps(overrides))
    for i, (a, b) in enumerate(zip(lead(base), lead(ours), strict=True), start=1):
        print(f"{i:4d} | {a:+6.2f} | {b:+6.2f}")
    print(f"worst step: {min(lead(base)):+.2f} | {min(lead(ours)):+.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]))
