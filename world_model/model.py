"""The action-conditioned video world model and its batched closed-loop rollout API.

One new frame per action, autoregressively: the backbone denoises the next frame given the last
``context_frames`` frames and the action, with v-prediction, a few DDIM steps, context noise
augmentation and classifier-free guidance on the action (learned null action).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from safetensors.torch import load_file, save_file
from torch import nn

from world_model.backbones import make_backbone
from world_model.codec import make_codec, resize_frames
from world_model.config import WorldModelConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VAE_DIRNAME = "vae"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: different architecture, or missing/extra tensors."""


@dataclass
class WorldState:
    """The imagined world after some steps: a batch of context windows in model space."""

    context: torch.Tensor  # (B, Tc, C, h, w) newest frame last
    context_actions: torch.Tensor  # (B, Tc, A) raw action that led to each context frame
    context_known: torch.Tensor  # (B, Tc) bool: False where no action led to the frame
    step: int = 0

    @property
    def batch_size(self) -> int:
        return self.context.shape[0]


class ActionConditionedWorldModel(nn.Module):
    def __init__(self, config: WorldModelConfig, vae_path: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.codec = make_codec(config, vae_path)
        self.backbone = make_backbone(config)
        e = self.backbone.cond_dim
        # WorldGym uses Linear(action_dim -> width); one hidden layer lets the gripper's on/off and
        # the small deltas map to separable embeddings.
        self.action_embed = nn.Sequential(
            nn.Linear(config.action_dim, e), nn.SiLU(), nn.Linear(e, e)
        )
        self.null_action = nn.Parameter(torch.randn(e) * 0.02)
        sched = dict(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            rescale_betas_zero_snr=True,  # the last step is pure noise, as sampling starts there
            timestep_spacing="trailing",
            clip_sample=False,
        )
        self.train_scheduler = DDPMScheduler(**sched)
        self.sample_scheduler = DDIMScheduler(**sched, set_alpha_to_one=True)

    # ---------------------------------------------------------------- conditioning

    @property
    def device(self) -> torch.device:
        return self.null_action.device

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.config.action_mean, device=actions.device)
        std = torch.tensor(self.config.action_std, device=actions.device)
        return (actions.float() - mean) / std

    def embed_actions(self, actions: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """(..., A) raw actions, (...) bool -> (..., E); the null action where ``known`` is False."""
        emb = self.action_embed(self.normalize_actions(actions))
        return torch.where(known[..., None], emb, self.null_action.to(emb.dtype))

    def _noise_context(self, context, level: torch.Tensor, generator) -> torch.Tensor:
        if not bool((level > 0).any()):
            return context
        eps = torch.randn(
            context.shape, generator=generator, device=context.device, dtype=context.dtype
        )
        b, tc = context.shape[:2]
        noisy = self.train_scheduler.add_noise(
            context.flatten(0, 1), eps.flatten(0, 1), level.repeat_interleave(tc)
        )  # (B*Tc, C, h, w)
        return noisy.view_as(context)

    # ---------------------------------------------------------------- training

    def training_loss(
        self,
        context: torch.Tensor,
        context_actions: torch.Tensor,
        context_known: torch.Tensor,
        action: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Diffusion MSE (v or x0 target, per config) for one batch of windows, all in model space.

        context (B, Tc, C, h, w), context_actions (B, Tc, A), context_known (B, Tc),
        action (B, A) raw, target (B, C, h, w).
        """
        cfg, dev, b = self.config, context.device, context.shape[0]
        keep = torch.rand(b, generator=generator, device=dev) >= cfg.action_dropout
        cond = self.embed_actions(action, keep)
        context_cond = self.embed_actions(context_actions, context_known)
        level = torch.randint(0, cfg.context_noise_max_t + 1, (b,), generator=generator, device=dev)
        noisy_context = self._noise_context(context, level, generator)
        # The delta is taken from the *augmented* last frame, so the model learns to remove
        # context noise as well as to move things: at sampling time this cleans up the error
        # an autoregressive rollout feeds back into its own context.
        x0 = target - noisy_context[:, -1] if cfg.target == "delta" else target
        eps = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        t = torch.randint(0, cfg.num_train_timesteps, (b,), generator=generator, device=dev)
        noisy = self.train_scheduler.add_noise(x0, eps, t)
        if cfg.prediction_type == "v_prediction":
            goal = self.train_scheduler.get_velocity(x0, eps, t)
        else:
            goal = x0
        pred = self.backbone(noisy, t, noisy_context, level, cond, context_cond)
        return F.mse_loss(pred.float(), goal.float())

    # ---------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample_next(
        self,
        context: torch.Tensor,
        context_actions: torch.Tensor,
        context_known: torch.Tensor,
        action: torch.Tensor,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """One new frame in model space (B, C, h, w) given the context window and the action."""
        cfg, dev, b = self.config, context.device, context.shape[0]
        scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
        cond = self.embed_actions(action, torch.ones(b, dtype=torch.bool, device=dev))
        context_cond = self.embed_actions(context_actions, context_known)
        level = torch.full((b,), cfg.context_noise_t_inference, device=dev, dtype=torch.long)
        noisy_context = self._noise_context(context, level, generator)
        base = noisy_context[:, -1]  # what the delta is relative to (see training_loss)
        guided = scale != 1.0
        if guided:  # unconditional and conditional branches in one batch: (2B, ...)
            cond = torch.cat([self.null_action.expand(b, -1).to(cond.dtype), cond])
            noisy_context, context_cond, level = (
                torch.cat([x, x]) for x in (noisy_context, context_cond, level)
            )
        sched = self.sample_scheduler
        sched.set_timesteps(cfg.num_inference_steps, device=dev)
        shape = (b, *context.shape[2:])
        x = torch.randn(shape, generator=generator, device=dev, dtype=context.dtype)
        for t in sched.timesteps:
            x_in = torch.cat([x, x]) if guided else x
            v = self.backbone(x_in, t.view(1).to(dev), noisy_context, level, cond, context_cond)
            if guided:
                v_uncond, v_cond = v.chunk(2)
                v = v_uncond + scale * (v_cond - v_uncond)
            x = sched.step(v, t, x).prev_sample
        if cfg.target == "delta":
            x = x + base
        return self.codec.clamp(x)

    # ---------------------------------------------------------------- rollout API (GRPO)

    @torch.no_grad()
    def start(self, init_frames: np.ndarray | torch.Tensor) -> WorldState:
        """(B, H, W, 3) uint8 real frames at any resolution -> a state whose context repeats them."""
        frames = resize_frames(init_frames, self.config.image_size).to(self.device)  # (B, 3, S, S)
        z = self.codec.encode(frames)  # (B, C, h, w)
        b, tc = z.shape[0], self.config.context_frames
        return WorldState(
            context=z[:, None].expand(b, tc, *z.shape[1:]).contiguous(),  # (B, Tc, C, h, w)
            context_actions=torch.zeros(b, tc, self.config.action_dim, device=self.device),
            context_known=torch.zeros(b, tc, dtype=torch.bool, device=self.device),
        )

    @torch.no_grad()
    def imagine(
        self,
        state: WorldState,
        actions: torch.Tensor | np.ndarray,
        generator: torch.Generator | None = None,
    ) -> tuple[WorldState, torch.Tensor]:
        """Roll K actions forward: (B, K, A) raw Bridge actions -> (new state, (B, K, S, S, 3) uint8)."""
        actions = self._check_actions(actions, state.batch_size)
        ctx, ctx_actions, ctx_known = state.context, state.context_actions, state.context_known
        frames = []
        for k in range(actions.shape[1]):
            z = self.sample_next(ctx, ctx_actions, ctx_known, actions[:, k], generator)
            frames.append(self.codec.decode(z).permute(0, 2, 3, 1))  # (B, S, S, 3)
            ctx = torch.cat([ctx[:, 1:], z[:, None]], dim=1)
            ctx_actions = torch.cat([ctx_actions[:, 1:], actions[:, k : k + 1]], dim=1)
            ctx_known = torch.cat([ctx_known[:, 1:], torch.ones_like(ctx_known[:, :1])], dim=1)
        new_state = WorldState(ctx, ctx_actions, ctx_known, state.step + actions.shape[1])
        return new_state, torch.stack(frames, dim=1)  # (B, K, S, S, 3)

    def rollout(
        self,
        init_frames: np.ndarray | torch.Tensor,
        actions: torch.Tensor | np.ndarray,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Open-loop convenience: (B, H, W, 3) uint8 and (B, T, A) -> (B, T, S, S, 3) uint8."""
        _, frames = self.imagine(self.start(init_frames), actions, generator)
        return frames

    def _check_actions(self, actions, batch_size: int) -> torch.Tensor:
        a = torch.as_tensor(actions, device=self.device)
        if a.ndim != 3 or a.shape[0] != batch_size or a.shape[2] != self.config.action_dim:
            raise ValueError(
                f"actions must be (B={batch_size}, K, {self.config.action_dim}), got {tuple(a.shape)}"
            )
        if not a.is_floating_point() or not bool(torch.isfinite(a).all()):
            raise ValueError(
                f"actions must be finite floats, got dtype {a.dtype} with non-finite values or ints"
            )
        return a.float()

    # ---------------------------------------------------------------- checkpoints

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen VAE, which is saved as its own diffusers folder."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("codec.")}

    def save_pretrained(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.config.save(d / CONFIG_NAME)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        save_file(tensors, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        if self.config.codec == "vae" and not (d / VAE_DIRNAME / CONFIG_NAME).is_file():
            self.codec.vae.save_pretrained(d / VAE_DIRNAME)  # self-contained checkpoint
        return d

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device | None = None
    ) -> ActionConditionedWorldModel:
        """Load a checkpoint onto ``device`` (``robot_bridge.devices`` setting; None: "auto")."""
        from robot_bridge.devices import resolve_device

        dev = resolve_device(device)
        d = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{str(d)!r} is not a world-model checkpoint: no {CONFIG_NAME}")
        config = WorldModelConfig.load(d / CONFIG_NAME)
        vae_path = d / VAE_DIRNAME if (d / VAE_DIRNAME / CONFIG_NAME).is_file() else None
        model = cls(config, vae_path=vae_path).to(dev)
        model.load_weights(d)
        return model

    def load_weights(self, directory: str | Path) -> None:
        """Load a checkpoint's weights into this model (warm start), after checking they fit."""
        d = Path(directory)
        theirs = WorldModelConfig.load(d / CONFIG_NAME).architecture()
        ours = self.config.architecture()
        diff = {
            k: (theirs.get(k), ours.get(k))
            for k in ours.keys() | theirs.keys()
            if theirs.get(k) != ours.get(k)
        }
        if diff:
            lines = ", ".join(
                f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in sorted(diff.items())
            )
            raise CheckpointMismatchError(
                f"checkpoint {str(d)!r} has a different architecture: {lines}"
            )
        loaded = load_file(str(d / WEIGHTS_NAME), device=str(self.device))
        self._check_tensors(loaded, str(d))
        self.load_state_dict(loaded, strict=False)

    def _check_tensors(self, loaded: dict[str, torch.Tensor], where: str) -> None:
        expected = self.trainable_state_dict()
        missing = sorted(expected.keys() - loaded.keys())
        unexpected = sorted(loaded.keys() - expected.keys())
        shapes = sorted(
            f"{k} {tuple(loaded[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items()
            if k in loaded and loaded[k].shape != v.shape
        )
        problems = [
            f"{name} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for name, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", shapes),
            )
            if keys
        ]
        if problems:
            raise CheckpointMismatchError(
                f"checkpoint {where!r} does not fit the model: " + "; ".join(problems)
            )

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
