"""The learning bench's stage reuse: a re-run in the same workdir skips a trained stage whose
settings and inputs are unchanged.

Each trained stage writes a small JSON record (``<stage>.stage.json``) beside its checkpoint: the
``RoundConfig`` fields it depends on, what it started from, and the checkpoint's path and sha256.
The Dagster loop does not use this: its reuse is Dagster's own materializations.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.round.config import RoundConfig
from pipeline.round.records import ModelArtifact
from pipeline.round.stages import checkpoint_sha256

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
        "world_model_overrides",
        "holdout_fraction",
    ),
    "judge": (
        *_SFT,
        "sft_steps",
        "seed",
        *_DATA,
        "holdout_fraction",
        "judge_steps",
        "judge_replays",
        "judge_threshold_rule",
    ),
    "grpo": (
        *_SFT,
        "sft_steps",
        "seed",
        *_DATA,
        "world_model_steps",
        "world_model_overrides",
        "holdout_fraction",
        "judge_steps",
        "judge_replays",
        "judge_threshold_rule",
        "grpo_steps",
        "grpo_overrides",
        "challenger_snapshots",
    ),
    # the baselines (SFT+select has no stage of its own: it checks the policies SFT kept): SFT
    # on the demonstrations and the main arm's real successes (its data digest in ``upstream``);
    # GRPO in the gapped simulator from SFT
    "iter_sft": (*_SFT, "sft_steps", "seed"),
    "sim_rl": (
        *_SFT,
        "sft_steps",
        "seed",
        *_DATA,
        "grpo_steps",
        "grpo_overrides",
        "challenger_snapshots",
    ),
}


# fields added after records were written: left out of a stage's inputs at these values, so a
# record written before the field existed still matches a run that leaves it at its default
SILENT_AT = {"judge_replays": False}


def reuse_or_train(
    record: Path, stage: str, cfg: RoundConfig, train, upstream: dict | None = None
) -> tuple[ModelArtifact, bool]:
    """``train()`` unless ``record`` says an identical earlier run left this stage's checkpoint.
    ``upstream`` adds what the settings do not pin down: a Dyna stage's inputs are the checkpoints
    it starts from (their sha256) and its seeds, so a re-run reuses it exactly when they match."""
    fields = {
        f: getattr(cfg, f)
        for f in STAGE_INPUTS[stage]
        if not (f in SILENT_AT and getattr(cfg, f) == SILENT_AT[f])
    } | (upstream or {})
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
