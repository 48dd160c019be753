"""Held-out evaluation of the world model and side-by-side rollout videos."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from world_model.codec import resize_frames
from world_model.data import EmptyDatasetError, EpisodeLike, WindowDataset
from world_model.model import ActionConditionedWorldModel


def _mse_psnr(
    pred_u8: torch.Tensor, real_u8: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE on [0, 1] pixels averaged over ``dims``, and PSNR in dB from it."""
    mse = ((pred_u8.float() - real_u8.float()) / 255.0).pow(2).mean(dim=dims)
    return mse, 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


@torch.no_grad()
def next_frame_error(
    model: ActionConditionedWorldModel,
    episodes: Sequence[EpisodeLike],
    max_windows: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    shuffle_actions: bool = False,
) -> dict[str, float]:
    """Teacher-forced one-step error on held-out windows, in pixel space at the model resolution.

    Also reports the error of copying the last context frame (the "nothing moves" baseline) and,
    with ``shuffle_actions``, of predicting with actions permuted across windows: a model that
    uses its action input is better with the true actions.
    """
    data = WindowDataset.for_model(episodes, model)
    g = torch.Generator(device=model.device).manual_seed(seed)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:max_windows]
    perm = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed + 1))
    out: dict[str, list[torch.Tensor]] = {"mse": [], "copy_mse": [], "shuffled_mse": []}
    for chunk, chunk_perm in zip(idx.split(batch_size), perm.split(batch_size), strict=True):
        b = {k: v.to(model.device) for k, v in data.batch(chunk).items()}
        real = model.codec.decode(b["target"])
        pred = model.codec.decode(
            model.sample_next(
                b["context"], b["context_actions"], b["context_known"], b["action"], g
            )
        )
        out["mse"].append(_mse_psnr(pred, real, (1, 2, 3))[0])
        out["copy_mse"].append(
            _mse_psnr(model.codec.decode(b["context"][:, -1]), real, (1, 2, 3))[0]
        )
        if shuffle_actions:
            other = data.actions[idx[chunk_perm]].to(model.device)
            pred_s = model.codec.decode(
                model.sample_next(b["context"], b["context_actions"], b["context_known"], other, g)
            )
            out["shuffled_mse"].append(_mse_psnr(pred_s, real, (1, 2, 3))[0])
    result = {}
    for name, vals in out.items():
        if vals:
            mse = torch.cat(vals).mean()
            result[name] = float(mse)
            result[name.replace("mse", "psnr")] = float(
                10 * torch.log10(1.0 / mse.clamp(min=1e-10))
            )
    result["windows"] = len(idx)
    return result


@torch.no_grad()
def rollout_error(
    model: ActionConditionedWorldModel,
    episodes: Sequence[EpisodeLike],
    horizon: int = 40,
    max_episodes: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Open-loop error growth: roll out the real action sequence from the real first frame and
    compare each imagined frame with the real one. Episodes at least ``horizon`` actions long
    come first (a short success would otherwise cut every rollout to its length); the horizon is
    cut to the shortest episode used only when too few are that long.

    Returns per-step ``mse`` / ``psnr`` lists (index k = k+1 steps after the initial frame), plus
    ``imagined`` and ``real`` uint8 arrays (E, H', S, S, 3) for videos.
    """
    usable = [e for e in episodes if len(e.actions) >= 1]
    long = [e for e in usable if len(e.actions) >= horizon]
    eps = (long + [e for e in usable if len(e.actions) < horizon])[:max_episodes]
    if not eps:
        raise EmptyDatasetError("rollout_error needs at least one episode with an action")
    h = min(horizon, *(len(e.actions) for e in eps))
    init = np.stack([np.asarray(e.frames[0]) for e in eps])  # (E, H, W, 3)
    actions = torch.from_numpy(
        np.stack([np.asarray(e.actions[:h], dtype=np.float32) for e in eps])
    )  # (E, h, A)
    g = torch.Generator(device=model.device).manual_seed(seed)
    imagined = model.rollout(init, actions, generator=g).cpu()  # (E, h, S, S, 3)
    s = model.config.image_size
    real = torch.stack(
        [resize_frames(np.asarray(e.frames[1 : h + 1]), s).permute(0, 2, 3, 1) for e in eps]
    )
    mse, psnr = _mse_psnr(imagined, real, (0, 2, 3, 4))
    # baseline: the scene never changes (the real first frame repeated), which a world model
    # must beat to be worth training in
    first = torch.stack(
        [resize_frames(np.asarray(e.frames[:1]), s).permute(0, 2, 3, 1) for e in eps]
    )
    copy_mse, copy_psnr = _mse_psnr(first.expand_as(real), real, (0, 2, 3, 4))
    return {
        "horizon": h,
        "episodes": len(eps),
        "mse": mse.tolist(),
        "psnr": psnr.tolist(),
        "copy_first_mse": copy_mse.tolist(),
        "copy_first_psnr": copy_psnr.tolist(),
        "imagined": imagined.numpy(),
        "real": real.numpy(),
    }


def evaluate_world_model(
    model: ActionConditionedWorldModel,
    episodes: Sequence[EpisodeLike],
    horizon: int = 40,
    max_windows: int = 256,
    max_episodes: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Scalar metrics for tracking: teacher-forced next-frame error and rollout error growth."""
    nf = next_frame_error(model, episodes, max_windows=max_windows, seed=seed, shuffle_actions=True)
    ro = rollout_error(model, episodes, horizon=horizon, max_episodes=max_episodes, seed=seed)
    return {
        **{f"next_frame_{k}": v for k, v in nf.items()},
        "rollout_horizon": ro["horizon"],
        "rollout_mse_per_step": ro["mse"],
        "rollout_psnr_per_step": ro["psnr"],
        "rollout_final_mse": ro["mse"][-1],
        "rollout_final_copy_first_mse": ro["copy_first_mse"][-1],
        "rollout_copy_first_psnr_per_step": ro["copy_first_psnr"],
        # the worst step's lead over repeating the first frame (dB); > 0 at every step means
        # the imagined frames are closer to the real ones than a frozen scene is
        "rollout_psnr_over_copy_first_min_db": min(
            p - c for p, c in zip(ro["psnr"], ro["copy_first_psnr"], strict=True)
        ),
    }


def write_side_by_side_video(
    real: np.ndarray,
    imagined: np.ndarray,
    path: str | Path,
    fps: float = 5.0,
    scale: int = 4,
) -> Path:
    """Write real | imagined frames side by side: (T, H, W, 3) uint8 each, to .mp4 (H.264 via
    PyAV) or .gif (Pillow), upscaled ``scale``x with nearest neighbour so 64 px frames are visible."""
    real, imagined = np.asarray(real), np.asarray(imagined)
    if (
        real.shape != imagined.shape
        or real.ndim != 4
        or real.shape[-1] != 3
        or real.dtype != np.uint8
    ):
        raise ValueError(
            f"real and imagined must both be (T, H, W, 3) uint8 of one shape, got {real.shape} {real.dtype} "
            f"and {imagined.shape} {imagined.dtype}"
        )
    gap = np.full((real.shape[0], real.shape[1], 2, 3), 255, np.uint8)
    frames = np.concatenate([real, gap, imagined], axis=2)  # (T, H, 2W+2, 3)
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        from PIL import Image

        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    elif path.suffix == ".mp4":
        _write_mp4(frames, path, fps)
    else:
        raise ValueError(f"video path must end in .mp4 or .gif, got {str(path)!r}")
    return path


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    from fractions import Fraction

    import av

    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2  # yuv420p needs even sides
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for f in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:h, :w]), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
