"""WorldGym (github.com/world-model-eval/world-model-eval) checkpoints into our ``large`` model.

WorldGym's training script saves ``{"model", "ema", "optimizer", "step"}`` with ``torch.save``;
``"model"`` / ``"ema"`` are state dicts of its ``DiT`` (a spatial/temporal factorized DiT on SD3-VAE
latents, width 1024, 16 layers, 16 heads, patch 2: ~600M parameters). Our ``FactorizedDiT``
(``world_model/backbones.py``) has the same blocks, so the backbone maps tensor for tensor
(``L`` layers ``i``; ``{s,t}`` = spatial / temporal)::

    x_proj.*                          -> backbone.patch.*
    timestep_mlp.0.* / .2.*           -> backbone.time_embed.linear_1.* / linear_2.*
    blocks.i.s_block.adaLN_modulation.1.*  -> backbone.spatial.i.ada.*   (same 6-way chunk order)
    blocks.i.s_block.attn.qkv_proj.weight  -> backbone.spatial.i.attn.qkv.weight  (+ zero bias)
    blocks.i.s_block.attn.out_proj.*       -> backbone.spatial.i.attn.out.*
    blocks.i.s_block.ffwd.0.* / .2.*       -> backbone.spatial.i.ff.net.0.proj.* / ff.net.2.*
    blocks.i.t_block.*                     -> backbone.temporal.i.*  (as above)
    final_layer.adaLN_modulation.1.*  -> backbone.ada_out.*
    final_layer.linear.*              -> backbone.proj_out.*

Two details make the mapping exact rather than merely shape-compatible: WorldGym's query/key
projection has no bias (ours gets zeros), and its 2-D RoPE rotates the first half of each head's
dimensions by the row and the second by the column, where diffusers' table (ours) does the
reverse; the spatial query and key rows are therefore swapped half for half within each head,
which leaves every attention score unchanged. The timestep sinusoid (cos first, 256 dims), the
adaLN chunk order, the patch layout and the output unpatchify order are the same.

What does **not** map, so conversion refuses unless ``allow_partial``:

* ``action_embedder.{weight,bias}``: WorldGym embeds an action with one ``Linear(action_dim, D)``;
  ours is ``Linear -> SiLU -> Linear`` (``action_embed.0`` / ``.2``), which cannot represent it.
* ``null_action`` (ours): WorldGym's public code has no classifier-free guidance, so no null
  action exists to copy.

With ``allow_partial`` the backbone is converted and the action pathway keeps its fresh
initialisation, to be trained on the lab's episodes (``train_world_model`` warm-starts from
the written checkpoint). Differences outside the weights, which no converter can remove: the
noise schedule (WorldGym: a sigmoid schedule; ours: ``beta_schedule`` with zero terminal SNR),
the sampler (WorldGym: diffusion forcing with a pyramid schedule; ours: per-frame DDIM with a
fixed context noise level), its default ``action_dim`` of 10 (Bridge's 7-D actions padded) and
raw, unnormalised actions (the config here sets mean 0 / std 1). Its VAE latents are
``z * scaling_factor`` with no shift, so the written checkpoint's ``vae/`` has ``shift_factor`` 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from world_model.config import WorldModelConfig

REPORT_NAME = "worldgym_conversion.json"
_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers
_BLOCK_MAP = {
    "adaLN_modulation.1.weight": "ada.weight",
    "adaLN_modulation.1.bias": "ada.bias",
    "attn.qkv_proj.weight": "attn.qkv.weight",
    "attn.out_proj.weight": "attn.out.weight",
    "attn.out_proj.bias": "attn.out.bias",
    "ffwd.0.weight": "ff.net.0.proj.weight",
    "ffwd.0.bias": "ff.net.0.proj.bias",
    "ffwd.2.weight": "ff.net.2.weight",
    "ffwd.2.bias": "ff.net.2.bias",
}
_TOP_MAP = {
    "x_proj.weight": "backbone.patch.weight",
    "x_proj.bias": "backbone.patch.bias",
    "timestep_mlp.0.weight": "backbone.time_embed.linear_1.weight",
    "timestep_mlp.0.bias": "backbone.time_embed.linear_1.bias",
    "timestep_mlp.2.weight": "backbone.time_embed.linear_2.weight",
    "timestep_mlp.2.bias": "backbone.time_embed.linear_2.bias",
    "final_layer.adaLN_modulation.1.weight": "backbone.ada_out.weight",
    "final_layer.adaLN_modulation.1.bias": "backbone.ada_out.bias",
    "final_layer.linear.weight": "backbone.proj_out.weight",
    "final_layer.linear.bias": "backbone.proj_out.bias",
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.([st])_block\.(.+)")


class WorldGymConversionError(ValueError):
    """A WorldGym checkpoint that cannot be converted (as asked) into our model."""


@dataclass
class Conversion:
    """Our tensors for a WorldGym state dict, and an account of what did not map."""

    state_dict: dict[str, torch.Tensor]
    mapped: dict[str, str]  # WorldGym key -> our key
    unmapped: list[str]  # WorldGym keys with no place in our model
    uninitialised: list[str]  # our keys no WorldGym tensor fills (they keep their init)
    zero_filled: list[str] = field(default_factory=list)  # our biases WorldGym does not have

    def report(self) -> dict:
        return {
            "mapped": len(self.mapped),
            "unmapped_worldgym_keys": self.unmapped,
            "uninitialised_keys": self.uninitialised,
            "zero_filled_keys": len(self.zero_filled),
        }


def load_worldgym_state_dict(path: str | Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """The DiT state dict in a WorldGym ``.pt`` (``weights``: "ema", what one samples with, or
    "model"); a bare state dict is taken as it is. Loaded with ``weights_only=True``."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise WorldGymConversionError(f"{path} holds a {type(data).__name__}, not a state dict")
    if "model" in data or "ema" in data:
        if weights not in data:
            raise WorldGymConversionError(
                f"{path} has no {weights!r} weights; it has {sorted(k for k in data if isinstance(data[k], dict))}"
            )
        data = data[weights]
    state = {}
    for key, tensor in data.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        if not torch.is_tensor(tensor):
            raise WorldGymConversionError(f"{path}: {key!r} is a {type(tensor).__name__}")
        state[key] = tensor
    if "x_proj.weight" not in state:
        raise WorldGymConversionError(
            f"{path} is not a WorldGym DiT state dict (no 'x_proj.weight'); keys start "
            f"{sorted(state)[:5]}"
        )
    return state


def worldgym_config(
    state: dict[str, torch.Tensor], heads: int = 16, **overrides
) -> WorldModelConfig:
    """Our ``large`` config with the width, depth, patch, latent channels and action size a
    WorldGym state dict has (attention heads are not recorded in the weights: WorldGym's 600M
    model uses 16)."""
    width, channels, patch, _ = state["x_proj.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.fullmatch(k)))
    action_dim = (
        state["action_embedder.weight"].shape[1] if "action_embedder.weight" in state else 7
    )
    fields = dict(
        dit_width=width,
        dit_heads=heads,
        dit_layers=layers,
        dit_patch_size=patch,
        latent_channels=channels,
        action_dim=action_dim,
        # WorldGym feeds raw actions
        action_mean=(0.0,) * action_dim,
        action_std=(1.0,) * action_dim,
        # WorldGym trains on windows of 10 frames (its n_frames default): 9 context + 1 new
        context_frames=9,
    )
    return WorldModelConfig.from_preset("large", **{**fields, **overrides})


def convert_state_dict(
    state: dict[str, torch.Tensor], config: WorldModelConfig, allow_partial: bool = False
) -> Conversion:
    """Map a WorldGym DiT state dict onto the tensors of ``ActionConditionedWorldModel(config)``.

    Refuses (``WorldGymConversionError``, naming every key) when a WorldGym tensor has no place
    or a tensor of ours would stay uninitialised, unless ``allow_partial``; a shape mismatch is
    always refused."""
    from world_model.model import _expected_shapes

    expected = _expected_shapes(config)
    head_dim = config.dit_width // config.dit_heads
    out, mapped, unmapped = {}, {}, []
    for key, tensor in state.items():
        ours = _our_key(key)
        if ours is None or ours not in expected:
            unmapped.append(key)
            continue
        if ours.startswith("backbone.spatial.") and ours.endswith("attn.qkv.weight"):
            tensor = _swap_rope_halves(tensor, config.dit_heads, head_dim)
        out[ours], mapped[key] = tensor.float().clone(), ours
    zero_filled = []
    for ours, shape in expected.items():
        if ours.endswith("attn.qkv.bias") and ours not in out:
            out[ours] = torch.zeros(shape)  # WorldGym's projection has no bias
            zero_filled.append(ours)
    bad = [
        f"{k}: WorldGym {tuple(out[mapped[k]].shape)} vs ours {expected[mapped[k]]}"
        for k in mapped
        if tuple(out[mapped[k]].shape) != expected[mapped[k]]
    ]
    if bad:
        raise WorldGymConversionError(
            f"{len(bad)} WorldGym tensors do not fit the config (dit_heads={config.dit_heads}): "
            + "; ".join(bad[:8])
        )
    missing = sorted(set(expected) - set(out))
    conversion = Conversion(out, mapped, sorted(unmapped), missing, zero_filled)
    if (unmapped or missing) and not allow_partial:
        raise WorldGymConversionError(
            f"our world model cannot hold every WorldGym tensor: unmapped WorldGym keys "
            f"{sorted(unmapped)}; our keys left uninitialised {missing}. WorldGym embeds actions "
            "with one Linear where ours has Linear-SiLU-Linear, and has no null action "
            "(no classifier-free guidance). Pass allow_partial=True (CLI: --allow-partial) to "
            "convert the DiT backbone and train the action pathway on your episodes."
        )
    return conversion


def convert_worldgym(
    src: str | Path,
    dst: str | Path,
    vae_path: str | Path,
    *,
    heads: int = 16,
    weights: str = "ema",
    allow_partial: bool = False,
    **overrides,
):
    """Convert a WorldGym ``.pt`` into a checkpoint folder of ours (diffusers layout, with the
    VAE in ``vae/``, shift 0 as WorldGym encodes) and a ``worldgym_conversion.json`` account;
    returns the model."""
    from world_model.model import ActionConditionedWorldModel

    state = load_worldgym_state_dict(src, weights)
    overrides.setdefault("vae_downsample", _vae_downsample(Path(vae_path)))
    config = worldgym_config(state, heads=heads, vae_path=str(vae_path), **overrides)
    conversion = convert_state_dict(state, config, allow_partial)
    model = ActionConditionedWorldModel(config)
    result = model.load_state_dict(conversion.state_dict, strict=False)
    left = sorted(k for k in result.missing_keys if not k.startswith("codec."))
    if left != conversion.uninitialised or result.unexpected_keys:
        raise WorldGymConversionError(
            f"loading the converted tensors left {left} missing and "
            f"{result.unexpected_keys} unexpected"
        )
    _unshifted_vae(model)
    d = Path(dst)
    model.save_pretrained(d)
    report = {"source": str(src), "weights": weights, **conversion.report()}
    (d / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return model


def _vae_downsample(vae_path: Path) -> int:
    """The VAE's spatial factor, from its config (SD3's: 8)."""
    file = vae_path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"VAE folder {vae_path} has no config.json (a diffusers AutoencoderKL)"
        )
    return 2 ** (len(json.loads(file.read_text())["block_out_channels"]) - 1)


def _our_key(key: str) -> str | None:
    if key in _TOP_MAP:
        return _TOP_MAP[key]
    m = _BLOCK_KEY.fullmatch(key)
    if m is None or m.group(3) not in _BLOCK_MAP:
        return None
    kind = "spatial" if m.group(2) == "s" else "temporal"
    return f"backbone.{kind}.{m.group(1)}.{_BLOCK_MAP[m.group(3)]}"


def _swap_rope_halves(qkv: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(3D, D) q/k/v rows with each head's first and second half swapped in q and k (v as is):
    moves WorldGym's (row, column) RoPE halves to diffusers' (column, row) order."""
    d = heads * head_dim
    if qkv.shape[0] != 3 * d:
        raise WorldGymConversionError(
            f"qkv_proj has {qkv.shape[0]} rows, expected 3 x {d} (dit_width={d})"
        )
    q, k, v = qkv.view(3, heads, 2, head_dim // 2, -1).unbind(0)  # each (H, 2, hd/2, D)
    q, k = q.flip(1), k.flip(1)
    return torch.stack([q, k, v]).reshape(3 * d, -1)


def _unshifted_vae(model) -> None:
    """WorldGym's latents are ``z * scaling_factor`` with no shift: make ours encode alike, and
    record it in the VAE config the checkpoint carries."""
    codec = model.codec
    if hasattr(codec, "shift_factor"):
        codec.shift_factor = 0.0
        codec.vae.register_to_config(shift_factor=0.0)
