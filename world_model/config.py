"""Configuration of the action-conditioned video world model, with named presets.

``tiny`` runs the whole loop on a CPU: a pixel-space diffusers ``UNet2DModel`` at 64x64 that sees
the context frames by channel concatenation and the action through its class embedding.
``large`` mirrors WorldGym: frozen SD3-style VAE latents (16 channels) and a spatial/temporal
factorized DiT (width 1024, 16 heads, 16 layers) with frame-level action conditioning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gymnast_common.config import Config, ConfigError
from robot_bridge.spec import ACTION_DIM, ACTION_HIGH, ACTION_LOW

BACKBONES = ("unet", "dit")
CODECS = ("pixel", "vae")
TARGETS = ("delta", "frame")
PREDICTION_TYPES = ("v_prediction", "sample")

# Until statistics are fitted on data, actions are normalised by the Bridge per-step bounds
# (centre and half-range), so an untrained model still sees inputs of order one.
_BRIDGE_MEAN = [float(x) for x in (ACTION_LOW + ACTION_HIGH) / 2]
_BRIDGE_STD = [float(x) for x in (ACTION_HIGH - ACTION_LOW) / 2]


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    # WorldGym (arXiv 2506.00613): SD3 VAE latents (256x256 -> 32x32x16), patch 2 -> 256 tokens per
    # frame, factorized DiT 1024 wide x 16 heads x 16 layers (~600M), context of up to 20 frames,
    # 10 DDIM steps, CFG 3.0 on actions with 10% dropout. `vae_path` must name a local directory.
    "large": {
        "image_size": 256,
        "context_frames": 19,
        "backbone": "dit",
        "codec": "vae",
        "latent_channels": 16,
        "beta_schedule": "scaled_linear",
        "num_inference_steps": 10,
        "target": "frame",
        "prediction_type": "v_prediction",
        "guidance_scale": 3.0,
        "context_noise_t_inference": 20,
    },
}


@dataclass
class WorldModelConfig(Config):
    PRESETS = PRESETS
    PRESET_FIELD = "name"

    name: str = "tiny"
    # Frames: square RGB at `image_size`; the model conditions on `context_frames` past frames.
    image_size: int = 64
    context_frames: int = 2
    # Also condition every step on the episode's first frame (real, clean), in a context slot of
    # its own: what does not move stays there to be copied, however far an autoregressive rollout
    # has drifted from it (the open-loop PSNR lead over copying the first frame fell to about
    # 0 dB by 30 steps without it).
    anchor_first_frame: bool = False
    action_dim: int = ACTION_DIM
    # Backbone: "unet" (diffusers UNet2DModel) or "dit" (spatial/temporal factorized DiT).
    backbone: str = "unet"
    unet_block_out_channels: tuple[int, ...] = (64, 96, 128)
    unet_down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    unet_up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")
    unet_layers_per_block: int = 1
    unet_attention_head_dim: int = 32
    unet_norm_num_groups: int = 16
    # Space-to-depth factor in front of the UNet (like a DiT's patch size): a 64x64 frame is
    # processed as 16x16x48 (x3 frames). On one CPU core this trains 3.4x and samples 4.8x faster
    # than factor 2 with (48, 96, 96) channels, and learned the moving-square probe as well.
    pixel_unshuffle: int = 4
    dit_width: int = 1024
    dit_heads: int = 16
    dit_layers: int = 16
    dit_patch_size: int = 2
    dit_mlp_ratio: float = 4.0
    # Frame space: "pixel" ([-1, 1] RGB) or "vae" (latents of a frozen diffusers AutoencoderKL).
    codec: str = "pixel"
    vae_path: str | None = None
    latent_channels: int = 3
    # Spatial factor of the VAE (SD3: 8); checked against the VAE's own config when it is loaded.
    vae_downsample: int = 8
    # Diffusion (zero-terminal-SNR betas, DDIM with trailing spacing for few steps).
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    # 2 DDIM steps, no guidance and a little context noise: on held-out real episodes of the
    # simulated station (a 3000-step model, 24 episodes, 2 sampling seeds) these lead repeating
    # the first frame by >= 3.4 dB at every step of a 15-frame rollout, against 2.2 dB for 4
    # steps with guidance 2.0 and context noise 20, and at a quarter of the backbone calls;
    # next-frame error with shuffled actions stays 7.8 dB worse than with the true ones, so the
    # model still follows the actions (docs/experiments.md, "sampling the world model")
    num_inference_steps: int = 2
    # "v_prediction" (WorldGym, large preset) or "sample" (x0). With the delta target and a few
    # hundred CPU steps, x0 learned far better on the moving-square probe (next-frame MSE 0.012
    # vs 0.047 for v-prediction after 400 steps, copy-last-frame baseline 0.030): an undertrained
    # v-model leaves residual sampling noise on the static scene, an x0-model predicts zero delta.
    prediction_type: str = "sample"
    # "delta": the diffusion target is next frame minus last context frame, so the static scene
    # is a zero target and does not drift over long autoregressive rollouts.
    target: str = "delta"
    # Context noise augmentation: training noises the context to a random timestep in
    # [0, context_noise_max_t] and tells the model the level; sampling uses a fixed small level.
    context_noise_max_t: int = 100
    context_noise_t_inference: int = 10
    # Own-prediction context (training only): with this probability a window's newest context
    # frame is replaced by the model's own sample of it from the window before (no gradient
    # through the sample), so training sees the kind of context an open-loop rollout feeds back
    # and learns to correct it, where noise augmentation only imitates that error. It costs
    # a sampling pass for those windows.
    own_context_prob: float = 0.0
    # Up to this many of a chosen window's newest context frames come from the model's own
    # rollout (depth drawn uniformly from 1 to the most its episode allows before the window),
    # so training also sees a context that is all the model's own, as every open-loop step past
    # the context's length does. Depth d costs d sampling passes for that window.
    own_context_steps: int = 1
    # Classifier-free guidance on actions: a learned null action replaces the action with
    # probability `action_dropout` in training; `guidance_scale` 1.0 disables guidance.
    action_dropout: float = 0.1
    guidance_scale: float = 1.0
    # Per-dimension action normalisation (raw Bridge units -> (a - mean) / std).
    action_mean: tuple[float, ...] = field(default_factory=lambda: tuple(_BRIDGE_MEAN))
    action_std: tuple[float, ...] = field(default_factory=lambda: tuple(_BRIDGE_STD))

    def __post_init__(self) -> None:
        for name in (
            "unet_block_out_channels",
            "unet_down_block_types",
            "unet_up_block_types",
            "action_mean",
            "action_std",
        ):
            setattr(self, name, tuple(getattr(self, name)))
        self.action_mean = tuple(float(x) for x in self.action_mean)
        self.action_std = tuple(float(x) for x in self.action_std)
        _check(self.backbone in BACKBONES, "backbone", f"one of {BACKBONES}", self.backbone)
        _check(self.codec in CODECS, "codec", f"one of {CODECS}", self.codec)
        _check(
            self.prediction_type in PREDICTION_TYPES,
            "prediction_type",
            f"one of {PREDICTION_TYPES}",
            self.prediction_type,
        )
        _check(self.target in TARGETS, "target", f"one of {TARGETS}", self.target)
        _check(self.image_size >= 8, "image_size", ">= 8", self.image_size)
        _check(self.context_frames >= 1, "context_frames", ">= 1", self.context_frames)
        _check(
            0.0 <= self.own_context_prob <= 1.0,
            "own_context_prob",
            "in [0, 1]",
            self.own_context_prob,
        )
        _check(
            1 <= self.own_context_steps <= self.context_frames,
            "own_context_steps",
            f"in [1, context_frames={self.context_frames}]",
            self.own_context_steps,
        )
        _check(self.action_dim >= 1, "action_dim", ">= 1", self.action_dim)
        for name in ("action_mean", "action_std"):
            n = len(getattr(self, name))
            _check(n == self.action_dim, f"len({name})", f"action_dim={self.action_dim}", n)
        _check(min(self.action_std) > 0, "action_std", "all > 0", self.action_std)
        _check(
            1 <= self.num_inference_steps <= self.num_train_timesteps,
            "num_inference_steps",
            f"in [1, num_train_timesteps={self.num_train_timesteps}]",
            self.num_inference_steps,
        )
        _check(
            0
            <= self.context_noise_t_inference
            <= self.context_noise_max_t
            < self.num_train_timesteps,
            "context_noise_t_inference <= context_noise_max_t",
            f"0 <= inference <= max < {self.num_train_timesteps}",
            (self.context_noise_t_inference, self.context_noise_max_t),
        )
        _check(0.0 <= self.action_dropout < 1.0, "action_dropout", "in [0, 1)", self.action_dropout)
        _check(self.guidance_scale >= 0.0, "guidance_scale", ">= 0", self.guidance_scale)
        if self.codec == "vae":
            _check(
                self.image_size % self.vae_downsample == 0,
                "image_size",
                f"a multiple of vae_downsample={self.vae_downsample}",
                self.image_size,
            )
        if self.codec == "pixel":
            _check(
                self.latent_channels == 3,
                "latent_channels",
                "3 for codec='pixel'",
                self.latent_channels,
            )
        if self.backbone == "unet":
            self._check_unet()
        else:
            self._check_dit()

    def _check_unet(self) -> None:
        n = len(self.unet_block_out_channels)
        for name in ("unet_down_block_types", "unet_up_block_types"):
            got = len(getattr(self, name))
            _check(got == n, f"len({name})", f"len(unet_block_out_channels)={n}", got)
        groups = self.unet_norm_num_groups
        bad = [c for c in self.unet_block_out_channels if c % groups]
        _check(
            not bad, "unet_block_out_channels", f"multiples of unet_norm_num_groups={groups}", bad
        )
        factor = self.pixel_unshuffle * 2 ** (n - 1)
        _check(
            self.latent_size % factor == 0,
            "frame size in model space",
            f"a multiple of pixel_unshuffle * 2**(levels-1) = {factor}",
            self.latent_size,
        )

    def _check_dit(self) -> None:
        _check(
            self.dit_width % self.dit_heads == 0,
            "dit_width",
            f"a multiple of dit_heads={self.dit_heads}",
            self.dit_width,
        )
        head_dim = self.dit_width // self.dit_heads
        _check(
            head_dim % 4 == 0,
            "dit head dim (width/heads)",
            "a multiple of 4 for 2-D RoPE",
            head_dim,
        )
        _check(
            self.latent_size % self.dit_patch_size == 0,
            "frame size in model space",
            f"a multiple of dit_patch_size={self.dit_patch_size}",
            self.latent_size,
        )

    @property
    def latent_size(self) -> int:
        """Side of a frame in model space (pixels: image_size; VAE: image_size / downsample)."""
        return self.image_size // self.vae_downsample if self.codec == "vae" else self.image_size

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WorldModelConfig:
        """Read a config.json: ours, or the diffusers one the model writes (its ``_class_name``,
        ``_diffusers_version`` and other ``_`` keys are diffusers' bookkeeping, skipped)."""
        data = json.loads(Path(path).read_text())
        try:
            return cls.from_dict({k: v for k, v in data.items() if not k.startswith("_")})
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @property
    def context_slots(self) -> int:
        """Frames the backbone sees besides the one it denoises: the past ``context_frames``, and
        the first frame first when anchored."""
        return self.context_frames + int(self.anchor_first_frame)

    def architecture(self) -> dict[str, Any]:
        """Fields that decide tensor shapes: two configs with equal architecture share weights."""
        keys = [
            "image_size", "context_frames", "anchor_first_frame", "action_dim", "backbone",
            "codec", "latent_channels", "vae_downsample", "pixel_unshuffle",
        ]  # fmt: skip
        if self.backbone == "unet":
            keys += [
                "unet_block_out_channels", "unet_down_block_types", "unet_up_block_types",
                "unet_layers_per_block", "unet_attention_head_dim", "unet_norm_num_groups",
            ]  # fmt: skip
        else:
            keys += ["dit_width", "dit_heads", "dit_layers", "dit_patch_size", "dit_mlp_ratio"]
        d = self.to_dict()
        return {k: d[k] for k in keys}


def _check(ok: bool, what: str, expected: str, received: Any) -> None:
    if not ok:
        raise ValueError(f"WorldModelConfig.{what}: expected {expected}, received {received!r}")
