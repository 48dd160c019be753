"""What a round's asset pages show: frame strips and inline previews, per-task success as
metadata the UI plots across rounds, model metadata and the evaluation metrics logged to MLflow.

A preview never fails a step: a video that cannot be read falls back to its path.
"""

from __future__ import annotations

import base64
import io
import math
import time
import warnings
from pathlib import Path

import dagster as dg

from gymnast_common.memory import peak_rss_mb
from pipeline.resources import ChallengerEvaluation
from pipeline.round.records import Evaluation, ModelArtifact
from robot_bridge.episodes import read_episode


def frame_strip(episode_path: Path, out: Path, n: int = 6) -> Path:
    """A PNG of ``n`` frames spread over one real episode (what the camera saw)."""
    from PIL import Image

    ep = read_episode(episode_path)
    idx = [round(i * (len(ep.frames) - 1) / max(n - 1, 1)) for i in range(n)]
    frames = [Image.fromarray(ep.frames[i]) for i in idx]
    w, h = frames[0].size
    strip = Image.new("RGB", (w * n, h))
    for i, f in enumerate(frames):
        strip.paste(f, (i * w, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(out)
    return out


def preview_md(path: Path, caption: str, max_width: int = 768) -> dg.MetadataValue:
    """Markdown with the preview inlined as a PNG data URI, for the asset's page in the UI.

    The UI renders markdown metadata in place when it is under 1,000 characters and behind a
    "[Show Markdown]" button otherwise (every inlined image), whose dialog draws the image
    (its markdown sanitizer allows ``data:`` sources). A video is shown as a strip of its frames
    (``video_md``); anything else as its path."""
    if path.suffix.lower() != ".png":
        return dg.MetadataValue.md(f"**{caption}**: `{path}`")
    from PIL import Image

    img = Image.open(path)
    img.thumbnail((max_width, max_width))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return dg.MetadataValue.md(
        f"**{caption}**\n\n![{caption}](data:image/png;base64,"
        f"{base64.b64encode(buf.getvalue()).decode()})"
    )


def video_md(video: Path, caption: str, strip_dir: Path, max_width: int = 1024) -> dg.MetadataValue:
    """An imagined-vs-real preview video inline: a PNG strip of its frames (real on top, imagined
    below), written to ``strip_dir`` (never into the checkpoint folder: that would change its
    checksum). Falls back to the path if the video cannot be read."""
    from pipeline.charts import video_strip

    video = Path(video)
    if video.suffix.lower() == ".png":
        return preview_md(video, caption)
    try:
        strip = video_strip(video, Path(strip_dir) / f"{video.parent.parent.name}_{video.stem}.png")
    except Exception as e:  # a preview must never fail the step
        warnings.warn(f"no frame strip of {video}: {e}", stacklevel=2)
        return preview_md(video, caption)
    return preview_md(
        strip, f"{caption}; top: real, bottom: imagined, time left to right", max_width
    )


def evaluation_metadata(ev: Evaluation, prefix: str = "") -> dict:
    """Success per task as text with its interval, and as numbers (``success/<task>``) that the
    UI plots across partitions (the asset's Plots tab). ``prefix``: ``champion/`` etc."""
    meta: dict = {}
    if not prefix:
        meta["episodes"] = len(ev.episodes)
    if not math.isnan(ev.success_rate):
        meta[f"{prefix}success_rate"] = dg.MetadataValue.float(ev.success_rate)
    for task, r in ev.per_task.items():
        lo, hi = r.ci95
        meta[f"{prefix}{task}/success"] = dg.MetadataValue.text(
            f"{r.successes}/{r.labelled} [{lo:.2f}, {hi:.2f}]"
        )
        if r.labelled:
            meta[f"{prefix}success/{task}"] = dg.MetadataValue.float(r.success_rate)
    return meta


def gate_metadata(ev: ChallengerEvaluation) -> dict:
    """real_evaluation's numbers: the challenger's (``success/<task>``) and the champion's on the
    same gate seeds (``champion/success/<task>``)."""
    return {
        **evaluation_metadata(ev.evaluation),
        **evaluation_metadata(ev.champion_evaluation, "champion/"),
    }


def success_chart(store, round_key: str, current: ChallengerEvaluation, promoted: bool) -> Path:
    """The success-over-rounds chart up to this round, as a PNG in the round's previews."""
    from pipeline.charts import plot_success_over_rounds, success_history

    points = success_history(store, round_key, current=current, promoted=promoted)
    return plot_success_over_rounds(
        points, store.round_dir(round_key) / "previews" / "success_over_rounds.png"
    )


def evaluation_metrics(ev: Evaluation, prefix: str) -> dict[str, float]:
    out = {f"{prefix}/success_rate": ev.success_rate, f"{prefix}/episodes": float(len(ev.episodes))}
    for task, r in ev.per_task.items():
        out[f"{prefix}/{task}/success_rate"] = r.success_rate
        out[f"{prefix}/{task}/ci95_low"], out[f"{prefix}/{task}/ci95_high"] = r.ci95
    return out


def common_metadata(run, started: float, sha256: str | None = None) -> dict:
    meta = {
        "mlflow_run": dg.MetadataValue.url(run.link),
        "wall_s": round(time.monotonic() - started, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if sha256:
        meta["checkpoint_sha256"] = sha256
    return meta


def model_metadata(art: ModelArtifact, preview_dir: Path) -> dict:
    meta = {f"metric/{k}": float(v) for k, v in art.metrics.items()}
    meta["checkpoint"] = dg.MetadataValue.path(str(art.path))
    for p in art.previews:
        meta["preview"] = video_md(Path(p), "imagined vs. real rollout", preview_dir)
        meta["preview_file"] = dg.MetadataValue.path(str(p))
    return meta


def trained_in_preview(world_model: ModelArtifact, preview_dir: Path) -> dict:
    if not world_model.previews:
        return {}
    p = Path(world_model.previews[0])
    return {
        "preview": video_md(p, "the world model it trained in", preview_dir),
        "preview_file": dg.MetadataValue.path(str(p)),
    }
