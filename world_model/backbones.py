"""Denoising backbones: one small interface, a diffusers UNet and a factorized DiT behind it.

Every backbone maps a noisy next frame plus its conditioning to the v-prediction for that frame:

    forward(noisy (B, C, h, w), t (B,), context (B, Tc, C, h, w), context_t (B,),
            cond (B, E), context_cond (B, Tc, E)) -> (B, C, h, w)

``cond`` is the embedding of the action that leads to the new frame (or the learned null action),
``context_cond`` those of the actions that led to each context frame (null where unknown), and
``context_t`` the noise level the context frames were augmented with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import (
    TimestepEmbedding,
    Timesteps,
    apply_rotary_emb,
    get_1d_rotary_pos_embed,
    get_2d_rotary_pos_embed,
)
from torch import nn

from world_model.config import WorldModelConfig


class Backbone(nn.Module):
    cond_dim: int

    def forward(
        self,
        noisy: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        context_t: torch.Tensor,
        cond: torch.Tensor,
        context_cond: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError


class UNetBackbone(Backbone):
    """diffusers ``UNet2DModel``; context by channel concatenation, action via the class embedding.

    The class embedding is ``identity``: the action embedding plus the context-noise-level
    embedding is added to the timestep embedding and modulates every ResNet block (scale-shift).
    """

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        c, r = config.latent_channels, config.pixel_unshuffle
        self.r = r
        self.cond_dim = 4 * config.unet_block_out_channels[0]
        self.unet = UNet2DModel(
            sample_size=config.latent_size // r,
            in_channels=(config.context_slots + 1) * c * r * r,
            out_channels=c * r * r,
            down_block_types=config.unet_down_block_types,
            up_block_types=config.unet_up_block_types,
            block_out_channels=config.unet_block_out_channels,
            layers_per_block=config.unet_layers_per_block,
            attention_head_dim=config.unet_attention_head_dim,
            norm_num_groups=config.unet_norm_num_groups,
            resnet_time_scale_shift="scale_shift",
            class_embed_type="identity",
        )
        self.noise_level_proj = Timesteps(
            self.cond_dim, flip_sin_to_cos=True, downscale_freq_shift=0
        )
        self.noise_level_embed = TimestepEmbedding(self.cond_dim, self.cond_dim)

    def forward(self, noisy, t, context, context_t, cond, context_cond):
        b = noisy.shape[0]
        x = torch.cat([context.flatten(1, 2), noisy], dim=1)  # (B, (Tc+1)*C, h, w)
        x = F.pixel_unshuffle(x, self.r) if self.r > 1 else x  # (B, (Tc+1)*C*r*r, h/r, w/r)
        level = self.noise_level_embed(self.noise_level_proj(context_t).to(cond.dtype))
        out = self.unet(x, t.expand(b), class_labels=cond + level).sample
        return F.pixel_shuffle(out, self.r) if self.r > 1 else out  # (B, C, h, w)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], causal: bool
    ) -> torch.Tensor:
        b, s, d = x.shape
        qkv = (
            self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # (3, B, H, S, hd)
        q, k, v = qkv.unbind(0)
        q, k = apply_rotary_emb(q, rope), apply_rotary_emb(k, rope)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, S, hd)
        return self.out(o.transpose(1, 2).reshape(b, s, d))


class _DiTBlock(nn.Module):
    """adaLN-Zero transformer block; the modulation is computed outside and broadcast over S."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(width, mult=mlp_ratio, activation_fn="gelu-approximate")
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c, rope, causal):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, rope, causal)
        return x + gate2 * self.ff(self.norm2(x) * (1 + scale2) + shift2)


class FactorizedDiT(Backbone):
    """WorldGym-style DiT: per layer a spatial block (attention within a frame, 2-D RoPE) and a
    causal temporal block (attention over time per patch, 1-D RoPE), both adaLN-Zero, conditioned
    per frame on (diffusion timestep embedding + action embedding)."""

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        d, p, c = config.dit_width, config.dit_patch_size, config.latent_channels
        self.p, self.c, self.grid = p, c, config.latent_size // p
        self.cond_dim = d
        self.patch = nn.Conv2d(c, d, kernel_size=p, stride=p)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, d)
        self.spatial = nn.ModuleList(
            _DiTBlock(d, config.dit_heads, config.dit_mlp_ratio) for _ in range(config.dit_layers)
        )
        self.temporal = nn.ModuleList(
            _DiTBlock(d, config.dit_heads, config.dit_mlp_ratio) for _ in range(config.dit_layers)
        )
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.proj_out = nn.Linear(d, p * p * c)
        for layer in (self.ada_out, self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        head_dim = d // config.dit_heads
        g = self.grid
        cos_s, sin_s = get_2d_rotary_pos_embed(head_dim, ((0, 0), (g, g)), (g, g), output_type="pt")
        cos_t, sin_t = get_1d_rotary_pos_embed(head_dim, config.context_slots + 1, use_real=True)
        # RoPE tables are functions of the config: not saved with the weights.
        self.register_buffer("rope_s_cos", cos_s.float(), persistent=False)
        self.register_buffer("rope_s_sin", sin_s.float(), persistent=False)
        self.register_buffer("rope_t_cos", cos_t.float(), persistent=False)
        self.register_buffer("rope_t_sin", sin_t.float(), persistent=False)

    def forward(self, noisy, t, context, context_t, cond, context_cond):
        b, tc = context.shape[:2]
        frames = torch.cat([context, noisy[:, None]], dim=1)  # (B, T, C, h, w)
        n_t = tc + 1
        times = torch.cat([context_t[:, None].expand(b, tc), t.expand(b)[:, None]], dim=1)  # (B, T)
        c = self.time_embed(self.time_proj(times.flatten()).to(cond.dtype)).view(b, n_t, -1)
        c = c + torch.cat([context_cond, cond[:, None]], dim=1)  # (B, T, D)
        x = self.patch(frames.flatten(0, 1))  # (B*T, D, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B*T, N, D)
        n, d = x.shape[1], x.shape[2]
        rope_s = (self.rope_s_cos, self.rope_s_sin)
        rope_t = (self.rope_t_cos[:n_t], self.rope_t_sin[:n_t])
        c_spatial = c.reshape(b * n_t, 1, d)  # (B*T, 1, D)
        c_temporal = c[:, None].expand(b, n, n_t, d).reshape(b * n, n_t, d)  # (B*N, T, D)
        for spatial, temporal in zip(self.spatial, self.temporal, strict=True):
            x = spatial(x, c_spatial, rope_s, causal=False)
            x = x.view(b, n_t, n, d).transpose(1, 2).reshape(b * n, n_t, d)  # (B*N, T, D)
            x = temporal(x, c_temporal, rope_t, causal=True)
            x = x.view(b, n, n_t, d).transpose(1, 2).reshape(b * n_t, n, d)  # (B*T, N, D)
        x = x.view(b, n_t, n, d)[:, -1]  # (B, N, D): only the new frame is denoised
        shift, scale = self.ada_out(F.silu(c[:, -1:])).chunk(2, dim=-1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)  # (B, N, p*p*C)
        g, p = self.grid, self.p
        x = x.view(b, g, g, p, p, self.c).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
        return x.reshape(b, self.c, g * p, g * p)


BACKBONE_TYPES: dict[str, type[Backbone]] = {"unet": UNetBackbone, "dit": FactorizedDiT}


def make_backbone(config: WorldModelConfig) -> Backbone:
    try:
        cls = BACKBONE_TYPES[config.backbone]
    except KeyError:
        raise KeyError(
            f"unknown backbone {config.backbone!r}; valid: {', '.join(BACKBONE_TYPES)}"
        ) from None
    return cls(config)
