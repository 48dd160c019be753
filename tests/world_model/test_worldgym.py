"""WorldGym checkpoints into our large world model (world_model/convert_worldgym.py).

The WorldGym state dicts here are synthetic: key names and shapes as world-model-eval's ``DiT``
defines them, random values, built locally. The 600M model's names and shapes are checked on the
meta device (no memory); a small one is converted, compared tensor for tensor against a
reference forward pass of WorldGym's DiT written out from its definition, saved, reloaded and
rolled out one step.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from world_model.convert_worldgym import (
    REPORT_NAME,
    WorldGymConversionError,
    convert_state_dict,
    convert_worldgym,
    load_worldgym_state_dict,
    worldgym_config,
)


def worldgym_shapes(width=1024, layers=16, channels=16, patch=2, action_dim=10) -> dict:
    """Names and shapes of WorldGym's ``DiT(in_channels=16, patch_size=2, dim=1024,
    num_layers=16, num_heads=16, action_dim=10)`` state dict (its 600M configuration)."""
    d = width
    shapes = {
        "x_proj.weight": (d, channels, patch, patch),
        "x_proj.bias": (d,),
        "timestep_mlp.0.weight": (d, 256),
        "timestep_mlp.0.bias": (d,),
        "timestep_mlp.2.weight": (d, d),
        "timestep_mlp.2.bias": (d,),
        "action_embedder.weight": (d, action_dim),
        "action_embedder.bias": (d,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
        "final_layer.linear.weight": (patch * patch * channels, d),
        "final_layer.linear.bias": (patch * patch * channels,),
    }
    for i in range(layers):
        for b in ("s_block", "t_block"):
            p = f"blocks.{i}.{b}."
            shapes |= {
                p + "adaLN_modulation.1.weight": (6 * d, d),
                p + "adaLN_modulation.1.bias": (6 * d,),
                p + "attn.qkv_proj.weight": (3 * d, d),  # no bias
                p + "attn.out_proj.weight": (d, d),
                p + "attn.out_proj.bias": (d,),
                p + "ffwd.0.weight": (4 * d, d),
                p + "ffwd.0.bias": (4 * d,),
                p + "ffwd.2.weight": (d, 4 * d),
                p + "ffwd.2.bias": (d,),
            }
    return shapes


def random_state(shapes: dict, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * std for k, s in shapes.items()}


SMALL = dict(width=32, layers=2, channels=16, patch=2, action_dim=10)
TINY_VAE = dict(image_size=16)  # tests/small_models.tiny_sd3_style_vae downsamples 2x
HEADS = 2


# ----- a reference forward pass of WorldGym's DiT, from its definition -----------------------
def _rope(x: torch.Tensor, positions: list[torch.Tensor]) -> torch.Tensor:
    """Interleaved-pair RoPE; the head dimension is split evenly over the axes, in order."""
    half = x.shape[-1] // len(positions) // 2
    inv = 1.0 / 10000 ** (torch.arange(half) / half)
    cos = torch.cat([(p[:, None] * inv).cos() for p in positions], -1).repeat_interleave(2, -1)
    sin = torch.cat([(p[:, None] * inv).sin() for p in positions], -1).repeat_interleave(2, -1)
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], -1).flatten(-2)
    return x * cos + rotated * sin


def _block(x, c, sd, p, heads, positions, causal):
    n, s, d = x.shape
    m = F.silu(c) @ sd[p + "adaLN_modulation.1.weight"].T + sd[p + "adaLN_modulation.1.bias"]
    m = m.chunk(6, -1)

    def norm(t):
        return F.layer_norm(t, (d,), eps=1e-6)

    h = norm(x) * (1 + m[1]) + m[0]
    q, k, v = (h @ sd[p + "attn.qkv_proj.weight"].T).chunk(3, -1)
    q, k, v = (t.view(n, s, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    q, k = _rope(q, positions), _rope(k, positions)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(n, s, d)
    x = x + (o @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]) * m[2]
    h = norm(x) * (1 + m[4]) + m[3]
    h = F.gelu(h @ sd[p + "ffwd.0.weight"].T + sd[p + "ffwd.0.bias"], approximate="tanh")
    return x + (h @ sd[p + "ffwd.2.weight"].T + sd[p + "ffwd.2.bias"]) * m[5]


def worldgym_forward(sd, x, t, actions, heads: int) -> torch.Tensor:
    """x (B, T, C, H, W) latents, t (B, T) noise levels, actions (B, T, A) -> (B, T, C, H, W)."""
    b, n_t = x.shape[:2]
    w = sd["x_proj.weight"]
    d, c, patch = w.shape[0], w.shape[1], w.shape[2]
    z = F.conv2d(x.flatten(0, 1), w, sd["x_proj.bias"], stride=patch)  # (B*T, D, g, g)
    g = z.shape[-1]
    z = z.flatten(2).transpose(1, 2).reshape(b, n_t, g * g, d)
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    args = t.reshape(-1, 1).float() * freqs
    emb = torch.cat([args.cos(), args.sin()], -1)
    cond = F.silu(emb @ sd["timestep_mlp.0.weight"].T + sd["timestep_mlp.0.bias"])
    cond = (cond @ sd["timestep_mlp.2.weight"].T + sd["timestep_mlp.2.bias"]).view(b, n_t, d)
    cond = cond + actions @ sd["action_embedder.weight"].T + sd["action_embedder.bias"]
    rows, cols = (
        a.flatten().float() for a in torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    )
    frames = torch.arange(n_t).float()
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(layers):
        z = _block(
            z.reshape(b * n_t, g * g, d), cond.reshape(b * n_t, 1, d), sd,
            f"blocks.{i}.s_block.", heads, [rows, cols], causal=False,
        ).view(b, n_t, g * g, d)  # fmt: skip
        zt = z.transpose(1, 2).reshape(b * g * g, n_t, d)
        ct = cond[:, None].expand(b, g * g, n_t, d).reshape(b * g * g, n_t, d)
        z = _block(zt, ct, sd, f"blocks.{i}.t_block.", heads, [frames], causal=True)
        z = z.view(b, g * g, n_t, d).transpose(1, 2)
    m = F.silu(cond) @ sd["final_layer.adaLN_modulation.1.weight"].T
    shift, scale = (m + sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, -1)
    z = F.layer_norm(z, (d,), eps=1e-6) * (1 + scale[:, :, None]) + shift[:, :, None]
    z = z @ sd["final_layer.linear.weight"].T + sd["final_layer.linear.bias"]
    z = z.view(b, n_t, g, g, patch, patch, c).permute(0, 1, 6, 2, 4, 3, 5)
    return z.reshape(b, n_t, c, g * patch, g * patch)


# ----- tests ------------------------------------------------------------------------------------
def test_the_600m_state_dict_maps_every_backbone_tensor_and_names_what_does_not():
    """Exact names and shapes of WorldGym's 600M DiT, on the meta device (no memory)."""
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in worldgym_shapes().items()}
    assert sum(t.numel() for t in state.values()) > 600e6
    config = worldgym_config(state, image_size=256)
    assert (config.dit_width, config.dit_layers, config.dit_heads) == (1024, 16, 16)
    assert (config.latent_channels, config.dit_patch_size, config.action_dim) == (16, 2, 10)
    with pytest.raises(WorldGymConversionError) as e:
        convert_state_dict(state, config)
    for name in ("action_embedder.weight", "action_embedder.bias", "null_action", "action_embed.0"):
        assert name in str(e.value)
    conv = convert_state_dict(state, config, allow_partial=True)
    assert conv.unmapped == ["action_embedder.bias", "action_embedder.weight"]
    assert conv.uninitialised == [
        "action_embed.0.bias", "action_embed.0.weight", "action_embed.2.bias",
        "action_embed.2.weight", "null_action",
    ]  # fmt: skip
    assert len(conv.mapped) == len(state) - 2 and len(conv.zero_filled) == 32


def test_converted_backbone_computes_what_worldgym_computes():
    torch.manual_seed(0)
    sd = random_state(worldgym_shapes(**SMALL))
    config = worldgym_config(sd, heads=HEADS, image_size=64, codec="pixel", latent_channels=3)
    with pytest.raises(WorldGymConversionError, match="latent_channels|do not fit"):
        convert_state_dict(sd, config, allow_partial=True)  # 16-channel weights, 3-channel model
    config = worldgym_config(sd, heads=HEADS, image_size=64, vae_path=None)
    conv = convert_state_dict(sd, config, allow_partial=True)
    from world_model.backbones import FactorizedDiT

    backbone = FactorizedDiT(config)
    prefix = "backbone."
    backbone.load_state_dict(
        {k[len(prefix) :]: v for k, v in conv.state_dict.items() if k.startswith(prefix)}
    )
    b, tc = 2, 3
    x = torch.randn(b, tc + 1, 16, 8, 8)  # 64 px frames -> 8x8 latents, a 4x4 patch grid
    actions = torch.randn(b, tc + 1, 10)
    t_new, t_ctx = torch.tensor([700, 40]), torch.tensor([15, 3])
    times = torch.cat([t_ctx[:, None].expand(b, tc), t_new[:, None]], 1)  # (B, T)
    ref = worldgym_forward(sd, x, times, actions, HEADS)[:, -1]
    a_emb = actions @ sd["action_embedder.weight"].T + sd["action_embedder.bias"]  # (B, T, D)
    with torch.no_grad():
        ours = backbone(x[:, -1], t_new, x[:, :tc], t_ctx, a_emb[:, -1], a_emb[:, :tc])
    assert ours.shape == ref.shape == (b, 16, 8, 8)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), float((ours - ref).abs().max())
    assert ref.abs().mean() > 0.1  # a real signal is compared, not two zero outputs


def test_a_worldgym_checkpoint_converts_loads_and_rolls_out(tmp_path):
    from small_models import tiny_sd3_style_vae

    from world_model import ActionConditionedWorldModel

    vae = tiny_sd3_style_vae(tmp_path / "sd3_vae")
    model_sd = random_state(worldgym_shapes(**SMALL), seed=1)
    ema_sd = random_state(worldgym_shapes(**SMALL), seed=2)
    src = tmp_path / "ckpt_000001000.pt"
    torch.save(
        {
            "model": model_sd,
            "ema": ema_sd,
            "optimizer": {"state": {}, "param_groups": []},
            "step": 1000,
        },
        src,
    )
    assert load_worldgym_state_dict(src, "model").keys() == model_sd.keys()
    with pytest.raises(WorldGymConversionError, match=r"action_embedder\.weight"):
        convert_worldgym(src, tmp_path / "out", vae, heads=HEADS, **TINY_VAE)
    convert_worldgym(src, tmp_path / "out", vae, heads=HEADS, allow_partial=True, **TINY_VAE)
    report = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert report["weights"] == "ema" and report["unmapped_worldgym_keys"] == [
        "action_embedder.bias",
        "action_embedder.weight",
    ]
    vae_config = json.loads((tmp_path / "out" / "vae" / "config.json").read_text())
    assert vae_config["shift_factor"] == 0.0  # WorldGym encodes without SD3's shift
    model = ActionConditionedWorldModel.from_pretrained(tmp_path / "out", device="cpu")
    assert model.codec.shift_factor == 0.0 and model.config.dit_width == 32
    assert torch.equal(  # the EMA weights, as converted (temporal blocks: no RoPE reordering)
        model.backbone.temporal[1].ff.net[2].weight, ema_sd["blocks.1.t_block.ffwd.2.weight"]
    )
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8).numpy()
    out = model.rollout(frames, torch.randn(2, 1, 10) * 0.1, torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 16, 16, 3) and out.dtype == torch.uint8


def test_the_cli_converts_and_refuses_without_allow_partial(tmp_path, capsys):
    from small_models import tiny_sd3_style_vae

    from pipeline.cli import main

    vae = tiny_sd3_style_vae(tmp_path / "vae")
    torch.save({"ema": random_state(worldgym_shapes(**SMALL))}, tmp_path / "wg.pt")
    args = ["convert", "worldgym", str(tmp_path / "wg.pt"), str(tmp_path / "out")]
    args += ["--vae", str(vae), "--heads", "2"]
    with pytest.raises(WorldGymConversionError, match="--allow-partial"):
        main(args)
    assert main([*args, "--allow-partial"]) == 0
    assert REPORT_NAME in capsys.readouterr().out
    assert (tmp_path / "out" / "diffusion_pytorch_model.safetensors").is_file()


def test_not_a_worldgym_file_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(WorldGymConversionError, match="not a WorldGym DiT"):
        load_worldgym_state_dict(tmp_path / "x.pt")
    torch.save({"model": {"x_proj.weight": torch.zeros(1)}}, tmp_path / "y.pt")
    with pytest.raises(WorldGymConversionError, match="no 'ema' weights"):
        load_worldgym_state_dict(tmp_path / "y.pt")
