"""The VLA policy: action tokens, save/load, sampling semantics, SFT, station loading, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from config_convention import assert_follows_the_config_convention
from small_models import SMALL_VLA, SyntheticEpisode

from policy.augment import AugmentConfig, add_distractors, augment_images
from policy.config import VLAConfig
from policy.sft import SFTConfig, chunk_actions, train_sft
from policy.tokenization import ActionTokenizer
from policy.vla import CheckpointError, VLAPolicy
from robot_bridge.backends.base import Observation
from robot_bridge.policies import PolicyLoadError, load_policy, read_policy_config
from robot_bridge.spec import AUTOEVAL_TASKS, TASKS

INSTRUCTIONS = [TASKS[t].instruction for t in AUTOEVAL_TASKS]  # a batch of four
SMALL = SMALL_VLA


@pytest.fixture(scope="module")
def tiny() -> VLAPolicy:
    return VLAPolicy.build(VLAConfig.from_preset("tiny"))


def frames(b: int, seed: int = 0, size: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, size, size, 3), dtype=np.uint8)


# ----- action tokenizer ---------------------------------------------------------------------
def test_action_tokenizer_round_trip_within_half_bin_and_clips():
    rng = np.random.default_rng(0)
    train = rng.normal(0, 0.02, (2000, 7)).astype(np.float32)
    train[:, 3:6] = 0.0  # a dimension the data never moves
    train[:, 6] = rng.integers(0, 2, 2000)
    tok = ActionTokenizer.from_actions(train, token_start=1000)
    a = np.clip(rng.normal(0, 0.02, (4, 5, 7)), tok.q01, tok.q99).astype(np.float32)
    ids = tok.encode(a)
    assert ids.shape == (4, 35) and ids.min() >= 1000 and ids.max() < 1256
    back = tok.decode(ids)
    assert back.shape == (4, 5, 7) and back.dtype == np.float32
    assert np.all(np.abs(back - a) <= tok.bin_width / 2 + 1e-6)
    # Outside [q01, q99] clips to the edge bins.
    far = np.full((1, 1, 7), 10.0, dtype=np.float32)
    assert np.all(tok.encode(far) == 1255)
    assert np.all(tok.encode(-far) == 1000)
    assert np.allclose(tok.decode(tok.encode(far))[0, 0], tok.q99, atol=tok.bin_width.max())
    # The constant dimension decodes back to its constant.
    assert np.allclose(back[..., 3:6], 0.0, atol=1e-4)
    # Stats survive the checkpoint dict.
    again = ActionTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())), token_start=1000)
    assert np.array_equal(again.encode(a), ids)
    with pytest.raises(ValueError, match="NaN"):
        ActionTokenizer.from_actions(np.full((3, 7), np.nan), token_start=0)


def test_chunk_padding_holds_gripper_and_stops():
    actions = np.arange(3 * 7, dtype=np.float32).reshape(3, 7)
    chunks = chunk_actions(actions, 5)
    assert chunks.shape == (3, 5, 7)
    assert np.array_equal(chunks[0, :3], actions)
    assert np.array_equal(chunks[2, 1], [0, 0, 0, 0, 0, 0, actions[-1, 6]])


# ----- build / save / load ------------------------------------------------------------------
def test_tiny_builds_saves_and_reloads_offline_with_identical_log_probs(tiny, tmp_path):
    # how fast: pipeline/bench/tiny_build.py (a timed assertion here would flake under load)
    policy = VLAPolicy.build(VLAConfig.from_preset("tiny"))
    policy.save_pretrained(tmp_path / "ckpt1")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt1")
    config = json.loads((tmp_path / "ckpt1" / "config.json").read_text())
    assert config["policy_type"] == "vla" and config["model_type"] == "paligemma"
    meta = json.loads((tmp_path / "ckpt1" / "gymnast_vla.json").read_text())
    assert meta["format_version"] == 2 and meta["preset"] == "tiny"
    assert len(meta["action_stats"]["q01"]) == 7
    imgs, ins = frames(3), INSTRUCTIONS[:3]
    s = policy.sample(imgs, ins, generator=torch.Generator().manual_seed(0))
    assert torch.equal(policy.log_probs(imgs, ins, s.tokens), loaded.log_probs(imgs, ins, s.tokens))
    names = loaded.processor.tokenizer.convert_ids_to_tokens(
        [loaded.action_token_start, loaded.action_token_start + 255]
    )
    assert names == ["<act_0>", "<act_255>"]
    assert loaded.action_token_start + 256 == loaded.processor.tokenizer.vocab_size  # last 256 ids


def _inputs(policy: VLAPolicy, imgs: np.ndarray, ins: list[str]) -> dict:
    ids, mask = policy.text_inputs(ins)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": policy.pixel_values(imgs),
        "position_ids": mask.cumsum(-1).clamp(min=1),
    }


def test_checkpoint_is_a_transformers_model_directory(tiny, tmp_path, capfd):
    """transformers' own class loads our directory as the model, silently, with equal logits;
    the action-head metadata sits beside it in gymnast_vla.json."""
    from transformers import AutoModelForImageTextToText, PaliGemmaForConditionalGeneration

    from robot_bridge.checkpoints import refuse_code

    d = tiny.save_pretrained(tmp_path / "ckpt", station_temperature=0.5)
    refuse_code(d)  # still data only: no auto_map, no code
    capfd.readouterr()
    hf, info = PaliGemmaForConditionalGeneration.from_pretrained(d, output_loading_info=True)
    assert info == {
        "missing_keys": [],
        "unexpected_keys": [],
        "mismatched_keys": [],
        "error_msgs": [],
    }
    err = capfd.readouterr().err
    assert (
        "policy_type" not in err and "were not used" not in err and "newly initialized" not in err
    )
    assert hf.config.policy_type == "vla"  # the extra key rides along as an attribute
    assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()  # tied
    imgs, ins = frames(2, seed=5), INSTRUCTIONS[:2]
    kwargs = _inputs(tiny, imgs, ins)
    with torch.no_grad():
        ours = tiny.model.eval()(**kwargs).logits
        assert torch.equal(hf.eval()(**kwargs).logits, ours)
        auto = AutoModelForImageTextToText.from_pretrained(d).eval()
        assert torch.equal(auto(**kwargs).logits, ours)
    meta = json.loads((d / "gymnast_vla.json").read_text())
    assert meta["policy_type"] == "vla" and meta["config"]["n_bins"] == 256
    assert meta["action_stats"] == tiny.action_tokenizer.to_dict()
    assert meta["query_token_ids"] == tiny.query_token_ids and meta["station_temperature"] == 0.5
    assert not {"config", "action_stats", "model_config"} & set(
        json.loads((d / "config.json").read_text())
    )
    # Our loader reads both files; a model transformers saved over ours loads back too.
    loaded = VLAPolicy.from_pretrained(d)
    assert loaded.station_temperature == 0.5
    s = tiny.sample(imgs, ins, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.log_probs(imgs, ins, s.tokens), tiny.log_probs(imgs, ins, s.tokens))
    hf.save_pretrained(d)  # config.json and weights as transformers writes them (policy_type kept)
    again = VLAPolicy.from_pretrained(d)
    assert torch.equal(again.log_probs(imgs, ins, s.tokens), tiny.log_probs(imgs, ins, s.tokens))


def _to_format_1(d):
    """Rewrite a checkpoint in the format-1 layout (what save_pretrained wrote before)."""
    hf = json.loads((d / "config.json").read_text())
    meta = json.loads((d / "gymnast_vla.json").read_text())
    hf.pop("policy_type")
    hf.pop("architectures")
    old = {**meta, "format_version": 1, "model_config": hf}
    (d / "config.json").write_text(json.dumps(old, indent=2))
    (d / "gymnast_vla.json").unlink()
    (d / "generation_config.json").unlink()
    return d


def test_format_1_checkpoints_still_load_and_resave_in_format_2(tiny, tmp_path):
    d = _to_format_1(tiny.save_pretrained(tmp_path / "old", station_temperature=1.2))
    assert json.loads((d / "config.json").read_text())["model_config"]["model_type"] == "paligemma"
    old = VLAPolicy.from_pretrained(d)
    assert old.station_temperature == 1.2 and old.query_token_ids == tiny.query_token_ids
    imgs, ins = frames(2, seed=6), INSTRUCTIONS[:2]
    s = tiny.sample(imgs, ins, generator=torch.Generator().manual_seed(2))
    assert torch.equal(old.log_probs(imgs, ins, s.tokens), tiny.log_probs(imgs, ins, s.tokens))
    station = load_policy(d)  # what a station holding an old checkpoint does
    assert station.temperature == 1.2
    new = old.save_pretrained(tmp_path / "new")
    hf_config = json.loads((new / "config.json").read_text())
    assert hf_config["policy_type"] == "vla" and "format_version" not in hf_config
    assert json.loads((new / "gymnast_vla.json").read_text())["format_version"] == 2
    again = VLAPolicy.from_pretrained(new)
    assert torch.equal(again.log_probs(imgs, ins, s.tokens), tiny.log_probs(imgs, ins, s.tokens))
    # A config.json that is neither layout is refused by name.
    (new / "gymnast_vla.json").unlink()
    with pytest.raises(CheckpointError, match="no gymnast_vla.json.*format_version None"):
        VLAPolicy.from_pretrained(new)


def test_format_2_config_naming_remote_code_is_refused_by_both_loaders(tiny, tmp_path):
    """auto_map now sits at the top of config.json (the transformers config), base_model_path in
    gymnast_vla.json: our loader refuses without trust_remote_code, the station refuses the file."""
    d = tiny.save_pretrained(tmp_path / "ckpt")
    hf_config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(
        json.dumps({**hf_config, "auto_map": {"AutoConfig": "evil.EvilConfig"}})
    )
    meta = json.loads((d / "gymnast_vla.json").read_text())
    (d / "gymnast_vla.json").write_text(json.dumps({**meta, "base_model_path": str(tmp_path)}))
    with pytest.raises(CheckpointError, match="remote code"):
        VLAPolicy.from_pretrained(d, trust_remote_code=False)
    with pytest.raises(CheckpointError, match="remote code"):
        VLAPolicy.from_pretrained(d)
    with pytest.raises(PolicyLoadError, match="refused file 'config.json'.*auto_map"):
        load_policy(d)


def test_from_local_path_loads_a_transformers_checkpoint(tiny, tmp_path):
    """The large preset's loader, exercised on a tiny PaliGemma saved in plain HF format."""
    tiny.model.save_pretrained(tmp_path / "hf")
    tiny.processor.save_pretrained(tmp_path / "hf")
    cfg = VLAConfig.from_preset(
        "large", model_path=str(tmp_path / "hf"), query_tokens="slots", torch_dtype="float32"
    )
    big = VLAPolicy.from_local_path(tmp_path / "hf", tiny.action_tokenizer, cfg)
    assert type(big.model).__name__ == "PaliGemmaForConditionalGeneration"
    imgs, ins = frames(2), INSTRUCTIONS[:2]
    s = tiny.sample(imgs, ins, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(big.log_probs(imgs, ins, s.tokens), s.logprobs, atol=1e-5)
    # OpenVLA-OFT style empty placeholders also run, and the result round-trips our format.
    pad = VLAPolicy.from_local_path(
        tmp_path / "hf",
        tiny.action_tokenizer,
        VLAConfig.from_preset("large", model_path=str(tmp_path / "hf"), torch_dtype="float32"),
    )
    assert pad.query_token_ids == [pad.processor.tokenizer.pad_token_id] * 35
    pad.save_pretrained(tmp_path / "ours")
    again = VLAPolicy.from_pretrained(tmp_path / "ours")
    assert again.base_model_path == str(tmp_path / "hf")
    assert torch.equal(
        again.log_probs(imgs, ins, s.tokens, 1.0), pad.log_probs(imgs, ins, s.tokens, 1.0)
    )


# ----- sampling semantics -------------------------------------------------------------------
def test_sample_shapes_ranges_and_greedy_is_deterministic(tiny):
    imgs = frames(4)
    s = tiny.sample(imgs, INSTRUCTIONS, generator=torch.Generator().manual_seed(0))
    assert s.actions.shape == (4, 5, 7) and s.actions.dtype == np.float32
    assert s.tokens.shape == (4, 35) and s.tokens.dtype == torch.long
    assert s.logprobs.shape == (4, 35) and torch.all(s.logprobs <= 0)
    start = tiny.action_token_start
    assert s.tokens.min() >= start and s.tokens.max() < start + 256
    tok = tiny.action_tokenizer
    assert np.all(s.actions >= tok.q01 - 1e-6) and np.all(s.actions <= tok.q99 + 1e-6)
    g1 = tiny.sample(imgs, INSTRUCTIONS, greedy=True)
    g2 = tiny.sample(torch.from_numpy(imgs), INSTRUCTIONS, temperature=0)
    assert torch.equal(g1.tokens, g2.tokens) and np.array_equal(g1.actions, g2.actions)
    # Same generator seed, same sample; temperature 1.6 samples differ from greedy.
    s2 = tiny.sample(imgs, INSTRUCTIONS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.tokens, s2.tokens)
    assert not torch.equal(s.tokens, g1.tokens)


def test_log_probs_reproduce_sampling_log_probs_and_ignore_batch_padding(tiny):
    imgs, ins = frames(4, seed=3), INSTRUCTIONS
    s = tiny.sample(imgs, ins, temperature=1.6, generator=torch.Generator().manual_seed(0))
    stats = tiny.token_stats(imgs, ins, s.tokens, temperature=1.6)
    assert stats.logprobs.requires_grad
    assert torch.allclose(stats.logprobs, s.logprobs, atol=1e-5)
    assert torch.all(stats.entropy > 0) and torch.all(stats.entropy <= np.log(256) + 1e-4)
    # Alone (no left padding from longer instructions) the log-probs are the same.
    alone = tiny.log_probs(imgs[:1], ins[:1], s.tokens[:1], temperature=1.6)
    assert torch.allclose(alone, s.logprobs[:1], atol=1e-5)
    # Another temperature is another distribution.
    assert not torch.allclose(tiny.log_probs(imgs, ins, s.tokens, temperature=1.0), s.logprobs)
    # Greedy samples report log-probs at temperature 1.
    g = tiny.sample(imgs, ins, greedy=True)
    assert torch.allclose(
        tiny.log_probs(imgs, ins, g.tokens, temperature=1.0), g.logprobs, atol=1e-5
    )


def test_one_optimizer_step_changes_every_trainable_parameter():
    policy = VLAPolicy.build(VLAConfig.from_preset("tiny", **SMALL))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)  # no weight decay: only gradients move
    s = policy.sample(frames(4), INSTRUCTIONS, generator=torch.Generator().manual_seed(0))
    loss = -policy.log_probs(frames(4), INSTRUCTIONS, s.tokens).mean()
    loss.backward()
    opt.step()
    unchanged = [n for n, p in policy.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"


# ----- SFT -----------------------------------------------------------------------------------
def _synthetic_episodes(n: int, steps: int, seed: int) -> list[SyntheticEpisode]:
    """dx follows the colour of a square in the image, dy and the gripper follow the instruction."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(n):
        red, k = bool(rng.integers(2)), int(rng.integers(2))
        imgs = np.full((steps + 1, 256, 256, 3), 100, dtype=np.uint8)
        for f in imgs:
            y, x = rng.integers(0, 160, size=2)
            f[y : y + 96, x : x + 96] = (220, 30, 30) if red else (30, 30, 220)
        actions = np.zeros((steps, 7), dtype=np.float32)
        actions[:, 0] = 0.04 if red else -0.04
        actions[:, 1] = 0.04 if k == 0 else -0.04
        actions[:, 6] = 1.0 if k == 0 else 0.0
        episodes.append(SyntheticEpisode(imgs, actions, INSTRUCTIONS[k]))
    return episodes


def _greedy_sign_accuracy(
    policy: VLAPolicy, episodes: list[SyntheticEpisode]
) -> tuple[float, float]:
    s = policy.sample(
        np.stack([e.frames[0] for e in episodes]), [e.instruction for e in episodes], greedy=True
    )
    want = np.stack([e.actions[0] for e in episodes])
    dx = float(np.mean(np.sign(s.actions[:, 0, 0]) == np.sign(want[:, 0])))
    dy = float(np.mean(np.sign(s.actions[:, 0, 1]) == np.sign(want[:, 1])))
    return dx, dy


def test_sft_reduces_loss_and_reports_metrics():
    """final_loss / initial_loss (means of the last and first 5 steps) is a learned figure.

    Measured on a 2-core Intel Xeon (AVX-512), SFT seeds 0-7 x 1 thread and 0-4 x 2 threads
    (13 runs; a seed or thread count changes the float path as another CPU does): min 0.225 /
    median 0.229 / max 0.233, about 0.003 std; other init seeds (1-4, a bigger change than a
    CPU's) reach 0.250, the old bar. Bar 0.3: 0.07 (over 20 std) above the worst seed / thread
    run, 0.05 above the worst init. An optimizer that does not learn stays near 1.0 (untrained:
    the initial loss, ~2.73, ln 256 = 5.55 for a uniform guess over the 256 bins one-hot).
    """
    train = _synthetic_episodes(16, 4, seed=0)
    policy, metrics = train_sft(
        VLAConfig.from_preset("tiny", **SMALL),
        train,
        SFTConfig(steps=25, batch_size=16, lr=3e-3, seed=0),
        progress=False,
    )
    assert metrics["final_loss"] < 0.3 * metrics["initial_loss"], (
        metrics["initial_loss"],
        metrics["final_loss"],
    )
    assert (
        len(metrics["loss"]) == 25 and metrics["steps_per_s"] > 0 and metrics["num_windows"] == 64
    )
    assert np.allclose(policy.action_tokenizer.q01[[0, 1, 6]], [-0.04, -0.04, 0.0])
    assert not policy.training


def test_sft_keeping_policies_saves_the_earlier_ones_and_trains_the_same_policy(tmp_path):
    """SFT+select checks the policies SFT's own run kept: keeping them must not change SFT."""
    from policy.sft import keep_steps, train_sft_keeping

    train = _synthetic_episodes(4, 4, seed=0)
    cfg = SFTConfig(steps=6, batch_size=8, seed=0)
    plain, _ = train_sft(VLAConfig.from_preset("tiny", **SMALL), train, cfg, progress=False)
    kept, _ = train_sft_keeping(
        VLAConfig.from_preset("tiny", **SMALL), train, cfg, 3, tmp_path / "snaps", progress=False
    )
    assert keep_steps(6, 3) == [2, 4, 6]
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == ["step_0002", "step_0004"]
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), kept.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    early = VLAPolicy.from_pretrained(tmp_path / "snaps" / "step_0002")
    assert any(
        not torch.equal(a, b)
        for a, b in zip(early.state_dict().values(), kept.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="policies to keep must be in"):
        keep_steps(6, 7)


@pytest.mark.slow
def test_sft_learns_image_and_instruction_dependent_actions():
    train = _synthetic_episodes(32, 6, seed=0)
    policy, _ = train_sft(
        VLAConfig.from_preset("tiny", **SMALL),
        train,
        SFTConfig(steps=300, batch_size=16, lr=3e-3, seed=0),
        progress=False,
    )
    dx_right, dy_right = _greedy_sign_accuracy(policy, _synthetic_episodes(48, 1, seed=1))
    assert dx_right >= 0.8, f"image-dependent dx right {dx_right:.2f} (chance 0.5)"
    assert dy_right >= 0.8, f"instruction-dependent dy right {dy_right:.2f} (chance 0.5)"


def test_balanced_sft_draws_each_instruction_alike_however_many_windows_it_has():
    """``balance_instructions``: 90 windows of one instruction and 10 of another are drawn about
    half and half; without it, about 9 to 1. A one-step run takes the balanced path."""
    from policy.sft import SFTWindows, _Trainer

    windows = SFTWindows(
        np.zeros((100, 8, 8, 3), np.uint8), ["open"] * 90 + ["sink"] * 10, np.zeros((100, 1, 7))
    )

    def share_of_sink(balance: bool) -> float:
        trainer = _Trainer(
            None, windows, None, SFTConfig(balance_instructions=balance), None, None, "fp32",
            np.random.default_rng(0), [], None, None,
        )  # fmt: skip
        idx = trainer.draw_batch(4000)
        assert idx.min() >= 0 and idx.max() < 100
        return float(np.mean(idx >= 90))

    assert 0.45 < share_of_sink(True) < 0.55
    assert 0.07 < share_of_sink(False) < 0.13
    _, metrics = train_sft(
        VLAConfig.from_preset("tiny", **SMALL),
        _synthetic_episodes(3, 2, seed=0),
        SFTConfig(steps=1, batch_size=4, balance_instructions=True),
        progress=False,
    )
    assert np.isfinite(metrics["final_loss"])


def test_sft_refuses_empty_data_and_nan_loss():
    cfg = VLAConfig.from_preset("tiny", **SMALL)
    with pytest.raises(ValueError, match="empty"):
        train_sft(cfg, [], SFTConfig(steps=1), progress=False)
    empty = SyntheticEpisode(np.zeros((1, 32, 32, 3), np.uint8), np.zeros((0, 7), np.float32))
    with pytest.raises(ValueError, match="no.*actions|has any actions"):
        train_sft(cfg, [empty], SFTConfig(steps=1), progress=False)
    policy = VLAPolicy.build(cfg)
    with torch.no_grad():
        next(policy.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train_sft(
            policy,
            _synthetic_episodes(2, 2, seed=0),
            SFTConfig(steps=2, batch_size=2),
            progress=False,
        )


# ----- augmentation --------------------------------------------------------------------------
def test_distractors_and_augmentations_keep_frames_valid():
    rng = np.random.default_rng(0)
    imgs = np.full((4, 64, 64, 3), 100, dtype=np.uint8)
    out = add_distractors(imgs, rng)
    assert out.shape == imgs.shape and out.dtype == np.uint8
    assert all((out[i] != imgs[i]).any() for i in range(4))
    assert np.all(imgs == 100)  # input untouched
    aug = augment_images(imgs, AugmentConfig(distractor_prob=1.0), rng)
    assert aug.shape == imgs.shape and aug.dtype == np.uint8
    with pytest.raises(ValueError, match="uint8"):
        add_distractors(imgs.astype(np.float32), rng)
    with pytest.raises(ValueError, match="distractor_prob"):
        AugmentConfig(distractor_prob=2.0)


# ----- station --------------------------------------------------------------------------------
def test_station_loads_vla_checkpoint_and_acts(tiny, tmp_path, monkeypatch):
    tiny.save_pretrained(tmp_path / "vla")
    assert read_policy_config(tmp_path / "vla")["policy_type"] == "vla"
    policy = load_policy(tmp_path / "vla")
    assert type(policy).__name__ == "VLAStationPolicy" and policy.temperature == 0.0
    obs = Observation(image=frames(1)[0], state=np.zeros(7, np.float32), timestamp=0.0, seq=0)
    policy.reset("open_drawer", "open the drawer", seed=0)
    chunk = policy.act(obs, "open the drawer")
    assert chunk.shape == (5, 7) and chunk.dtype == np.float32 and np.all(np.isfinite(chunk))
    assert np.array_equal(chunk, policy.act(obs, "open the drawer"))  # greedy
    monkeypatch.setenv("GYMNAST_VLA_TEMPERATURE", "1.6")
    sampling = load_policy(tmp_path / "vla")
    assert sampling.temperature == 1.6
    sampling.reset("open_drawer", "open the drawer", seed=7)
    a = sampling.act(obs, "open the drawer")
    sampling.reset("open_drawer", "open the drawer", seed=7)
    assert np.array_equal(a, sampling.act(obs, "open the drawer"))  # seeded
    monkeypatch.delenv("GYMNAST_VLA_TEMPERATURE")
    # The checkpoint's own setting: gymnast_vla.json's, and config.json's (which a pipeline
    # copy for an exploration job writes) over it.
    tiny.save_pretrained(tmp_path / "warm", station_temperature=0.7)
    assert load_policy(tmp_path / "warm").temperature == 0.7
    hf_config = json.loads((tmp_path / "warm" / "config.json").read_text())
    (tmp_path / "warm" / "config.json").write_text(
        json.dumps({**hf_config, "station_temperature": 1.3})
    )
    assert load_policy(tmp_path / "warm").temperature == 1.3


# ----- errors -----------------------------------------------------------------------------------
def test_bad_inputs_are_refused_clearly(tiny):
    chw = torch.rand(2, 3, 256, 256)
    with pytest.raises(ValueError, match=r"uint8 \(B, H, W, 3\).*channels-first"):
        tiny.sample(chw, INSTRUCTIONS[:2])
    with pytest.raises(ValueError, match="uint8"):
        tiny.sample(frames(2).astype(np.float32), INSTRUCTIONS[:2])
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        tiny.sample(frames(2), INSTRUCTIONS[:1])
    with pytest.raises(ValueError, match="action ids"):
        tiny.log_probs(frames(1), INSTRUCTIONS[:1], torch.zeros(1, 35, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, 35\) long"):
        tiny.log_probs(frames(1), INSTRUCTIONS[:1], torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(
        ValueError, match="unknown VLAConfig preset 'huge'; valid presets: tiny, large"
    ):
        VLAConfig.from_preset("huge")
    with pytest.raises(ValueError, match="needs model_path"):
        VLAConfig.from_preset("large")


def test_bad_checkpoints_are_refused_clearly(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tiny.save_pretrained(tmp_path / "ok")
    weights = load_file(str(d / "model.safetensors"))
    name = "model.multi_modal_projector.linear.weight"
    broken = {k: v for k, v in weights.items() if k != name}
    broken["model.vision_tower.vision_model.post_layernorm.weight"] = torch.ones(3)
    save_file(broken, str(d / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=rf"1 missing tensor\(s\): {name}.*shape-mismatched.*post_layernorm"
    ):
        VLAPolicy.from_pretrained(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        VLAPolicy.from_pretrained(d)
    meta = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**meta, "policy_type": "random"}))
    with pytest.raises(CheckpointError, match="expected 'vla'"):
        VLAPolicy.from_pretrained(d)
    with pytest.raises(CheckpointError, match="no config.json"):
        VLAPolicy.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text(json.dumps({"policy_type": "nope"}))
    with pytest.raises(PolicyLoadError, match="valid types"):
        load_policy(tmp_path / "junk")


# ----- closed-loop simulator evaluation ---------------------------------------------------------
class _Replay:
    """Plays back recorded actions in chunks of 5, whatever the image (a ChunkSampler)."""

    def __init__(self, actions: np.ndarray) -> None:
        self.actions, self.t = actions, 0

    def sample(self, images, instructions, **kwargs):
        chunk = self.actions[self.t : self.t + 5]
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], 5 - len(chunk), axis=0)])
        self.t += 5
        return type("S", (), {"actions": chunk[None]})()


def test_expert_demonstrations_replay_to_success_in_the_closed_loop_evaluator():
    from policy.evaluate_sim import collect_demonstrations, evaluate_in_sim

    (demo,) = collect_demonstrations(["close_drawer"], 1, seed=7)
    t = len(demo.actions)
    assert (
        demo.success and demo.frames.shape == (t + 1, 256, 256, 3) and demo.actions.shape == (t, 7)
    )
    result = evaluate_in_sim(_Replay(demo.actions), ["close_drawer"], [7])
    assert result.success == {"close_drawer": [True]} and result.steps["close_drawer"] == [t]
    # Holding still is not a success: the verdict comes from the simulator, not the loop.
    still = evaluate_in_sim(_Replay(np.zeros((70, 7), np.float32)), ["close_drawer"], [7])
    assert still.success == {"close_drawer": [False]} and still.steps["close_drawer"] == [70]


def test_policy_configs_follow_the_config_convention():
    assert_follows_the_config_convention(VLAConfig, "large", model_path="/models/oft")
    assert VLAConfig.from_preset("large", model_path="/models/oft").preset == "large"
    assert_follows_the_config_convention(
        SFTConfig, "tiny", steps=9, warmup_steps=2, augment=AugmentConfig(shift_pad=0)
    )
    assert SFTConfig.from_dict({"augment": {"brightness": 0.0}}).augment == AugmentConfig(
        brightness=0.0
    )
