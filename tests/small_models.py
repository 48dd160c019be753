"""Models smaller than the ``tiny`` presets, shared by the tests of every package: a step takes
milliseconds on a shared 2-core CPU, and the code path is the tiny preset's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from world_model.config import WorldModelConfig

# VLAConfig overrides of the tiny preset: the learning tests fit in seconds on 2 cores.
SMALL_VLA = {
    "image_size": 32,
    "patch_size": 8,
    "text_hidden": 64,
    "text_heads": 2,
    "text_head_dim": 32,
    "text_intermediate": 256,
    "vision_hidden": 64,
    "vision_heads": 2,
    "vision_intermediate": 128,
}


def small_config(**overrides) -> WorldModelConfig:
    """The tiny preset's code path, shrunk so a test step takes milliseconds."""
    kw = dict(
        image_size=32,
        pixel_unshuffle=2,
        unet_block_out_channels=(16, 32, 32),
        unet_norm_num_groups=8,
        unet_attention_head_dim=16,
        num_inference_steps=2,
    )
    return WorldModelConfig.from_preset("tiny", **{**kw, **overrides})


def tiny_sd3_style_vae(path: Path) -> Path:
    """A 16-channel AutoencoderKL with SD3's scaling/shift, built locally (never downloaded)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    vae.save_pretrained(path)
    return path


@dataclass
class SyntheticEpisode:
    """The fields training reads of an episode (``robot_bridge.episodes.EpisodeLike``, plus the
    judge's label and an id), for tests that draw their own frames and actions."""

    frames: np.ndarray  # (T+1, H, W, 3) uint8
    actions: np.ndarray  # (T, 7) float32
    instruction: str = "open the drawer"
    success: bool | None = None
    episode_id: str = "synthetic"
