"""The action-conditioned video world model and its batched closed-loop rollout API.

One new frame per action, autoregressively: the backbone denoises the next frame given the last
``context_frames`` frames (and the first, with ``anchor_first_frame``) and the action, with v-prediction, a few DDIM steps, context noise
augmentation and classifier-free guidance on the action (learned null action).

The model is a diffusers ``ModelMixin`` + ``ConfigMixin``: a checkpoint is ``config.json`` (the
``WorldModelConfig`` fields, plus diffusers' ``_class_name`` / ``_diffusers_version``) and
``diffusion_pytorch_model.safetensors``, loaded through diffusers' own ``from_pretrained``; the VAE
codec's frozen weights live in a ``vae/`` diffusers folder beside them. Checkpoints written
before (``model.safetensors``, no ``_class_name``) still load, directly.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, FrozenDict
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from world_model.backbones import make_backbone
from world_model.codec import make_codec, resize_frames
from world_model.config import WorldModelConfig

CONFIG_NAME = "config.json"
# diffusers' name for a model's weights (what ModelMixin.from_pretrained looks for); checkpoints
# written before the model was a ModelMixin have ``model.safetensors`` and still load.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
LEGACY_WEIGHTS_NAME = "model.safetensors"
VAE_DIRNAME = "vae"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: different architecture, or missing/extra tensors."""


@dataclass
class WorldState:
    """The imagined world after some steps: a batch of context windows in model space."""

    context: torch.Tensor  # (B, Tc, C, h, w) newest frame last (the first frame first if anchored)
    context_actions: torch.Tensor  # (B, Tc, A) raw action that led to each context frame
    context_known: torch.Tensor  # (B, Tc) bool: False where no action led to the frame
    step: int = 0

    @property
    def batch_size(self) -> int:
        return self.context.shape[0]


class ActionConditionedWorldModel(ModelMixin, ConfigMixin):
    """``ActionConditionedWorldModel(config)`` or ``ActionConditionedWorldModel(**fields)``.

    ``config`` is the live ``WorldModelConfig`` (training fits action statistics into it); the
    diffusers config (``_internal_dict``, what ``save_config`` writes and ``from_config`` reads) is
    derived from it, so the two never disagree. The constructor's signature lists every
    ``WorldModelConfig`` field, which is what ``from_config`` / ``from_pretrained`` pass
    (equivalent to ``@register_to_config`` on those arguments; the decorator itself cannot take
    the ``WorldModelConfig`` object form).
    """

    config_name = CONFIG_NAME
    _supports_gradient_checkpointing = False

    def __init__(
        self,
        config: WorldModelConfig | None = None,
        vae_path: str | Path | None = None,
        **fields,
    ) -> None:
        super().__init__()
        if config is None:
            # diffusers' from_config passes the fields; a vae_path among them is the config's
            config = WorldModelConfig(
                **fields, vae_path=None if vae_path is None else str(vae_path)
            )
            vae_path = None
        elif fields:
            raise TypeError(
                f"pass a WorldModelConfig or its fields, not both (got {sorted(fields)})"
            )
        self._wm_config = config
        self._config_extras: dict = {}
        self.codec = make_codec(config, vae_path)
        self.backbone = make_backbone(config)
        e = self.backbone.cond_dim
        self.action_embed = _make_action_embed(config, e)
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

    # ---------------------------------------------------------------- config

    @property
    def config(self) -> WorldModelConfig:
        return self._wm_config

    @property
    def _internal_dict(self) -> FrozenDict:
        """The diffusers view of the config: the fields (JSON types) and diffusers' own keys."""
        return FrozenDict({**self._wm_config.to_dict(), **self._config_extras})

    @_internal_dict.setter
    def _internal_dict(self, value) -> None:
        # ConfigMixin.register_to_config: "_" keys (``_name_or_path``) are diffusers'; field
        # values update the live config (validated by WorldModelConfig).
        value = dict(value)
        self._config_extras = {k: v for k, v in value.items() if k.startswith("_")}
        fields = {k: v for k, v in value.items() if not k.startswith("_")}
        if fields and fields != self._wm_config.to_dict():
            self._wm_config = dataclasses.replace(self._wm_config, **fields)

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
        b, tc = z.shape[0], self.config.context_slots
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
        a = int(self.config.anchor_first_frame)  # slots that stay: the first frame's
        frames = []
        for k in range(actions.shape[1]):
            z = self.sample_next(ctx, ctx_actions, ctx_known, actions[:, k], generator)
            frames.append(self.codec.decode(z).permute(0, 2, 3, 1))  # (B, S, S, 3)
            ctx = torch.cat([ctx[:, :a], ctx[:, a + 1 :], z[:, None]], dim=1)
            ctx_actions = torch.cat(
                [ctx_actions[:, :a], ctx_actions[:, a + 1 :], actions[:, k : k + 1]], dim=1
            )
            ctx_known = torch.cat(
                [ctx_known[:, :a], ctx_known[:, a + 1 :], torch.ones_like(ctx_known[:, :1])],
                dim=1,
            )
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

    def save_pretrained(self, directory: str | Path, **kwargs) -> Path:
        """``config.json`` + ``diffusion_pytorch_model.safetensors`` (+ ``vae/``), as diffusers
        lays out a model.

        The weights file holds everything but the frozen VAE, which is saved as its own diffusers
        folder (``vae/``) so the checkpoint is self-contained. Keyword arguments are accepted for
        diffusers-compatible calls; only safetensors is written.
        """
        if kwargs.pop("safe_serialization", True) is False:
            raise ValueError("world-model checkpoints are safetensors only")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.save_config(d)  # the config fields, _class_name and _diffusers_version
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state_dict().items()}
        save_file(tensors, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        if self.config.codec == "vae" and not (d / VAE_DIRNAME / CONFIG_NAME).is_file():
            self.codec.vae.save_pretrained(d / VAE_DIRNAME)  # self-contained checkpoint
        return d

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device | None = None, **kwargs
    ) -> ActionConditionedWorldModel:
        """Load a checkpoint onto ``device`` (``robot_bridge.devices`` setting; None: "auto").

        Goes through diffusers' ``ModelMixin.from_pretrained`` (safetensors), after checking the
        tensors fit (``CheckpointMismatchError`` naming them); a ``vae/`` folder beside the
        weights is the codec's VAE. Other keyword arguments go to diffusers.
        """
        from robot_bridge.devices import resolve_device

        dev = resolve_device(device)
        d = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{str(d)!r} is not a world-model checkpoint: no {CONFIG_NAME}")
        config = WorldModelConfig.load(d / CONFIG_NAME)  # clear errors for bad fields
        vae_dir = d / VAE_DIRNAME if (d / VAE_DIRNAME / CONFIG_NAME).is_file() else None
        weights = _weights_file(d)
        if weights.name == LEGACY_WEIGHTS_NAME:  # written before: not a diffusers layout
            if kwargs:
                raise TypeError(
                    f"a legacy checkpoint takes no diffusers options, got {sorted(kwargs)}"
                )
            model = cls(config, vae_path=vae_dir).to(dev)
            model.load_weights(d)
            return model.eval()
        if vae_dir is not None:
            kwargs["vae_path"] = str(vae_dir)  # construct the codec from the checkpoint's own VAE
        shapes = _safetensors_shapes(weights)
        _check_tensor_shapes(_expected_shapes(config), shapes, str(d))
        kwargs.setdefault("low_cpu_mem_usage", False)  # the codec's VAE is not in the weights
        model = super().from_pretrained(str(d), use_safetensors=True, **kwargs)
        if vae_dir is not None:
            model.config.vae_path = config.vae_path  # the path it was trained with, as saved
        return model.to(dev)

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
        loaded = load_file(str(_weights_file(d)), device=str(self.device))
        self._check_tensors(loaded, str(d))
        self.load_state_dict(loaded, strict=False)

    def _check_tensors(self, loaded: dict[str, torch.Tensor], where: str) -> None:
        expected = {k: tuple(v.shape) for k, v in self.trainable_state_dict().items()}
        _check_tensor_shapes(expected, {k: tuple(v.shape) for k, v in loaded.items()}, where)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _make_action_embed(config: WorldModelConfig, width: int) -> nn.Sequential:
    # WorldGym uses Linear(action_dim -> width); one hidden layer lets the gripper's on/off and
    # the small deltas map to separable embeddings.
    return nn.Sequential(nn.Linear(config.action_dim, width), nn.SiLU(), nn.Linear(width, width))


def _expected_shapes(config: WorldModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors (``trainable_state_dict``), built on the meta
    device: no memory, no VAE."""
    with torch.device("meta"):
        backbone = make_backbone(config)
        embed = _make_action_embed(config, backbone.cond_dim)
    shapes = {f"backbone.{k}": tuple(v.shape) for k, v in backbone.state_dict().items()}
    shapes.update({f"action_embed.{k}": tuple(v.shape) for k, v in embed.state_dict().items()})
    shapes["null_action"] = (backbone.cond_dim,)
    return shapes


def _weights_file(d: Path) -> Path:
    for name in (WEIGHTS_NAME, LEGACY_WEIGHTS_NAME):
        if (d / name).is_file():
            return d / name
    raise FileNotFoundError(f"world-model checkpoint {str(d)!r} has no {WEIGHTS_NAME}")


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as f:  # the header only, no tensor data
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def _check_tensor_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str
) -> None:
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    shapes = sorted(
        f"{k} {found[k]} != {v}" for k, v in expected.items() if k in found and found[k] != v
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


def _init_signature() -> inspect.Signature:
    """``(self, config=None, vae_path=None, *, <every other WorldModelConfig field>)``: what
    diffusers' ``from_config`` reads to know which config.json keys are constructor arguments."""
    params = [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("vae_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
    ]
    for f in dataclasses.fields(WorldModelConfig):
        if f.name == "vae_path":
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default))
    return inspect.Signature(params)


ActionConditionedWorldModel.__init__.__signature__ = _init_signature()
