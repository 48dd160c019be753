"""Frame codecs: uint8 camera frames <-> the space the diffusion model works in.

``PixelCodec`` works on RGB scaled to [-1, 1]; ``VAECodec`` on the latents of a frozen diffusers
``AutoencoderKL`` loaded from a local directory (SD3's VAE for the large preset). Both resize the
incoming frames to ``config.image_size`` first, with the same function in training and rollout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from world_model.config import WorldModelConfig


def resize_frames(frames: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 at any resolution -> (N, 3, size, size) uint8 (antialiased bilinear)."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ValueError(
            f"frames must be (N, H, W, 3) uint8, got shape {tuple(x.shape)} dtype {x.dtype}"
        )
    x = x.permute(0, 3, 1, 2)  # (N, 3, H, W)
    if x.shape[-2:] == (size, size):
        return x.contiguous()
    y = F.interpolate(
        x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return y.round().clamp(0, 255).to(torch.uint8)


class Codec(nn.Module):
    """encode: (N, 3, S, S) uint8 -> (N, C, h, w) float; decode: the inverse, to uint8.

    ``to_cache`` / ``from_cache`` let training keep a compact per-frame representation: uint8
    pixels for the pixel codec, latents for the VAE (encoding once instead of every step).
    """

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to_cache(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode(frames)

    def from_cache(self, cached: torch.Tensor) -> torch.Tensor:
        return cached

    def clamp(self, z: torch.Tensor) -> torch.Tensor:
        """Project a sampled frame back onto the valid range of the space."""
        return z


class PixelCodec(Codec):
    def encode(self, frames):
        return frames.float() / 127.5 - 1.0

    def decode(self, z):
        return ((z.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    def to_cache(self, frames):
        return frames

    def from_cache(self, cached):
        return self.encode(cached)

    def clamp(self, z):
        return z.clamp(-1, 1)


class VAECodec(Codec):
    """A frozen ``AutoencoderKL``; latents are ``(mean - shift_factor) * scaling_factor`` (SD3)."""

    def __init__(self, config: WorldModelConfig, vae_path: str | Path) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        path = Path(vae_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"VAE directory {str(path)!r} has no config.json; expected a local diffusers "
                "AutoencoderKL folder (e.g. the vae/ folder of Stable Diffusion 3)"
            )
        self.vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
        self.vae.requires_grad_(False).eval()
        vc = self.vae.config
        downsample = 2 ** (len(vc.block_out_channels) - 1)
        for what, got, want in (
            ("latent_channels", vc.latent_channels, config.latent_channels),
            ("vae_downsample", downsample, config.vae_downsample),
        ):
            if got != want:
                raise ValueError(
                    f"VAE at {str(path)!r} has {what}={got}, but the world-model config expects {want}"
                )
        self.scaling_factor = float(vc.scaling_factor)
        self.shift_factor = float(vc.shift_factor or 0.0)

    def train(self, mode: bool = True) -> VAECodec:
        super().train(mode)
        self.vae.eval()  # frozen: never in training mode
        return self

    def to_cache(self, frames):
        return self.encode(frames).cpu()  # the dataset's cache stays in host memory

    @torch.no_grad()
    def encode(self, frames):
        x = frames.to(self.vae.device, self.vae.dtype) / 127.5 - 1.0
        mean = self.vae.encode(x).latent_dist.mode()
        return (mean.float() - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, z):
        x = self.vae.decode((z / self.scaling_factor + self.shift_factor).to(self.vae.dtype)).sample
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def make_codec(config: WorldModelConfig, vae_path: str | Path | None = None) -> Codec:
    if config.codec == "pixel":
        return PixelCodec()
    path = vae_path or config.vae_path
    if path is None:
        raise ValueError(
            f"the {config.name!r} preset uses codec='vae' and needs vae_path: a local diffusers "
            "AutoencoderKL directory, e.g. WorldModelConfig.from_preset('large', vae_path='/models/sd3/vae')"
        )
    return VAECodec(config, path)
