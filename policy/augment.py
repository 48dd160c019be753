"""Image augmentations for SFT and GRPO, on uint8 (B, H, W, 3) frames with a numpy Generator,
and the instruction paraphrases training may use.

``add_distractors`` pastes random coloured shapes into the scene: the World-Gymnast paper's
"distractor objects" augmentation for RL in the world model, and a robustness aid in SFT.
``paraphrase_instruction`` draws a task's instruction from its training paraphrases only
(``robot_bridge.spec.training_instructions``): the held-out ones are for evaluation on the
station.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gymnast_common.config import Config
from robot_bridge.spec import training_instructions


@dataclass
class AugmentConfig(Config):
    shift_pad: int = 2  # random shift (pad + crop, DrQ-style), in pixels of the given frames
    brightness: float = 0.15  # multiplicative, +- fraction
    contrast: float = 0.15  # around the per-image mean, +- fraction
    channel_gain: float = 0.05  # per-channel multiplicative, +- fraction (white-balance drift)
    distractor_prob: float = 0.0  # probability that a frame gets distractors pasted in

    def __post_init__(self) -> None:
        if self.shift_pad < 0:
            raise ValueError(f"shift_pad must be >= 0, got {self.shift_pad}")
        for name in ("brightness", "contrast", "channel_gain"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.distractor_prob <= 1:
            raise ValueError(f"distractor_prob must be in [0, 1], got {self.distractor_prob}")


def _check(images: np.ndarray) -> None:
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[-1] != 3
    ):
        raise ValueError(
            f"expected uint8 (B, H, W, 3) numpy frames, got {type(images).__name__} "
            f"{getattr(images, 'shape', None)} {getattr(images, 'dtype', None)}"
        )


def random_shift(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each frame by up to ``pad`` pixels (edge-replicated border)."""
    _check(images)
    if pad == 0:
        return images.copy()
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, b))
    return np.stack([padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def color_jitter(
    images: np.ndarray,
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    channel_gain: float,
) -> np.ndarray:
    _check(images)
    b = images.shape[0]
    x = images.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)  # (B, 1, 1, 1)
    c = rng.uniform(1 - contrast, 1 + contrast, size=(b, 1, 1, 1))
    g = rng.uniform(1 - brightness, 1 + brightness, size=(b, 1, 1, 1))
    ch = rng.uniform(1 - channel_gain, 1 + channel_gain, size=(b, 1, 1, 3))
    x = ((x - mean) * c + mean) * g * ch
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def add_distractors(
    images: np.ndarray,
    rng: np.random.Generator,
    max_shapes: int = 3,
    size_range: tuple[float, float] = (0.06, 0.16),
) -> np.ndarray:
    """Paste 1..max_shapes random coloured rectangles or discs into every frame (new array).

    Sizes are fractions of the frame side, so the same call works at 256 px or model resolution.
    """
    _check(images)
    if max_shapes < 1 or not 0 < size_range[0] <= size_range[1] < 1:
        raise ValueError(
            f"need max_shapes >= 1 and 0 < size_range <= 1, got {max_shapes}, {size_range}"
        )
    out = images.copy()
    b, h, w, _ = images.shape
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(b):
        for _ in range(int(rng.integers(1, max_shapes + 1))):
            ry, rx = (rng.uniform(*size_range, size=2) * np.array([h, w]) / 2).clip(min=1)
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            if rng.random() < 0.5:
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            out[i][mask] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return out


def augment_images(
    images: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Distractors (per frame, with probability), then shift, then colour jitter."""
    _check(images)
    out = images
    if config.distractor_prob > 0:
        hit = rng.random(images.shape[0]) < config.distractor_prob
        if hit.any():
            out = out.copy()
            out[hit] = add_distractors(out[hit], rng)
    out = random_shift(out, config.shift_pad, rng)
    if config.brightness or config.contrast or config.channel_gain:
        out = color_jitter(out, rng, config.brightness, config.contrast, config.channel_gain)
    return out


def paraphrase_instruction(task: str, rng: np.random.Generator) -> str:
    """An instruction for ``task`` to train on: its own or one of its training paraphrases, drawn
    uniformly; never a held-out paraphrase."""
    options = training_instructions(task)
    return options[int(rng.integers(len(options)))]
