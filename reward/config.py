"""Typed configs for the success judges and their finetuning.

Presets are looked up by name: ``tiny`` builds a small PaliGemma-style model locally (no
downloads) that trains from scratch on a CPU in minutes; ``large`` loads a pretrained
PaliGemma / Qwen-VL-style checkpoint from a local directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gymnast_common.config import Config, ConfigError


class JudgeConfigError(ConfigError):
    """A judge config or checkpoint does not fit together (expected vs received in the message)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise JudgeConfigError(msg)


# The large preset reads its architecture from the checkpoint; 224 px is PaliGemma-3B's input.
VLM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "large": {"image_size": 224, "dtype": "bfloat16", "inference_batch_size": 8},
}


@dataclass
class VLMJudgeConfig(Config):
    """A VLM asked "Did the robot {instruction}? Answer yes or no." about the end of a rollout.

    The score is P("yes") / (P("yes") + P("no")) for the next token. The image is the final
    frame (``frames_per_image=1``, as AutoEval's PaliGemma judge does) or a square grid of the
    last ``frames_per_image`` frames taken every ``frame_stride`` frames, always ending at the
    final frame (real episodes stop at the first success frame, so the final frame must be seen).
    """

    PRESETS = VLM_PRESETS
    PRESET_FIELD = "preset"
    ERROR = JudgeConfigError

    preset: str = "tiny"
    checkpoint_path: str | None = None  # large: a local HF checkpoint directory
    image_size: int = 64
    frames_per_image: int = 1
    frame_stride: int = 3
    n_samples: int = 5
    threshold: float = 0.5
    prompt_template: str = "Did the robot {instruction}? Answer yes or no."
    yes_token: str = "yes"
    no_token: str = "no"
    # Test-time views for the vote: sample 0 is the clean image, sample j>0 a seeded small shift
    # plus brightness change (the same family of changes the judge is trained to ignore).
    tta_shift_px: int = 2
    tta_brightness: float = 0.1
    # "fast": our own PaliGemma prefix encoding (batched, used in training); "processor": the
    # checkpoint's processor and chat template (any image-text-to-text model); "auto": fast for
    # PaliGemma, processor otherwise.
    input_path: str = "auto"
    inference_batch_size: int = 64
    # a ``robot_bridge.devices`` setting: "auto" (GYMNAST_DEVICE, else CUDA when present, else CPU),
    # "cpu", "cuda" or "cuda:N"; resolved when the judge is built or loaded
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    # tiny architecture (ignored by large, which reads the checkpoint's config)
    patch_size: int = 8
    # Width 64 trains ~3.5x faster than 128 on a CPU and reaches the same held-out F1 on our
    # synthetic instruction-conditional task (600 steps); raise it for harder scenes.
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    intermediate_size: int = 128
    tokenizer_vocab_size: int = 512
    extra_instructions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.extra_instructions = tuple(self.extra_instructions)
        _check(
            self.preset in VLM_PRESETS,
            f"preset must be one of {sorted(VLM_PRESETS)}, got {self.preset!r}",
        )
        _check(
            self.preset != "large" or bool(self.checkpoint_path),
            "preset 'large' needs checkpoint_path (a local checkpoint directory), got None",
        )
        grid = math.isqrt(self.frames_per_image)
        _check(
            self.frames_per_image >= 1 and grid * grid == self.frames_per_image,
            f"frames_per_image must be a perfect square (1, 4, 9, ...), got {self.frames_per_image}",
        )
        _check(
            self.image_size % grid == 0,
            f"image_size must be divisible by the grid side {grid}, got {self.image_size}",
        )
        _check(self.frame_stride >= 1, f"frame_stride must be >= 1, got {self.frame_stride}")
        _check(self.n_samples >= 1, f"n_samples must be >= 1, got {self.n_samples}")
        _check(0.0 < self.threshold < 1.0, f"threshold must be in (0, 1), got {self.threshold}")
        _check(
            "{instruction}" in self.prompt_template,
            f"prompt_template must contain '{{instruction}}', got {self.prompt_template!r}",
        )
        _check(
            self.input_path in ("auto", "fast", "processor"),
            f"input_path must be 'auto', 'fast' or 'processor', got {self.input_path!r}",
        )
        _check(self.tta_shift_px >= 0, f"tta_shift_px must be >= 0, got {self.tta_shift_px}")
        _check(
            0.0 <= self.tta_brightness < 1.0,
            f"tta_brightness must be in [0, 1), got {self.tta_brightness}",
        )
        from robot_bridge.devices import DeviceError, check_device_setting

        try:
            check_device_setting(self.device)
        except DeviceError as e:
            raise JudgeConfigError(str(e)) from None
        _check(
            self.dtype in ("float32", "bfloat16", "float16"),
            f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}",
        )
        if self.preset == "tiny":
            _check(
                self.image_size % self.patch_size == 0,
                f"image_size must be a multiple of patch_size {self.patch_size}, got {self.image_size}",
            )
            for hidden, heads, name in (
                (self.vision_hidden_size, self.vision_heads, "vision"),
                (self.text_hidden_size, self.text_heads, "text"),
            ):
                _check(
                    hidden % heads == 0,
                    f"{name} hidden size {hidden} must be divisible by its heads {heads}",
                )

    @property
    def grid(self) -> int:
        return math.isqrt(self.frames_per_image)


@dataclass
class OpenAIJudgeConfig(Config):
    """An OpenAI-compatible chat endpoint judging every ``frame_stride``-th frame (World-Gymnast)."""

    ERROR = JudgeConfigError

    model: str = "gpt-4o"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"  # None: endpoint without auth (local vLLM)
    image_size: int = 256
    frame_stride: int = 3
    max_frames: int = 20
    n_samples: int = 5
    threshold: float = 0.5
    temperature: float = 1.0
    max_tokens: int = 400
    timeout_s: float = 60.0
    max_retries: int = 2
    max_concurrency: int = 8

    def __post_init__(self) -> None:
        _check(bool(self.model), "model must be a non-empty model name")
        _check(
            self.base_url.startswith(("http://", "https://")),
            f"base_url must start with http:// or https://, got {self.base_url!r}",
        )
        _check(self.image_size >= 16, f"image_size must be >= 16, got {self.image_size}")
        _check(self.frame_stride >= 1, f"frame_stride must be >= 1, got {self.frame_stride}")
        _check(self.max_frames >= 1, f"max_frames must be >= 1, got {self.max_frames}")
        _check(self.n_samples >= 1, f"n_samples must be >= 1, got {self.n_samples}")
        _check(0.0 < self.threshold < 1.0, f"threshold must be in (0, 1), got {self.threshold}")
        _check(self.timeout_s > 0, f"timeout_s must be > 0, got {self.timeout_s}")
        _check(self.max_retries >= 0, f"max_retries must be >= 0, got {self.max_retries}")
        _check(
            self.max_concurrency >= 1, f"max_concurrency must be >= 1, got {self.max_concurrency}"
        )


@dataclass
class AugmentConfig(Config):
    """Training-time image changes that mimic world-model artefacts and low-res rollouts."""

    ERROR = JudgeConfigError

    shift_px: int = 4
    blur_prob: float = 0.5
    blur_sigma_max: float = 1.5
    lowres_prob: float = 0.3
    lowres_min_frac: float = 0.35  # downsample to at least this fraction of the side, then back up
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    noise_std_max: float = 0.04
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("blur_prob", "lowres_prob"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"{name} must be in [0, 1], got {v}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"{name} must be in [0, 1), got {v}")
        _check(
            0.0 < self.lowres_min_frac <= 1.0,
            f"lowres_min_frac must be in (0, 1], got {self.lowres_min_frac}",
        )
        _check(self.shift_px >= 0, f"shift_px must be >= 0, got {self.shift_px}")
        _check(self.blur_sigma_max >= 0, f"blur_sigma_max must be >= 0, got {self.blur_sigma_max}")
        _check(self.noise_std_max >= 0, f"noise_std_max must be >= 0, got {self.noise_std_max}")


JUDGE_TRAIN_PRESETS: dict[str, dict[str, Any]] = {"tiny": {}}


THRESHOLD_RULES = ("balanced_accuracy", "f1")


@dataclass
class JudgeTrainConfig(Config):
    """Finetuning hyper-parameters; saved with the metrics of every run."""

    PRESETS = JUDGE_TRAIN_PRESETS
    ERROR = JudgeConfigError

    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    # Frames from the first part of every labelled episode are negatives too: the tasks start
    # unsolved, so they add real "not yet" examples from the same scenes (hard-negative mining).
    early_negatives: bool = True
    early_frac: float = 0.2
    early_per_episode: int = 2
    early_batch_frac: float = 0.25  # share of the negative half of a batch drawn from them
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # ``robot_bridge.devices`` settings: None keeps a given judge where it is (a config builds it
    # on its own ``device``) and "auto" precision; "bf16" autocasts the forward pass on CUDA
    # (fp32 weights, optimizer and loss)
    device: str | None = None
    precision: str | None = None
    # How the threshold is cut on the validation episodes (``THRESHOLD_RULES``). Balanced accuracy
    # weighs the two classes equally; F1 counts only the positive class, so on success-heavy data
    # it rewards calling everything a success, and GRPO climbs exactly those false successes.
    threshold_rule: str = "balanced_accuracy"

    def __post_init__(self) -> None:
        _check(
            self.threshold_rule in THRESHOLD_RULES,
            f"threshold_rule must be one of {', '.join(THRESHOLD_RULES)}, got {self.threshold_rule!r}",
        )
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(
            self.batch_size >= 2 and self.batch_size % 2 == 0,
            f"batch_size must be an even number >= 2 (half positives, half negatives), got {self.batch_size}",
        )
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(
            0.0 <= self.warmup_frac < 1.0, f"warmup_frac must be in [0, 1), got {self.warmup_frac}"
        )
        _check(
            0.0 < self.early_frac <= 0.5, f"early_frac must be in (0, 0.5], got {self.early_frac}"
        )
        _check(
            0.0 <= self.early_batch_frac < 1.0,
            f"early_batch_frac must be in [0, 1), got {self.early_batch_frac}",
        )
        _check(
            self.early_per_episode >= 1,
            f"early_per_episode must be >= 1, got {self.early_per_episode}",
        )
        from robot_bridge.devices import DeviceError, check_device_setting, check_precision_setting

        try:
            check_device_setting(self.device, "JudgeTrainConfig.device")
            check_precision_setting(self.precision, "JudgeTrainConfig.precision")
        except DeviceError as e:
            raise JudgeConfigError(str(e)) from None
