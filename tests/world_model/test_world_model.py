"""World model: presets, checkpoints, training, closed-loop rollouts, evaluation, large-preset loading.

Synthetic episodes: a coloured square on a static background, moved by the action's dx/dy, so a
model that uses its action input predicts the next frame better with the true action.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from config_convention import assert_follows_the_config_convention
from safetensors.torch import load_file, save_file
from small_models import SyntheticEpisode, small_config, tiny_sd3_style_vae

from gymnast_common.config import ConfigError
from world_model import (
    ActionConditionedWorldModel,
    CheckpointMismatchError,
    EmptyDatasetError,
    NonFiniteLossError,
    WorldModelConfig,
    WorldModelTrainConfig,
    evaluate_world_model,
    next_frame_error,
    rollout_error,
    train_world_model,
    write_side_by_side_video,
)
from world_model.backbones import make_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def square_episode(seed: int, steps: int = 24, size: int = 32, side: int = 6) -> SyntheticEpisode:
    rng = np.random.default_rng(seed)
    color = rng.integers(80, 256, 3).astype(np.uint8)
    pos = rng.uniform(side, size - 2 * side, 2)
    actions = np.zeros((steps, 7), np.float32)
    actions[:, :2] = rng.uniform(-0.05, 0.05, (steps, 2))
    actions[:, 6] = rng.integers(0, 2, steps)
    frames = []
    for t in range(steps + 1):
        f = np.full((size, size, 3), 40, np.uint8)
        f[: size // 4, :, 2] = 160  # a static part of the scene
        y, x = np.clip(pos, 0, size - side).astype(int)
        f[y : y + side, x : x + side] = color
        frames.append(f)
        if t < steps:
            pos = np.clip(pos + actions[t, :2] / 0.05 * 3.0, 0, size - side)  # up to 3 px per step
    return SyntheticEpisode(np.stack(frames), actions, episode_id=f"square-{seed}")


@pytest.fixture(scope="module")
def episodes() -> list[SyntheticEpisode]:
    return [square_episode(i) for i in range(4)]


def rollout_frames(model, init, actions, seed=0) -> torch.Tensor:
    return model.rollout(init, actions, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ config


def test_presets_by_name_and_config_checks():
    tiny = WorldModelConfig.from_preset("tiny")
    assert (tiny.image_size, tiny.backbone, tiny.codec) == (64, "unet", "pixel")
    large = WorldModelConfig.from_preset("large", vae_path="/models/sd3/vae")
    assert (large.dit_width, large.dit_heads, large.dit_layers, large.latent_channels) == (
        1024,
        16,
        16,
        16,
    )
    assert large.latent_size == 32  # 256 px / 8
    with pytest.raises(ConfigError, match="valid presets: tiny, large"):
        WorldModelConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="no_such_field"):
        WorldModelConfig.from_preset("tiny", no_such_field=1)
    with pytest.raises(ValueError, match=r"backbone: expected one of .* received 'cnn'"):
        WorldModelConfig.from_preset("tiny", backbone="cnn")
    with pytest.raises(ValueError, match="action_std"):
        WorldModelConfig.from_preset("tiny", action_std=(1.0,) * 6)


def test_world_model_configs_follow_the_config_convention():
    assert_follows_the_config_convention(
        WorldModelConfig, "large", vae_path="/models/sd3/vae", unet_block_out_channels=(32, 64, 96)
    )
    assert WorldModelConfig.from_preset("large", vae_path="v").name == "large"
    assert_follows_the_config_convention(WorldModelTrainConfig, "tiny", steps=7, lr=1e-4)


def test_config_json_of_a_checkpoint_loads_and_unknown_keys_are_refused(tmp_path):
    cfg = WorldModelConfig.from_preset("tiny", context_frames=3)
    cfg.save(tmp_path / "config.json")
    # a diffusers config.json: its "_" keys are diffusers' bookkeeping
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "_class_name": "X"}))
    assert WorldModelConfig.load(tmp_path / "config.json") == cfg
    (tmp_path / "config.json").write_text(json.dumps({**data, "frame_rate": 5}))
    with pytest.raises(
        ConfigError, match=r"config.json: unknown WorldModelConfig fields \['frame_rate'\]"
    ):
        WorldModelConfig.load(tmp_path / "config.json")


def test_large_backbone_is_worldgym_sized():
    with torch.device("meta"):  # shapes only: no memory, no weights
        dit = make_backbone(WorldModelConfig.from_preset("large", vae_path="unused"))
    n = sum(p.numel() for p in dit.parameters())
    assert 550e6 < n < 650e6, n  # WorldGym: ~600M


# ------------------------------------------------------------------------------------ checkpoints


def test_save_load_round_trip_identical_rollout(tmp_path, episodes):
    model, _ = train_world_model(
        small_config(), episodes, WorldModelTrainConfig(steps=2, batch_size=4), progress=False
    )
    init = episodes[0].frames[:1].repeat(2, axis=0)
    actions = torch.from_numpy(np.stack([episodes[0].actions[:3], episodes[1].actions[:3]]))
    before = rollout_frames(model, init, actions)
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {
        "config.json",
        "diffusion_pytorch_model.safetensors",
    }
    loaded = ActionConditionedWorldModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config  # including the fitted action statistics
    assert torch.equal(rollout_frames(loaded, init, actions), before)
    assert not torch.equal(rollout_frames(loaded, init, actions, seed=1), before)


def test_checkpoint_is_a_diffusers_model(tmp_path, episodes):
    """A diffusers ModelMixin + ConfigMixin: diffusers' own from_pretrained / from_config load it
    (safetensors), and a one-step rollout with a fixed generator matches the saved model."""
    import json

    from diffusers import ModelMixin
    from diffusers.configuration_utils import ConfigMixin

    model, _ = train_world_model(
        small_config(), episodes, WorldModelTrainConfig(steps=1, batch_size=4), progress=False
    )
    assert isinstance(model, ModelMixin) and isinstance(model, ConfigMixin)
    init = episodes[0].frames[:1].repeat(2, axis=0)
    actions = torch.from_numpy(np.stack([episodes[0].actions[:1], episodes[1].actions[:1]]))
    before = rollout_frames(model, init, actions)
    d = model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((d / "config.json").read_text())
    assert saved["_class_name"] == "ActionConditionedWorldModel" and "_diffusers_version" in saved
    assert saved["action_std"] == list(model.config.action_std)  # the fitted statistics
    # diffusers' ModelMixin.from_pretrained itself, with its defaults (low_cpu_mem_usage etc.)
    plain, info = ModelMixin.from_pretrained.__func__(
        ActionConditionedWorldModel, str(d), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert plain.config == model.config and plain.dtype == torch.float32
    assert torch.equal(rollout_frames(plain, init, actions), before)
    ours = ActionConditionedWorldModel.from_pretrained(d, device="cpu")
    assert torch.equal(rollout_frames(ours, init, actions), before)
    # from_config / the diffusers config view
    fresh = ActionConditionedWorldModel.from_config(ActionConditionedWorldModel.load_config(d))
    assert fresh.config == model.config
    assert ours.config.action_mean == model.config.action_mean
    assert dict(ours._internal_dict)["_name_or_path"] == str(d)
    # keyword construction, as from_config does it, equals the config-object form
    assert ActionConditionedWorldModel(**small_config().__dict__).config == small_config()


def test_checkpoints_written_before_diffusers_still_load(tmp_path, episodes):
    model, _ = train_world_model(
        small_config(), episodes, WorldModelTrainConfig(steps=1, batch_size=4), progress=False
    )
    old = tmp_path / "old"
    old.mkdir()
    model.config.save(old / "config.json")  # the old layout: bare fields, model.safetensors
    save_file(
        {k: v.contiguous() for k, v in model.trainable_state_dict().items()},
        str(old / "model.safetensors"),
    )
    init = episodes[0].frames[:1].repeat(2, axis=0)
    actions = torch.from_numpy(np.stack([episodes[0].actions[:1], episodes[1].actions[:1]]))
    loaded = ActionConditionedWorldModel.from_pretrained(old, device="cpu")
    assert loaded.config == model.config
    assert torch.equal(rollout_frames(loaded, init, actions), rollout_frames(model, init, actions))
    fresh = ActionConditionedWorldModel(small_config())
    fresh.load_weights(old)  # warm start from an old checkpoint
    new = loaded.save_pretrained(tmp_path / "new")
    again = ActionConditionedWorldModel.from_pretrained(new, device="cpu")
    assert torch.equal(rollout_frames(again, init, actions), rollout_frames(model, init, actions))


def test_mismatched_checkpoint_errors_name_the_problem(tmp_path):
    ActionConditionedWorldModel(small_config()).save_pretrained(tmp_path / "a")
    with pytest.raises(CheckpointMismatchError, match=r"image_size: checkpoint 32 vs model 64"):
        ActionConditionedWorldModel(small_config(image_size=64)).load_weights(tmp_path / "a")
    with pytest.raises(CheckpointMismatchError, match=r"unet_block_out_channels"):
        ActionConditionedWorldModel(
            small_config(unet_block_out_channels=(16, 32, 48))
        ).load_weights(tmp_path / "a")
    weights = tmp_path / "a" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors.pop("null_action")
    tensors["extra.weight"] = torch.zeros(2)
    tensors["action_embed.0.weight"] = torch.zeros(3, 7)
    save_file(tensors, weights)
    with pytest.raises(CheckpointMismatchError) as err:
        ActionConditionedWorldModel.from_pretrained(tmp_path / "a")
    msg = str(err.value)
    assert "missing (1): null_action" in msg and "unexpected (1): extra.weight" in msg
    assert "action_embed.0.weight (3, 7) != (64, 7)" in msg


def test_finetune_warm_starts_from_checkpoint(tmp_path, episodes):
    first, _ = train_world_model(
        small_config(), episodes, WorldModelTrainConfig(steps=2, batch_size=4), progress=False
    )
    first.save_pretrained(tmp_path / "round0")
    # lr=0: the finetuned weights must be exactly the checkpoint's, and its action statistics kept
    other = [square_episode(50 + i) for i in range(2)]
    for ep in other:
        ep.actions[:, :2] *= 0.5
    second, metrics = train_world_model(
        small_config(),
        other,
        WorldModelTrainConfig(steps=1, batch_size=4, lr=0.0),
        progress=False,
        init_from=tmp_path / "round0",
    )
    assert metrics["warm_start"] == str(tmp_path / "round0")
    assert second.config.action_std == first.config.action_std
    theirs = first.trainable_state_dict()
    for name, value in second.trainable_state_dict().items():
        assert torch.equal(value, theirs[name]), name
    fresh, _ = train_world_model(
        small_config(), other, WorldModelTrainConfig(steps=1, batch_size=4, lr=0.0), progress=False
    )
    assert fresh.config.action_std != first.config.action_std  # refitted on the new episodes


# ------------------------------------------------------------------------------------ training


def test_every_trainable_parameter_changes_after_one_step(episodes):
    model = ActionConditionedWorldModel(small_config(action_dropout=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model, _ = train_world_model(
        model, episodes, WorldModelTrainConfig(steps=1, batch_size=16, lr=1e-3), progress=False
    )
    unchanged = [
        n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])
    ]
    assert not unchanged, unchanged


def test_empty_dataset_and_nan_loss_raise(episodes):
    empty = SyntheticEpisode(episodes[0].frames[:1], np.zeros((0, 7), np.float32))
    with pytest.raises(EmptyDatasetError, match="no transitions"):
        train_world_model(small_config(), [], WorldModelTrainConfig(steps=1), progress=False)
    with pytest.raises(EmptyDatasetError, match="1 episodes given"):
        train_world_model(small_config(), [empty], WorldModelTrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="frames must be"):
        train_world_model(
            small_config(),
            [SyntheticEpisode(episodes[0].frames.astype(np.float32), episodes[0].actions)],
            WorldModelTrainConfig(steps=1),
            progress=False,
        )
    # an absurd learning rate blows the weights up after the first step
    with pytest.raises(NonFiniteLossError, match=r"at step [1-9]"):
        train_world_model(
            small_config(),
            episodes,
            WorldModelTrainConfig(steps=5, batch_size=4, lr=1e30, warmup_steps=1),
            progress=False,
        )


# ------------------------------------------------------------------------------------ rollouts


def test_closed_loop_rollout_40_steps_batch_3(episodes):
    model = ActionConditionedWorldModel(small_config())
    init = np.random.default_rng(0).integers(
        0, 256, (3, 256, 256, 3), dtype=np.uint8
    )  # station size
    actions = torch.from_numpy(np.stack([ep.actions[:20] for ep in episodes[:3]])).repeat(
        1, 2, 1
    )  # (3, 40, 7)
    state = model.start(init)
    assert state.context.shape == (3, 2, 3, 32, 32)
    chunks, g = [], torch.Generator().manual_seed(0)
    for k in range(0, 40, 5):  # 8 policy calls x 5 actions, as GRPO does
        state, frames = model.imagine(state, actions[:, k : k + 5], generator=g)
        chunks.append(frames)
    frames = torch.cat(chunks, dim=1)
    assert frames.shape == (3, 40, 32, 32, 3) and frames.dtype == torch.uint8
    assert state.step == 40 and bool(state.context_known.all())
    assert torch.equal(frames, rollout_frames(model, init, actions))  # chunked == one call
    with pytest.raises(ValueError, match=r"actions must be \(B=3, K, 7\)"):
        model.imagine(state, torch.zeros(2, 5, 7))
    with pytest.raises(ValueError, match="frames must be"):
        model.start(np.zeros((3, 64, 64, 3), np.float32))


def test_an_anchored_model_keeps_the_real_first_frame_in_its_own_slot(episodes):
    """``anchor_first_frame``: every training window and every imagined step also sees frame 0."""
    from world_model.data import WindowDataset

    cfg = small_config(anchor_first_frame=True)
    assert cfg.context_slots == 3 and cfg.architecture()["anchor_first_frame"]
    model = ActionConditionedWorldModel(cfg)
    data = WindowDataset(episodes[:1], model.codec, cfg.image_size, 2, 7, anchor=True)
    late = data.batch(torch.tensor([10]))  # transition 10: frames 0, 9, 10 -> 11
    first = model.codec.from_cache(data.cache[:1])
    assert torch.equal(late["context"][0, 0], first[0])
    assert late["context_known"].tolist() == [[False, True, True]]
    assert torch.equal(late["context_actions"][0, 1], torch.from_numpy(episodes[0].actions[8]))
    init = np.stack([ep.frames[0] for ep in episodes[:2]])
    state = model.start(init)
    start = state.context[:, 0].clone()
    state, frames = model.imagine(
        state, torch.from_numpy(np.stack([ep.actions[:6] for ep in episodes[:2]]))
    )
    assert state.context.shape == (2, 3, 3, 32, 32) and frames.shape == (2, 6, 32, 32, 3)
    assert torch.equal(state.context[:, 0], start)  # the anchor never rolls out of the window
    assert state.context_known.tolist() == [[False, True, True]] * 2
    trained, _ = train_world_model(
        model, episodes, WorldModelTrainConfig(steps=2, batch_size=8), progress=False
    )
    assert trained.config.anchor_first_frame


def test_own_context_replaces_the_newest_frame_by_the_models_sample_of_it(episodes):
    """``own_context_prob``: a chosen window's newest context frame is what the model samples from
    the window before; an episode's first window (no frame before) and unchosen ones keep theirs."""
    from world_model.data import WindowDataset
    from world_model.train import own_context

    with pytest.raises(ValueError, match="own_context_prob: expected in"):
        small_config(own_context_prob=1.5)
    model = ActionConditionedWorldModel(small_config(own_context_prob=1.0))
    data = WindowDataset.for_model(episodes[:2], model)
    idx = torch.tensor([0, 5, 24, 30])  # episode 0 t=0 and 5; episode 1 t=0 and 6
    batch = data.batch(idx)
    mixed = own_context(model, data, idx, batch, torch.Generator().manual_seed(3))
    assert torch.equal(mixed[[0, 2]], batch["context"][[0, 2]])  # episodes' first windows
    assert torch.equal(mixed[[1, 3], :-1], batch["context"][[1, 3], :-1])  # older frames as are
    prev = data.batch(idx[[1, 3]] - 1)
    # the same draw: the generator first picks windows, then samples (one rand call of 4)
    g = torch.Generator().manual_seed(3)
    torch.rand(4, generator=g)
    sampled = model.sample_next(
        prev["context"], prev["context_actions"], prev["context_known"], prev["action"],
        generator=g,
    )  # fmt: skip
    assert torch.equal(mixed[[1, 3], -1], sampled)
    assert not torch.equal(mixed[[1, 3], -1], batch["context"][[1, 3], -1])
    model.config.own_context_prob = 0.5
    half = own_context(model, data, torch.arange(1, 24), data.batch(torch.arange(1, 24)),
                       torch.Generator().manual_seed(0))  # fmt: skip
    replaced = (half[:, -1] != data.batch(torch.arange(1, 24))["context"][:, -1]).flatten(1)
    assert 0 < int(replaced.any(1).sum()) < 23
    trained, metrics = train_world_model(
        model, episodes, WorldModelTrainConfig(steps=2, batch_size=8), progress=False
    )
    assert np.isfinite(metrics["final_loss"]) and trained.training is False


def test_own_context_steps_roll_the_newest_frames_open_loop(episodes):
    """``own_context_steps`` 2: a window two steps into its episode, rolled back to its start, gets
    exactly the model's open-loop rollout from the episode's first frame; a window one step in
    can roll one step only, and the first window none."""
    from world_model.data import WindowDataset
    from world_model.train import own_context

    with pytest.raises(
        ValueError, match="own_context_steps: expected in \\[1, context_frames=2\\]"
    ):
        small_config(own_context_steps=3)
    model = ActionConditionedWorldModel(small_config(own_context_prob=1.0, own_context_steps=2))
    data = WindowDataset.for_model(episodes[:2], model)

    def draws(seed, n):  # own_context's draws: which windows, then each one's depth
        g = torch.Generator().manual_seed(seed)
        torch.rand(n, generator=g)
        return g, 1 + (torch.rand(n, generator=g) * 2).long()

    seed = next(s for s in range(100) if draws(s, 2)[1].tolist() == [2, 2])
    idx = torch.tensor([2, 26])  # each episode's third window: context frames 1 and 2
    mixed = own_context(model, data, idx, data.batch(idx), torch.Generator().manual_seed(seed))
    g, _ = draws(seed, 2)
    first = np.stack([episodes[0].frames[0], episodes[1].frames[0]])
    actions = torch.from_numpy(np.stack([episodes[0].actions[:2], episodes[1].actions[:2]]))
    state, _ = model.imagine(model.start(first), actions, generator=g)
    assert torch.allclose(mixed, state.context, atol=1e-6)

    idx = torch.arange(0, 24)  # episode 0: every window
    real = data.batch(idx)["context"]
    mixed = own_context(model, data, idx, data.batch(idx), torch.Generator().manual_seed(0))
    changed = (mixed != real).flatten(2).any(2)  # (24, 2): which context frames were replaced
    assert not changed[0].any() and changed[1].tolist() == [False, True]
    assert changed[1:, -1].all()
    assert 0 < int(changed[2:, 0].sum()) < 22  # both depths drawn


@pytest.mark.slow
def test_learns_action_conditioning():
    train = [square_episode(i) for i in range(8)]
    held_out = [square_episode(100 + i) for i in range(4)]
    cfg = small_config(num_inference_steps=4, guidance_scale=1.0)
    # ~30 s on one busy core; the loss breaks away from "copy the last frame" after ~150 steps
    model, metrics = train_world_model(
        cfg, train, WorldModelTrainConfig(steps=250, batch_size=16, lr=3e-3), progress=False
    )
    assert np.mean(metrics["loss"][-20:]) < np.mean(metrics["loss"][:20])
    err = next_frame_error(model, held_out, max_windows=64, shuffle_actions=True)
    assert err["mse"] < 0.8 * err["shuffled_mse"], err
    assert err["mse"] < err["copy_mse"], err  # better than "nothing moves"


# ------------------------------------------------------------------------------------ evaluation


def test_open_loop_rollouts_use_episodes_as_long_as_the_horizon_before_short_ones(episodes):
    """A quick success among the held-out episodes must not cut every rollout to its length."""
    model = ActionConditionedWorldModel(small_config())
    long = episodes[0]
    short = dataclasses.replace(long, frames=long.frames[:4], actions=long.actions[:3])
    ro = rollout_error(model, [short, long, long], horizon=6, max_episodes=2)
    assert (ro["horizon"], ro["episodes"]) == (6, 2)  # the two long ones
    # too few long ones: the short one joins, and the horizon is cut to it
    assert rollout_error(model, [short, long], horizon=6, max_episodes=2)["horizon"] == 3


def test_evaluation_and_side_by_side_video(tmp_path, episodes):
    import av

    model = ActionConditionedWorldModel(small_config())
    ro = rollout_error(model, episodes[:2], horizon=6)
    assert ro["horizon"] == 6 and len(ro["mse"]) == 6 and ro["imagined"].shape == (2, 6, 32, 32, 3)
    assert np.allclose(ro["real"][0], episodes[0].frames[1:7])  # 32 px episodes: no resize
    metrics = evaluate_world_model(model, episodes[:2], horizon=4, max_windows=8)
    assert len(metrics["rollout_mse_per_step"]) == 4 and metrics["next_frame_windows"] == 8
    assert all(np.isfinite(v) for v in metrics["rollout_mse_per_step"])
    # the copy-first-frame baseline repeats the real initial frame: by hand, step k compares
    # frames[0] with frames[k] of each episode
    frames = [np.asarray(e.frames[:7], np.float64) / 255 for e in episodes[:2]]
    by_hand = [
        10 * np.log10(1 / np.mean([np.mean((f[0] - f[k]) ** 2) for f in frames]))
        for k in range(1, 7)
    ]
    np.testing.assert_allclose(ro["copy_first_psnr"], by_hand, rtol=1e-5)
    lead = [p - c for p, c in zip(metrics["rollout_psnr_per_step"], by_hand[:4], strict=True)]
    assert metrics["rollout_psnr_over_copy_first_min_db"] == pytest.approx(min(lead), rel=1e-5)
    mp4 = write_side_by_side_video(ro["real"][0], ro["imagined"][0], tmp_path / "side.mp4", scale=2)
    with av.open(str(mp4)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (64, 132, 3)  # (32 | 2 | 32) x 2
    gif = write_side_by_side_video(ro["real"][0], ro["imagined"][0], tmp_path / "side.gif")
    assert gif.stat().st_size > 0
    with pytest.raises(ValueError, match="one shape"):
        write_side_by_side_video(ro["real"][0], ro["imagined"][0][:3], tmp_path / "bad.mp4")


# ------------------------------------------------------------------------------------ large preset


def test_large_preset_loads_local_vae_and_runs(tmp_path, episodes):
    vae_dir = tiny_sd3_style_vae(tmp_path / "sd3_vae")
    shrink = dict(
        image_size=32,
        vae_downsample=2,
        dit_width=32,
        dit_heads=2,
        dit_layers=1,
        context_frames=3,
        num_inference_steps=2,
    )
    with pytest.raises(ValueError, match="needs vae_path"):
        ActionConditionedWorldModel(WorldModelConfig.from_preset("large", **shrink))
    with pytest.raises(ValueError, match="vae_downsample=2, but the world-model config expects 8"):
        ActionConditionedWorldModel(
            WorldModelConfig.from_preset("large", vae_path=str(vae_dir), image_size=32)
        )
    cfg = WorldModelConfig.from_preset("large", vae_path=str(vae_dir), **shrink)
    model, metrics = train_world_model(
        cfg, episodes, WorldModelTrainConfig(steps=2, batch_size=4), progress=False
    )
    assert np.isfinite(metrics["loss"]).all()
    assert model.num_parameters(trainable_only=False) > model.num_parameters()  # the VAE is frozen
    init = np.stack([episodes[0].frames[0], episodes[1].frames[0]])
    actions = torch.from_numpy(np.stack([episodes[0].actions[:3], episodes[1].actions[:3]]))
    frames = rollout_frames(model, init, actions)
    assert frames.shape == (2, 3, 32, 32, 3) and frames.dtype == torch.uint8
    model.save_pretrained(tmp_path / "large")
    assert (
        tmp_path / "large" / "vae" / "config.json"
    ).is_file()  # the checkpoint is self-contained
    assert not any(
        k.startswith("codec.")
        for k in load_file(tmp_path / "large" / "diffusion_pytorch_model.safetensors")
    )
    loaded = ActionConditionedWorldModel.from_pretrained(tmp_path / "large")
    assert torch.equal(rollout_frames(loaded, init, actions), frames)
