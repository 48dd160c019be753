"""OpenVLA / OpenVLA-OFT checkpoints: dataset_statistics.json, its BOUNDS_Q99 un-normalisation,
OpenVLA's action-bin layout, and a tiny model saved in that layout loading with its own stats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from small_models import SMALL_VLA

from policy.config import VLAConfig
from policy.oft import (
    OpenVLAActionTokenizer,
    StatisticsError,
    read_dataset_statistics,
    select_statistics,
    unnormalize_actions,
)
from policy.vla import VLAPolicy

SMALL = SMALL_VLA
BRIDGE_Q01 = [-0.03, -0.04, -0.03, -0.1, -0.09, -0.2, 0.0]
BRIDGE_Q99 = [0.03, 0.04, 0.04, 0.1, 0.09, 0.2, 1.0]
MASK = [True] * 6 + [False]  # the gripper is not normalised


def _entry(q01, q99, mask, n=1000) -> dict:
    q01, q99 = np.asarray(q01), np.asarray(q99)
    return {
        "action": {
            "mean": ((q01 + q99) / 2).tolist(),
            "std": ((q99 - q01) / 4).tolist(),
            "max": (q99 * 1.5).tolist(),
            "min": (q01 * 1.5).tolist(),
            "q01": q01.tolist(),
            "q99": q99.tolist(),
            "mask": mask,
        },
        "proprio": {k: [0.0] * 7 for k in ("mean", "std", "max", "min", "q01", "q99")},
        "num_transitions": n,
        "num_trajectories": n // 40,
    }


def write_stats(directory, datasets: dict) -> None:
    (directory / "dataset_statistics.json").write_text(json.dumps(datasets))


def openvla_reference_decode(tokens: np.ndarray, vocab_size: int, q01, q99, mask) -> np.ndarray:
    """OpenVLA's predict_action decode, written out from its definition: 256 edges on [-1, 1],
    255 centres, d = vocab_size - token, centre index clip(d - 1, 0, 254), then BOUNDS_Q99."""
    centres = np.linspace(-1, 1, 256)
    centres = (centres[:-1] + centres[1:]) / 2
    x = centres[np.clip(vocab_size - tokens - 1, 0, 254)]
    q01, q99 = np.asarray(q01), np.asarray(q99)
    return np.where(mask, 0.5 * (x + 1) * (q99 - q01) + q01, x)


def test_reads_every_dataset_and_selects_by_key_with_errors_naming_the_keys(tmp_path):
    write_stats(
        tmp_path,
        {
            "bridge_orig": _entry(BRIDGE_Q01, BRIDGE_Q99, MASK),
            "fractal": _entry([-1.0] * 7, [1.0] * 7, [True] * 7, n=80),
        },
    )
    stats = read_dataset_statistics(tmp_path)  # the folder or the file
    assert sorted(stats) == ["bridge_orig", "fractal"]
    bridge = stats["bridge_orig"]
    assert np.allclose(bridge.action.q99, BRIDGE_Q99) and bridge.action.mask.tolist() == MASK
    assert bridge.num_transitions == 1000 and bridge.num_trajectories == 25
    assert bridge.proprio is not None and bridge.proprio.dim == 7
    assert select_statistics(stats, "fractal").name == "fractal"
    with pytest.raises(
        StatisticsError, match=r"2 datasets \['bridge_orig', 'fractal'\].*unnorm_key"
    ):
        select_statistics(stats, None)
    with pytest.raises(StatisticsError, match=r"'widowx'.*\['bridge_orig', 'fractal'\]"):
        select_statistics(stats, "widowx")
    only = {"bridge_orig": stats["bridge_orig"]}
    assert select_statistics(only, None).name == "bridge_orig"


def test_malformed_statistics_are_refused_with_the_offending_field(tmp_path):
    bad = _entry(BRIDGE_Q01, BRIDGE_Q99, MASK)
    del bad["action"]["q99"]
    write_stats(tmp_path, {"bridge_orig": bad})
    with pytest.raises(StatisticsError, match=r"bridge_orig\.action lacks \['q99'\]"):
        read_dataset_statistics(tmp_path)
    short = _entry(BRIDGE_Q01, BRIDGE_Q99, MASK)
    short["action"]["mask"] = [True] * 6
    write_stats(tmp_path, {"bridge_orig": short})
    with pytest.raises(StatisticsError, match="mask has 6 entries, q01 has 7"):
        read_dataset_statistics(tmp_path)
    with pytest.raises(StatisticsError, match="no dataset_statistics.json"):
        read_dataset_statistics(tmp_path / "nowhere")


def test_unnormalize_maps_the_unit_box_onto_q01_q99_where_masked_and_passes_the_rest():
    write_dir_stats = _entry(BRIDGE_Q01, BRIDGE_Q99, MASK)["action"]
    from policy.oft import _norm_stats

    action = _norm_stats(write_dir_stats, "test")
    x = np.array([[-1.0] * 7, [1.0] * 7, [0.0] * 6 + [0.7]])
    a = unnormalize_actions(x, action)
    assert np.allclose(a[0, :6], BRIDGE_Q01[:6]) and np.allclose(a[1, :6], BRIDGE_Q99[:6])
    assert np.allclose(a[2, :6], (np.array(BRIDGE_Q01[:6]) + BRIDGE_Q99[:6]) / 2)
    assert a[0, 6] == -1.0 and a[1, 6] == 1.0 and a[2, 6] == 0.7  # raw where the mask is off


def test_openvla_bin_layout_matches_openvla_decoding_and_round_trips():
    vocab = 1000
    tok = OpenVLAActionTokenizer(
        np.array(BRIDGE_Q01), np.array(BRIDGE_Q99), token_start=vocab - 256, mask=np.array(MASK)
    )
    ids = np.repeat(np.arange(vocab - 256, vocab)[:, None], 7, axis=1)  # (256, 7): every id
    ours = tok.decode(ids)[:, 0]  # (256, 7)
    ref = openvla_reference_decode(ids, vocab, BRIDGE_Q01, BRIDGE_Q99, MASK)
    assert np.allclose(ours, ref, atol=1e-6)
    # larger actions get smaller ids, as in OpenVLA
    assert np.all(np.diff(ours[1:], axis=0) < 0)
    rng = np.random.default_rng(0)
    a = rng.uniform(BRIDGE_Q01, BRIDGE_Q99, (64, 5, 7))
    a[..., 6] = rng.integers(0, 2, (64, 5))  # a raw gripper in [0, 1]
    back = tok.decode(tok.encode(a))
    assert np.all(np.abs(back - a) <= tok.bin_width + 1e-9)


@pytest.fixture(scope="module")
def oft_dir(tmp_path_factory):
    """A tiny PaliGemma saved in plain transformers format beside a 2-dataset statistics file."""
    d = tmp_path_factory.mktemp("oft")
    torch.manual_seed(0)
    tiny = VLAPolicy.build(VLAConfig.from_preset("tiny", **SMALL))
    tiny.model.save_pretrained(d)
    tiny.processor.save_pretrained(d)
    write_stats(
        d,
        {
            "bridge_orig": _entry(BRIDGE_Q01, BRIDGE_Q99, MASK),
            "other": _entry([-1.0] * 7, [1.0] * 7, [True] * 7),
        },
    )
    return d


def _large(d, **kw) -> VLAConfig:
    return VLAConfig.from_preset(
        "large", model_path=str(d), query_tokens="slots", torch_dtype="float32", **kw
    )


def test_a_checkpoint_folder_decodes_with_its_own_statistics_and_round_trips(oft_dir, tmp_path):
    policy = VLAPolicy.from_local_path(oft_dir, config=_large(oft_dir, unnorm_key="bridge_orig"))
    tok = policy.action_tokenizer
    assert isinstance(tok, OpenVLAActionTokenizer) and tok.dataset == "bridge_orig"
    frames = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    s = policy.sample(frames, ["open the drawer"] * 3, generator=torch.Generator().manual_seed(2))
    vocab = policy.processor.tokenizer.vocab_size
    ref = openvla_reference_decode(
        s.tokens.numpy().reshape(3, 5, 7), vocab, BRIDGE_Q01, BRIDGE_Q99, MASK
    )
    assert np.allclose(s.actions, ref, atol=1e-6)
    assert np.all(s.actions[..., :6] >= np.array(BRIDGE_Q01[:6]) - 1e-9)
    assert np.all(np.abs(s.actions[..., 6]) <= 1.0)  # the raw (unmasked) gripper value

    # our own format keeps the layout, the mask and the dataset
    policy.save_pretrained(tmp_path / "ours")
    again = VLAPolicy.from_pretrained(tmp_path / "ours", device="cpu")
    assert isinstance(again.action_tokenizer, OpenVLAActionTokenizer)
    assert again.action_tokenizer.to_dict() == tok.to_dict()
    assert again.config.unnorm_key == "bridge_orig"
    assert np.array_equal(again.action_tokenizer.decode(s.tokens.numpy()), s.actions)


def test_an_ambiguous_or_unknown_key_names_the_available_datasets(oft_dir, tmp_path):
    with pytest.raises(StatisticsError, match=r"\['bridge_orig', 'other'\].*unnorm_key"):
        VLAPolicy.from_local_path(oft_dir, config=_large(oft_dir))
    with pytest.raises(StatisticsError, match=r"'libero'.*\['bridge_orig', 'other'\]"):
        VLAPolicy.from_local_path(oft_dir, config=_large(oft_dir, unnorm_key="libero"))
    with pytest.raises(ValueError, match="unnorm_key must be a dataset name"):
        VLAConfig.from_preset("large", model_path=str(oft_dir), unnorm_key="")
    # a folder without statistics keeps the old behaviour, unless a key asks for them
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in oft_dir.iterdir():
        if f.name != "dataset_statistics.json":
            (bare / f.name).write_bytes(f.read_bytes())
    plain = VLAPolicy.from_local_path(bare, config=_large(bare))
    assert not isinstance(plain.action_tokenizer, OpenVLAActionTokenizer)
    from policy.vla import CheckpointError

    with pytest.raises(CheckpointError, match="unnorm_key 'bridge_orig' is set but .* no dataset"):
        VLAPolicy.from_local_path(bare, config=_large(bare, unnorm_key="bridge_orig"))
