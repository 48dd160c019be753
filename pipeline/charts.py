"""Pictures of the loop for the Dagster UI and MLflow: success over rounds, video frame strips.

``success_history`` reads every round's gate evidence (champion and challenger on that round's
fresh gate seeds, paired) from the round store; ``plot_success_over_rounds`` draws it with 95%
Wilson intervals, one panel for all tasks and one per task. ``video_strip`` turns an
imagined-vs-real preview video (real | imagined side by side) into a PNG the UI shows inline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from robot_bridge.dispatch import wilson_interval

ALL_TASKS = "all tasks"


@dataclass
class Rate:
    successes: int
    labelled: int

    @property
    def rate(self) -> float:
        return self.successes / self.labelled if self.labelled else math.nan

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.labelled)


@dataclass
class RoundPoint:
    """One round's gate: champion and challenger per task and over all tasks."""

    round: str
    champion: dict[str, Rate]
    challenger: dict[str, Rate]
    promoted: bool | None = None
    tasks: list[str] = field(default_factory=list)


def _rates(ev) -> dict[str, Rate]:
    out = {t: Rate(r.successes, r.labelled) for t, r in ev.per_task.items()}
    out[ALL_TASKS] = Rate(
        sum(r.successes for r in out.values()), sum(r.labelled for r in out.values())
    )
    return out


def success_history(
    store, upto: str, current=None, promoted: bool | None = None
) -> list[RoundPoint]:
    """Every round up to ``upto`` whose gate ran (a ``real_evaluation`` record), oldest first.
    ``current``: this round's ``ChallengerEvaluation`` when it is not in the store yet;
    ``promoted``: this round's decision (earlier rounds' come from their ``champion`` records)."""
    points = []
    for k in store.rounds():
        if k > upto:
            continue
        ev = current if (k == upto and current is not None) else None
        if ev is None and store.has("real_evaluation", k):
            ev = store.load("real_evaluation", k)
        if ev is None:
            continue
        was_promoted = promoted if k == upto else None
        if was_promoted is None and store.has("champion", k):
            was_promoted = store.load("champion", k).promoted
        points.append(_point(k, ev, was_promoted))
    if current is not None and not any(p.round == upto for p in points):
        points.append(_point(upto, current, promoted))
    return points


def _point(round_key: str, ev, promoted: bool | None) -> RoundPoint:
    champion, challenger = _rates(ev.champion_evaluation), _rates(ev.evaluation)
    tasks = [t for t in champion if t != ALL_TASKS] or [t for t in challenger if t != ALL_TASKS]
    return RoundPoint(round_key, champion, challenger, promoted, tasks)


def plot_success_over_rounds(points: list[RoundPoint], out: Path) -> Path:
    """Champion vs challenger success per round on the gate seeds, 95% Wilson intervals (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    tasks = [ALL_TASKS] + sorted({t for p in points for t in p.tasks})
    n = len(points)
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    width = max(4.0, 0.9 * n + 2.5)
    fig, grid = plt.subplots(
        rows, cols, figsize=(width * cols, 3.6 * rows + 0.4), squeeze=False, sharey=True
    )
    axes = [list(grid.flat)]
    for spare in axes[0][len(tasks) :]:
        spare.set_visible(False)
    x = list(range(n))
    for ax, task in zip(axes[0], tasks, strict=False):
        for who, dx, colour in (("champion", -0.12, "#1f77b4"), ("challenger", 0.12, "#d62728")):
            rates = [getattr(p, who).get(task, Rate(0, 0)) for p in points]
            xs, ys, lo, hi = [], [], [], []
            for i, r in enumerate(rates):
                if not r.labelled:
                    continue
                low, high = r.ci95
                xs.append(i + dx)
                ys.append(r.rate)
                lo.append(max(0.0, r.rate - low))  # rounding: Wilson's bound can pass the rate
                hi.append(max(0.0, high - r.rate))
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=4, color=colour, label=who)
        for i, p in enumerate(points):
            if p.promoted:
                ax.axvspan(i - 0.4, i + 0.4, color="#2ca02c", alpha=0.12, lw=0)
        ax.set_title(task)
        ax.set_xticks(x, [p.round for p in points], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(axis="y", alpha=0.3)
    for row in grid:
        row[0].set_ylabel("success, gate seeds")
    from matplotlib.patches import Patch

    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(Patch(color="#2ca02c", alpha=0.25))
    labels.append("promoted that round")
    fig.legend(handles, labels, loc="upper right", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(
        "Champion vs challenger per round (real, paired gate seeds)", fontsize=10, x=0.01, ha="left"
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def video_strip(video: Path, out: Path, n: int = 6) -> Path:
    """A PNG of ``n`` frames spread over a side-by-side preview video: the left halves (real) on
    the top row, the right halves (imagined) below, time from left to right."""
    import av
    import numpy as np
    from PIL import Image

    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{video} has no frames")
    idx = [round(i * (len(frames) - 1) / max(n - 1, 1)) for i in range(n)]
    half = frames[0].shape[1] // 2
    top = np.concatenate([frames[i][:, :half] for i in idx], axis=1)
    bottom = np.concatenate([frames[i][:, -half:] for i in idx], axis=1)
    gap = np.full((4, top.shape[1], 3), 255, np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([top, gap, bottom], axis=0)).save(out)
    return out


def plot_arms_per_task(
    per_replicate: dict[str, list[dict]], pooled: dict[str, dict], tasks: list[str], out: Path
) -> Path:
    """The learning bench's figure: one panel per task, every arm's real success in each
    replicate (dots) and pooled over replicates (black diamonds), with 95% Wilson intervals.
    ``per_replicate[arm][r][task]`` and ``pooled[arm][task]``: {"successes", "labelled"}."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    arms = list(per_replicate)
    reps = max((len(v) for v in per_replicate.values()), default=0)
    cols = min(2, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, grid = plt.subplots(
        rows, cols, figsize=(1.1 * len(arms) * cols + 2, 3.4 * rows + 0.5), squeeze=False
    )
    for spare in list(grid.flat)[len(tasks) :]:
        spare.set_visible(False)
    colours = plt.get_cmap("tab10")
    width = 0.6 / max(reps + 1, 1)
    for ax, task in zip(grid.flat, tasks, strict=False):
        for i, arm in enumerate(arms):
            points = [*per_replicate[arm], None]
            for r, rep in enumerate(points):
                rate = pooled[arm][task] if rep is None else rep[task]
                x = i - 0.3 + width * (r + 0.5)
                _errorbar(
                    ax,
                    x,
                    Rate(rate["successes"], rate["labelled"]),
                    "D" if rep is None else "o",
                    "black" if rep is None else colours(r % 10),
                    ("pooled" if rep is None else f"replicate {r}") if i == 0 else None,
                )
        ax.set_title(task)
        ax.set_xticks(range(len(arms)), arms, rotation=25, ha="right", fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel("real success, evaluation seeds")
    handles, labels = grid.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=reps + 1, fontsize=8, frameon=False)
    fig.suptitle("Success per task and arm, 95% Wilson intervals", fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _errorbar(ax, x: float, r: Rate, fmt: str, colour, label) -> None:
    if not r.labelled:
        return
    low, high = r.ci95
    yerr = [[max(0.0, r.rate - low)], [max(0.0, high - r.rate)]]
    ax.errorbar([x], [r.rate], yerr=yerr, fmt=fmt, capsize=3, color=colour, ms=4, label=label)
