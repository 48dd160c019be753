"""The success-judge interface, majority voting, frame selection and the backend registry.

A judge scores videos (real or imagined rollouts) against their instructions. ``judge()`` asks
for ``n_samples`` independent scores per video, thresholds each into a vote and returns the
strict-majority reward, as World-Gymnast does with GPT-4o (5 samples, majority vote).
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

JUDGE_CONFIG_NAME = "judge_config.json"


class JudgeError(RuntimeError):
    """A judge could not score a video (timeout, endpoint error, unparseable answer)."""


class UnknownJudgeError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class JudgeResult:
    rewards: np.ndarray  # (B,) float32 in {0, 1}: strict majority of the votes
    probabilities: np.ndarray  # (B,) float32: mean success score over the samples
    votes: np.ndarray  # (B, n_samples) bool: score of each sample >= threshold


def majority_vote(votes: np.ndarray) -> np.ndarray:
    """(B, n) bool -> (B,) float32 {0, 1}. A tie is not a success (use an odd n)."""
    v = np.asarray(votes, dtype=bool)
    if v.ndim != 2 or v.shape[1] < 1:
        raise ValueError(f"votes must have shape (B, n_samples >= 1), got {v.shape}")
    return (2 * v.sum(axis=1) > v.shape[1]).astype(np.float32)


def select_frame_indices(
    num_frames: int, frame_stride: int, max_frames: int | None = None
) -> list[int]:
    """Every ``frame_stride``-th frame counted back from the last one, in time order.

    Anchored at the final frame because a real episode ends at its first success frame. With
    ``max_frames``, keep the last ``max_frames`` of them, repeating frame 0's pick when the video
    is too short, so the count is always ``max_frames``.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    idx = list(range(num_frames - 1, -1, -frame_stride))[::-1]
    if max_frames is not None:
        idx = idx[-max_frames:]
        idx = [idx[0]] * (max_frames - len(idx)) + idx
    return idx


def check_batch(videos: list[np.ndarray], instructions: list[str]) -> None:
    """Raise ValueError naming the offending item unless videos are (T, H, W, 3) uint8."""
    if len(videos) != len(instructions):
        raise ValueError(
            f"got {len(videos)} videos but {len(instructions)} instructions; need one each"
        )
    if len(videos) == 0:
        raise ValueError("got an empty batch; need at least one video")
    for i, (v, text) in enumerate(zip(videos, instructions, strict=True)):
        if not isinstance(v, np.ndarray) or v.dtype != np.uint8:
            raise ValueError(
                f"video {i} must be a uint8 numpy array, got {type(v).__name__} "
                f"{getattr(v, 'dtype', '')}"
            )
        if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
            raise ValueError(f"video {i} must have shape (T>=1, H, W, 3), got {v.shape}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"instruction {i} must be a non-empty string, got {text!r}")


class SuccessJudge(ABC):
    """Scores rollouts for success. Implementations provide ``sample_scores``."""

    backend: str = ""
    config: Any

    @abstractmethod
    def sample_scores(
        self,
        videos: list[np.ndarray],
        instructions: list[str],
        n_samples: int,
        frame_stride: int,
    ) -> np.ndarray:
        """(B, n_samples) float in [0, 1]: one success score per independent sample."""

    def success_probability(self, videos: list[np.ndarray], instructions: list[str]) -> np.ndarray:
        """(B,) float in [0, 1]: the judge's success probability for each video."""
        scores = self.sample_scores(
            videos, instructions, self.config.n_samples, self.config.frame_stride
        )
        return scores.mean(axis=1).astype(np.float32)

    def judge(
        self,
        videos: list[np.ndarray],
        instructions: list[str],
        n_samples: int | None = None,
        threshold: float | None = None,
        frame_stride: int | None = None,
    ) -> JudgeResult:
        """Majority vote over ``n_samples`` scores; ``None`` arguments take the config's values
        (defaults 5 samples, threshold 0.5 or the calibrated one, every 3rd frame)."""
        n = self.config.n_samples if n_samples is None else n_samples
        thr = self.config.threshold if threshold is None else threshold
        stride = self.config.frame_stride if frame_stride is None else frame_stride
        if n < 1:
            raise ValueError(f"n_samples must be >= 1, got {n}")
        if not 0.0 < thr < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {thr}")
        scores = self.sample_scores(videos, instructions, n, stride)  # (B, n)
        if scores.shape != (len(videos), n):
            raise JudgeError(
                f"backend returned scores of shape {scores.shape}, expected {(len(videos), n)}"
            )
        if not np.isfinite(scores).all():  # NaN >= thr is False: it would pass as a silent 0
            bad = int((~np.isfinite(scores)).any(axis=1).sum())
            raise JudgeError(
                f"backend returned non-finite scores for {bad} of {len(videos)} videos"
            )
        votes = scores >= thr
        return JudgeResult(
            rewards=majority_vote(votes),
            probabilities=scores.mean(axis=1).astype(np.float32),
            votes=votes,
        )

    def to(self, device: Any) -> SuccessJudge:
        """Move the judge's weights to ``device``; a judge without local weights stays put."""
        return self

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the judge's config (backends with weights add them)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        payload = {"backend": self.backend, "config": self.config.to_dict()}
        (path / JUDGE_CONFIG_NAME).write_text(json.dumps(payload, indent=2))
        return path


# Import paths keep heavy dependencies (torch, openai) out until a backend is asked for.
JUDGES: dict[str, str] = {
    "vlm": "reward.vlm:VLMJudge",
    "openai": "reward.openai_judge:OpenAIJudge",
}


def get_judge_class(name: str) -> type[SuccessJudge]:
    """Look a backend up by name; an unknown name lists the valid ones."""
    if name not in JUDGES:
        raise UnknownJudgeError(
            f"unknown judge backend {name!r}; valid backends: {', '.join(sorted(JUDGES))}"
        )
    module, attr = JUDGES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def make_judge(name: str, config: Any = None, **kwargs: Any) -> SuccessJudge:
    """Build a judge by backend name from its config (default config when None)."""
    return get_judge_class(name).from_config(config, **kwargs)  # type: ignore[attr-defined]


def load_judge(path: str | Path, device: Any = None) -> SuccessJudge:
    """Load any saved judge; the backend is read from ``judge_config.json``.

    ``device``: where a judge with local weights runs (a ``robot_bridge.devices`` setting); None
    keeps the saved config's setting."""
    cfg_path = Path(path) / JUDGE_CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no {JUDGE_CONFIG_NAME} in {path}; not a saved judge directory")
    backend = json.loads(cfg_path.read_text()).get("backend")
    cls = get_judge_class(backend)
    if device is not None and getattr(cls, "has_weights", False):
        return cls.from_pretrained(path, device=str(device))  # type: ignore[attr-defined]
    return cls.from_pretrained(path)  # type: ignore[attr-defined]
