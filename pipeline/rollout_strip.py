"""A strip of GRPO's imagined rollouts with the judge's score on each: where reward hacking shows.

GRPO learns whatever the judge rewards in the world model's imagination. A rollout the judge
scores 0.95 whose frames show the drawer never moving (or a world model that "opens" it by
smearing pixels) is reward hacking, and only a picture shows it. ``RolloutKeeper`` is
``train_grpo``'s ``on_rollouts``: at a few steps (the first and the last by default) it keeps a
handful of the step's rollouts, spread over the judge's ranking (highest first), each as a few
frames across the horizon with its instruction, score and reward. ``write`` draws them as one PNG:
one row per rollout, a caption above each ("open the drawer, judge score 0.93 (reward 1), step
20/20"); the challenger asset shows it inline in Dagster and logs it to the stage's MLflow run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CAPTION = "GRPO's imagined rollouts, the judge's score on each (first and last step, highest first)"


@dataclass
class KeptRollout:
    step: int  # train_grpo's step, from 0
    instruction: str
    score: float  # the judge's mean score over its samples, in [0, 1]
    reward: float  # what GRPO trained on: the majority vote (0 or 1)
    frames: np.ndarray  # (n, h, w, 3) uint8, spread from the start frame to the last

    def caption(self, total_steps: int) -> str:
        return (
            f"{self.instruction}, judge score {self.score:.2f} (reward {self.reward:g}), "
            f"step {self.step + 1}/{total_steps}"
        )


class RolloutKeeper:
    """Keeps ``per_step`` rollouts of each step in ``steps`` (default: the first and the last of
    ``total_steps``), ``frames`` frames each: a few kilobytes, not the step's videos."""

    def __init__(
        self,
        total_steps: int,
        per_step: int = 3,
        frames: int = 6,
        steps: Iterable[int] | None = None,
    ) -> None:
        if total_steps < 1 or per_step < 1 or frames < 1:
            raise ValueError(
                f"need total_steps, per_step and frames >= 1, got {total_steps}, {per_step}, {frames}"
            )
        self.total_steps = total_steps
        self.per_step = per_step
        self.frames = frames
        self.steps = set(steps) if steps is not None else {0, total_steps - 1}
        self.kept: list[KeptRollout] = []

    def __call__(self, step: int, rollouts, rewards, scores) -> None:
        if step not in self.steps:
            return
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        rewards = np.asarray(rewards, dtype=np.float32).reshape(-1)
        videos = rollouts.videos  # (B, T + 1, h, w, 3) uint8
        if not len(scores) == len(rewards) == videos.shape[0] == len(rollouts.instructions):
            raise ValueError(
                f"{videos.shape[0]} rollouts, {len(rewards)} rewards, {len(scores)} scores"
            )
        order = np.argsort(-scores, kind="stable")  # highest first: where hacking would show
        n = min(self.per_step, len(order))
        picked = order[np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))]
        t = videos.shape[1]
        at = np.unique(np.linspace(0, t - 1, min(self.frames, t)).round().astype(int))
        for i in picked.tolist():
            self.kept.append(
                KeptRollout(
                    step=step,
                    instruction=rollouts.instructions[i],
                    score=float(scores[i]),
                    reward=float(rewards[i]),
                    frames=np.array(np.asarray(videos[i])[at], dtype=np.uint8),  # a copy
                )
            )

    def write(self, out: Path) -> Path | None:
        """The strip at ``out``, or None when nothing was kept or drawing failed (a warning: a
        preview must never fail the stage). An older strip at ``out`` is removed either way."""
        out = Path(out)
        out.unlink(missing_ok=True)
        if not self.kept:
            return None
        try:
            return render_rollout_strip(self.kept, self.total_steps, out)
        except Exception as e:
            warnings.warn(f"no strip of GRPO's rollouts: {e}", stacklevel=2)
            return None


def render_rollout_strip(
    kept: list[KeptRollout], total_steps: int, out: Path, min_frame: int = 96
) -> Path:
    """One row per kept rollout: its caption, then its frames left to right (start to end);
    frames smaller than ``min_frame`` pixels are enlarged (nearest: no invented detail). A bar
    on the left of each row is green where the judge rewarded the rollout, red where not."""
    from PIL import Image, ImageDraw, ImageFont

    if not kept:
        raise ValueError("no rollouts to draw")
    h, w = kept[0].frames.shape[1:3]
    scale = max(1, -(-min_frame // min(h, w)))  # ceil
    fh, fw = h * scale, w * scale
    n = max(len(k.frames) for k in kept)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType size support: the bitmap font
        font = ImageFont.load_default()
    text_h, pad, bar = 18, 6, 6
    row_h = text_h + fh + pad
    width = bar + 2 + n * (fw + 2)
    canvas = Image.new("RGB", (width, row_h * len(kept)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, k in enumerate(kept):
        y = r * row_h
        caption = _fit(draw, k, total_steps, font, width - bar - 4)
        draw.text((bar + 2, y + 2), caption, fill="black", font=font)
        colour = (40, 160, 60) if k.reward >= 0.5 else (200, 50, 50)
        draw.rectangle([0, y + text_h, bar - 1, y + text_h + fh - 1], fill=colour)
        for c, f in enumerate(k.frames):
            img = Image.fromarray(np.asarray(f, dtype=np.uint8)).resize((fw, fh), Image.NEAREST)
            canvas.paste(img, (bar + 2 + c * (fw + 2), y + text_h))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def _fit(draw, kept: KeptRollout, total_steps: int, font, width: int) -> str:
    """The caption, its instruction shortened ("...") until it fits ``width`` pixels."""
    text, instruction = kept.caption(total_steps), kept.instruction
    while draw.textlength(text, font=font) > width and len(instruction) > 8:
        instruction = instruction[:-4]
        short = KeptRollout(kept.step, instruction + "...", kept.score, kept.reward, kept.frames)
        text = short.caption(total_steps)
    return text


def publish(keeper: RolloutKeeper, out: Path, run) -> dict:
    """Write ``keeper``'s strip to ``out``, log it to the stage's MLflow ``run`` (``previews/``)
    and return the challenger's Dagster metadata for it: the strip inline and its path ({} when
    there is no strip)."""
    return publish_strip(keeper.write(out), run)


def publish_strip(strip: Path | None, run) -> dict:
    """A strip already drawn (e.g. by rank 0 of a launched stage): logged to ``run`` and as
    Dagster metadata; {} when there is none."""
    import dagster as dg

    from pipeline.previews import preview_md

    if strip is None or not Path(strip).is_file():
        return {}
    run.log_artifact(strip, "previews")
    return {
        "imagined_rollouts": preview_md(strip, CAPTION, max_width=1024),
        "imagined_rollouts_file": dg.MetadataValue.path(str(strip)),
    }
