"""The success judge: metrics, voting, the tiny VLM (build / save / load / finetune / errors) and
the OpenAI-compatible backend against a real local HTTP server."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from config_convention import assert_follows_the_config_convention
from safetensors.torch import load_file, save_file

from reward import (
    AugmentConfig,
    JudgeConfigError,
    JudgeError,
    JudgeTrainConfig,
    OpenAIJudgeConfig,
    UnknownJudgeError,
    VLMJudgeConfig,
    binary_metrics,
    get_judge_class,
    load_judge,
    majority_vote,
    make_judge,
    select_frame_indices,
)
from robot_bridge.episodes import Episode

# ----------------------------------------------------------------------------- synthetic data

ZONE = (6, 26, 10, 38)  # (y0, y1, x0, x1) of the green target zone on a 48x48 frame
BINS = {"blue": (6, 30, 4, 20), "yellow": (6, 30, 28, 44)}


def _episode(frames: np.ndarray, instruction: str, success: bool | None, idx: int) -> Episode:
    t = len(frames)
    return Episode(
        episode_id=f"syn-{idx}",
        task="synthetic",
        instruction=instruction,
        seed=idx,
        frames=frames,
        states=np.zeros((t, 7), np.float32),
        timestamps=np.arange(t, dtype=np.float64),
        actions=np.zeros((t - 1, 7), np.float32),
        success=success,
        success_source="sim_ground_truth" if success is not None else "none",
        termination="success" if success else "max_steps",
        station_id="synthetic",
        policy_sha256="0" * 64,
        complete=True,
    )


def _render(rng, start, end, zones, t_len=8, size=48) -> np.ndarray:
    """A red block sliding from start to end over coloured zones; success shows in the last frame."""
    bg = rng.integers(90, 150, 3)
    frames = np.empty((t_len, size, size, 3), np.uint8)
    for t in range(t_len):
        a = t / (t_len - 1)
        f = np.empty((size, size, 3))
        f[:] = bg
        for (y0, y1, x0, x1), col in zones:
            f[y0:y1, x0:x1] = col
        y = round(start[0] + a * (end[0] - start[0]))
        x = round(start[1] + a * (end[1] - start[1]))
        f[y : y + 6, x : x + 6] = (220, 30, 30)
        f += rng.normal(0, 6, f.shape)
        frames[t] = np.clip(f, 0, 255).astype(np.uint8)
    return frames


def zone_episodes(n: int, seed: int) -> list[Episode]:
    """One target zone: success iff the block ends inside it."""
    rng = np.random.default_rng(seed)
    y0, y1, x0, x1 = ZONE
    out = []
    for i in range(n):
        success = i % 2 == 0
        if success:
            end = (rng.integers(y0 + 2, y1 - 8), rng.integers(x0 + 2, x1 - 8))
        else:  # below the zone, or beside it
            end = (
                (rng.integers(30, 41), rng.integers(2, 40))
                if i % 4 == 1
                else (rng.integers(6, 20), 41)
            )
        frames = _render(rng, (38, rng.integers(16, 26)), end, [(ZONE, (40, 170, 60))])
        out.append(_episode(frames, "put the red block in the green zone", success, i))
    return out


def bin_episodes(n: int, seed: int) -> list[Episode]:
    """Two bins; the instruction names one. Failures include ending in the other bin."""
    rng = np.random.default_rng(seed)
    zones = [(BINS["blue"], (40, 60, 200)), (BINS["yellow"], (210, 200, 40))]
    out = []
    for i in range(n):
        target = ("blue", "yellow")[int(rng.integers(2))]
        other = "yellow" if target == "blue" else "blue"
        success = i % 2 == 0
        where = BINS[target] if success else (BINS[other] if i % 4 == 1 else None)
        if where is None:
            end = (rng.integers(32, 40), rng.integers(4, 38))
        else:
            y0, y1, x0, x1 = where
            end = (rng.integers(y0 + 3, y1 - 9), rng.integers(x0 + 2, x1 - 8))
        frames = _render(rng, (38, rng.integers(16, 26)), end, zones)
        out.append(_episode(frames, f"put the red block in the {target} bin", success, i))
    return out


def _videos(episodes):
    return [e.frames for e in episodes], [e.instruction for e in episodes]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model is too small to gain from threads; on a shared 2-core machine two threads
    spin against other jobs and run several times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    from reward.vlm import VLMJudge

    return VLMJudge.from_config(
        VLMJudgeConfig(), instructions=["put the red block in the green zone"]
    )


# A run whose last training loss is above this never left the ln 2 plateau (see ``trained``).
PLATEAU_LOSS = 0.4


@pytest.fixture(scope="module")
def trained():
    """A tiny judge finetuned on the one-zone task, threshold calibrated on a validation set.

    The training loss sits at ln 2 (0.69) until a break-away whose step depends chaotically on
    the float path (seed, thread count, CPU): measured on a 2-core Intel Xeon (AVX-512), 2 of
    28 runs at 300-400 steps never left it (last loss 0.56 and 0.69; every other run ended below
    0.27, held-out F1 0.98-1.00). A CPU that takes another float path can land on such a run
    for seed 0, as one did (F1 0.892 at 150 steps). So, judged by the training loss alone and
    never by the held-out figure, a run that ended on the plateau is retried with the next seed,
    at most three; a learner that cannot learn stays on it every time and the test fails."""
    from reward.train import finetune_judge

    train = zone_episodes(80, seed=0) + [
        _episode(zone_episodes(1, 9)[0].frames, "put the red block in the green zone", None, 99)
    ]
    for seed in range(3):
        judge, metrics = finetune_judge(
            VLMJudgeConfig(),
            train,
            JudgeTrainConfig(steps=300, batch_size=32, lr=2e-3, seed=seed),
            val_episodes=zone_episodes(40, seed=1),
            progress=False,
        )
        if metrics["loss_last"] < PLATEAU_LOSS:
            break
    return judge, metrics


# ----------------------------------------------------------------------------- metrics


def test_binary_metrics_counts_and_ratios():
    m = binary_metrics([1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0])
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["n"]) == (2, 1, 1, 2, 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_binary_metrics_zero_division_is_reported_not_invented():
    never_says_yes = binary_metrics([0, 0, 0], [1, 0, 1])
    assert never_says_yes["precision"] is None  # no positive predictions
    assert never_says_yes["recall"] == 0.0
    assert never_says_yes["f1"] == 0.0
    no_positives = binary_metrics([0, 0], [0, 0])
    assert no_positives["precision"] is None and no_positives["recall"] is None
    assert no_positives["f1"] is None and no_positives["accuracy"] == 1.0
    empty = binary_metrics([], [])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["f1"] is None
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([2, 0], [1, 0])
    with pytest.raises(ValueError, match="same shape"):
        binary_metrics([1, 0], [1])


# ----------------------------------------------------------------------------- voting, frames, registry


def test_majority_vote_needs_a_strict_majority():
    votes = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 1], [0, 0, 0, 0, 0]], bool)
    assert majority_vote(votes).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert majority_vote(np.array([[1, 0], [1, 1]], bool)).tolist() == [0.0, 1.0]  # tie -> 0
    assert majority_vote(votes).dtype == np.float32


def test_frame_selection_is_anchored_at_the_final_frame():
    assert select_frame_indices(10, 3) == [0, 3, 6, 9]
    assert select_frame_indices(11, 3) == [1, 4, 7, 10]
    assert select_frame_indices(11, 3, max_frames=2) == [7, 10]
    assert select_frame_indices(2, 3, max_frames=4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="at least one frame"):
        select_frame_indices(0, 3)


def test_registry_lists_valid_backends():
    assert get_judge_class("vlm").__name__ == "VLMJudge"
    assert get_judge_class("openai").__name__ == "OpenAIJudge"
    with pytest.raises(UnknownJudgeError, match="valid backends: openai, vlm"):
        make_judge("gpt5")


def test_config_errors_say_expected_and_received():
    with pytest.raises(JudgeConfigError, match="perfect square.*got 3"):
        VLMJudgeConfig(frames_per_image=3)
    with pytest.raises(JudgeConfigError, match="checkpoint_path"):
        VLMJudgeConfig.from_preset("large")
    with pytest.raises(JudgeConfigError, match="valid presets"):
        VLMJudgeConfig.from_preset("huge")
    with pytest.raises(JudgeConfigError, match=r"threshold must be in \(0, 1\), got 1.5"):
        VLMJudgeConfig(threshold=1.5)


def test_judge_configs_follow_the_config_convention():
    assert_follows_the_config_convention(
        VLMJudgeConfig, "large", checkpoint_path="/models/paligemma", extra_instructions=("a", "b")
    )
    assert VLMJudgeConfig.from_preset("large", checkpoint_path="c").preset == "large"
    assert_follows_the_config_convention(
        JudgeTrainConfig, "tiny", steps=11, augment=AugmentConfig(shift_px=1), device="cpu"
    )
    with pytest.raises(JudgeConfigError, match=r"unknown AugmentConfig fields \['blur'\]"):
        JudgeTrainConfig.from_dict({"augment": {"blur": 1.0}})
    assert OpenAIJudgeConfig.from_dict(OpenAIJudgeConfig(model="m").to_dict()).model == "m"


# ----------------------------------------------------------------------------- tiny VLM


def test_tiny_builds_saves_and_reloads_offline(tmp_path, tiny):
    from reward.vlm import VLMJudge

    # how fast: pipeline/bench/tiny_build.py (a timed assertion here would flake under load)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    judge = VLMJudge.from_config(
        VLMJudgeConfig(), instructions=["put the red block in the green zone"]
    )
    judge.save_pretrained(tmp_path / "j")
    loaded = load_judge(tmp_path / "j")
    assert {"config.json", "model.safetensors", "tokenizer.json", "judge_config.json"} <= {
        p.name for p in (tmp_path / "j").iterdir()
    }
    videos, texts = _videos(zone_episodes(4, seed=3))
    p = judge.success_probability(videos, texts)
    assert p.shape == (4,) and p.dtype == np.float32 and np.all((p > 0) & (p < 1))
    np.testing.assert_array_equal(loaded.success_probability(videos, texts), p)
    # same seed, same weights: the build is deterministic
    np.testing.assert_array_equal(tiny.success_probability(videos, texts), p)


def test_score_does_not_depend_on_batch_mates(tiny):
    videos, _ = _videos(zone_episodes(3, seed=4))
    texts = [
        "open the drawer",
        "put the eggplant in the yellow basket please, carefully",
        "close the drawer",
    ]
    together = tiny.success_probability(videos, texts)
    alone = np.concatenate(
        [tiny.success_probability([v], [t]) for v, t in zip(videos, texts, strict=True)]
    )
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_judge_votes_over_shifted_views(tiny):
    videos, texts = _videos(zone_episodes(6, seed=5))
    r = tiny.judge(videos, texts, n_samples=5)
    assert r.votes.shape == (6, 5) and r.rewards.shape == (6,) and r.rewards.dtype == np.float32
    np.testing.assert_array_equal(r.rewards, majority_vote(r.votes))
    np.testing.assert_array_equal(r.votes[:, 0], tiny.success_probability(videos, texts) >= 0.5)
    scores = tiny.sample_scores(videos, texts, 5, 3)
    assert not np.allclose(scores[:, 0], scores[:, 1])  # the views really differ
    np.testing.assert_array_equal(tiny.sample_scores(videos, texts, 5, 3), scores)  # and are seeded


def test_large_loading_path_reads_a_plain_hf_checkpoint(tmp_path, tiny):
    from reward.vlm import VLMJudge

    tiny.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "judge_config.json").unlink()  # now just a transformers checkpoint
    cfg = VLMJudgeConfig.from_preset(
        "large", checkpoint_path=str(tmp_path / "ckpt"), dtype="float32"
    )
    assert cfg.image_size == 224
    with pytest.raises(JudgeConfigError, match="expects 64 px images but config.image_size is 224"):
        VLMJudge.from_config(cfg)
    large = VLMJudge.from_pretrained(tmp_path / "ckpt", dtype="float32")  # image size read from it
    assert large.config.preset == "large" and large.config.image_size == 64
    videos, texts = _videos(zone_episodes(3, seed=6))
    np.testing.assert_array_equal(
        large.success_probability(videos, texts), tiny.success_probability(videos, texts)
    )
    # the processor path (chat-template models such as Qwen-VL) agrees with our fast path
    via_processor = VLMJudge.from_pretrained(
        tmp_path / "ckpt", dtype="float32", input_path="processor"
    )
    frames64 = [np.repeat(np.repeat(v, 4, axis=1), 4, axis=2)[:, ::3, ::3] for v in videos]  # 64x64
    np.testing.assert_allclose(
        via_processor.success_probability(frames64, texts),
        large.success_probability(frames64, texts),
        atol=1e-4,
    )


def test_checkpoint_errors_name_the_problem(tmp_path, tiny):
    from reward.vlm import CheckpointError, VLMJudge

    d = tmp_path / "ckpt"
    tiny.save_pretrained(d)
    weights = load_file(d / "model.safetensors")
    name = next(k for k in weights if "vision_tower" in k and k.endswith("fc1.weight"))

    missing = dict(weights)
    del missing[name]
    save_file(missing, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing_keys.*fc1"):
        VLMJudge.from_pretrained(d)

    wrong = dict(weights)
    wrong[name] = torch.zeros(wrong[name].shape[0] + 1, wrong[name].shape[1])
    save_file(wrong, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="fc1"):
        VLMJudge.from_pretrained(d)

    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        VLMJudge.from_pretrained(d)
    with pytest.raises(CheckpointError, match="does not exist"):
        VLMJudge.from_pretrained(tmp_path / "nowhere", preset="large")


def test_bad_videos_raise(tiny):
    good = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        tiny.success_probability([good.astype(np.float32)], ["open the drawer"])
    with pytest.raises(ValueError, match=r"\(T>=1, H, W, 3\)"):
        tiny.success_probability([good[..., :1]], ["open the drawer"])
    with pytest.raises(ValueError, match="2 videos but 1 instructions"):
        tiny.success_probability([good, good], ["open the drawer"])
    with pytest.raises(ValueError, match="images must have shape"):
        tiny.yes_no_margin(torch.zeros(1, 3, 32, 32), ["open the drawer"])


# ----------------------------------------------------------------------------- finetuning


def test_finetune_reaches_high_f1_on_held_out_videos(trained, tmp_path):
    """Held-out F1 is a learned figure, so its bar is set by its spread across float paths (a
    training seed or a thread count changes the float path the way another CPU does).

    Measured on a 2-core Intel Xeon (AVX-512), training seeds 0-15 x 1 thread at 300 and at 400
    steps (32 runs): runs that left the ln 2 plateau (last loss < 0.27, 30 of 32) scored
    min 0.98 / median 1.00 / max 1.00; the two that did not, 0.80 and 0.75 (the fixture
    retries those). At 150 steps (24 runs, 1 and 2 threads) min 0.63 / median 0.98: how 0.892
    failed a 0.9 bar. Bar 0.9, 0.08 below the worst learned run; the untrained judge,
    calibrated the same way, scores 0.59-0.67 (init seeds 0-3), "always success" 0.667.
    """
    from reward.train import evaluate_judge

    judge, metrics = trained
    assert metrics["n_skipped_unlabelled"] == 1 and metrics["n_train_episodes"] == 80
    assert metrics["loss_last"] < metrics["loss_first"]
    assert metrics["threshold"] == judge.config.threshold
    held_out = evaluate_judge(judge, zone_episodes(60, seed=2))
    assert metrics["loss_last"] < PLATEAU_LOSS, "three seeds never left the ln 2 plateau"
    assert held_out["f1"] >= 0.9, held_out
    # the calibrated threshold travels with the checkpoint
    judge.save_pretrained(tmp_path / "j")
    assert load_judge(tmp_path / "j").config.threshold == judge.config.threshold


def test_finetune_rejects_unusable_data():
    from reward.train import JudgeDataError, finetune_judge

    eps = zone_episodes(6, seed=0)
    with pytest.raises(JudgeDataError, match="no success-labelled episodes"):
        finetune_judge(VLMJudgeConfig(), [], JudgeTrainConfig(steps=1), progress=False)
    with pytest.raises(JudgeDataError, match="single class .*3 successes, 0 failures"):
        finetune_judge(
            VLMJudgeConfig(),
            [e for e in eps if e.success],
            JudgeTrainConfig(steps=1),
            progress=False,
        )
    unlabelled = [_episode(e.frames, e.instruction, None, i) for i, e in enumerate(eps)]
    with pytest.raises(JudgeDataError, match="success is None for all"):
        finetune_judge(VLMJudgeConfig(), unlabelled, JudgeTrainConfig(steps=1), progress=False)
    with pytest.raises(FloatingPointError, match="judge loss is nan"):
        finetune_judge(VLMJudgeConfig(), eps, JudgeTrainConfig(steps=20, lr=1e30), progress=False)


def test_augment_is_seeded_and_keeps_range():
    from reward.config import AugmentConfig
    from reward.train import augment

    x = torch.rand(8, 3, 64, 64)
    a = augment(x, AugmentConfig(blur_prob=1.0, lowres_prob=1.0), torch.Generator().manual_seed(0))
    b = augment(x, AugmentConfig(blur_prob=1.0, lowres_prob=1.0), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert (a - x).abs().mean() > 0.05
    # blur + low resolution remove fine detail: neighbouring pixels become more alike
    assert (a[..., 1:] - a[..., :-1]).abs().mean() < 0.5 * (x[..., 1:] - x[..., :-1]).abs().mean()


@pytest.mark.slow
def test_finetune_learns_instruction_conditional_success():
    """Two bins, the instruction names one: ending in the other bin is a failure."""
    from reward.train import evaluate_judge, finetune_judge

    judge, _ = finetune_judge(
        VLMJudgeConfig(),
        bin_episodes(120, 0),
        JudgeTrainConfig(steps=600, lr=2e-3),
        val_episodes=bin_episodes(60, 1),
        progress=False,
    )
    assert evaluate_judge(judge, bin_episodes(100, 2))["f1"] >= 0.9


# ----------------------------------------------------------------------------- OpenAI-compatible backend


class _ChatServer:
    """A real chat.completions endpoint on 127.0.0.1; ``answer(request, count)`` picks the reply."""

    def __init__(self, answer, delay_s: float = 0.0):
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append(body)
                    outer.auth.append(self.headers.get("Authorization"))
                    count = len(outer.requests)
                time.sleep(delay_s)
                payload = {
                    "id": f"c{count}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": answer(body, count)},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                data = json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def _openai_judge(server: _ChatServer, monkeypatch, **kw):
    monkeypatch.setenv("GYMNAST_TEST_JUDGE_KEY", "sk-test-123")
    cfg = OpenAIJudgeConfig(
        model="judge-model",
        base_url=server.base_url,
        api_key_env="GYMNAST_TEST_JUDGE_KEY",
        image_size=32,
        max_retries=0,
        **kw,
    )
    return make_judge("openai", cfg)


def _user_text(body: dict) -> str:
    return body["messages"][1]["content"][0]["text"]


def test_openai_judge_sends_frames_and_parses_scores(monkeypatch):
    # "blue" instructions succeed, others fail; answers end with the score after some reasoning
    def answer(body, count):
        return (
            "The block is in the bin.\nScore: 1"
            if "blue" in _user_text(body)
            else "It missed.\n**Score:** 0"
        )

    video = np.random.default_rng(0).integers(0, 255, (10, 48, 48, 3), dtype=np.uint8)
    with _ChatServer(answer) as server:
        judge = _openai_judge(server, monkeypatch, n_samples=3)
        result = judge.judge([video, video], ["put it in the blue bin", "put it in the yellow bin"])
    assert result.rewards.tolist() == [1.0, 0.0]
    assert result.votes.tolist() == [[True] * 3, [False] * 3]
    assert len(server.requests) == 6
    body = server.requests[0]
    assert body["model"] == "judge-model"
    assert server.auth[0] == "Bearer sk-test-123"
    assert (
        "video model" in body["messages"][0]["content"]
        and "artefacts" in body["messages"][0]["content"]
    )
    images = [p for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    assert len(images) == len(select_frame_indices(10, 3)) == 4
    from PIL import Image

    png = base64.b64decode(images[-1]["image_url"]["url"].removeprefix("data:image/png;base64,"))
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (32, 32, 3)


def test_openai_judge_majority_vote(monkeypatch):
    lock, counts = threading.Lock(), {}

    patterns = {"a": (1, 1, 0, 1, 0), "b": (1, 0, 0, 0, 1)}  # 3 of 5 yes; 2 of 5 yes

    def answer(body, count):
        key = "a" if "task a" in _user_text(body) else "b"
        with lock:
            k = counts[key] = counts.get(key, -1) + 1
        return f"Reasoning...\nScore: {patterns[key][k]}"

    video = np.zeros((4, 16, 16, 3), np.uint8)
    with _ChatServer(answer) as server:
        judge = _openai_judge(server, monkeypatch, n_samples=5)
        r = judge.judge([video, video], ["do task a", "do task b"])
    assert r.votes.sum(axis=1).tolist() == [3, 2]
    assert r.rewards.tolist() == [1.0, 0.0]
    np.testing.assert_allclose(r.probabilities, [0.6, 0.4])


def test_openai_judge_timeout_raises(monkeypatch):
    with _ChatServer(lambda body, count: "Score: 1", delay_s=1.5) as server:
        judge = _openai_judge(server, monkeypatch, n_samples=1, timeout_s=0.3)
        t0 = time.perf_counter()
        with pytest.raises(JudgeError, match="timed out after 0.3 s"):
            judge.judge([np.zeros((2, 16, 16, 3), np.uint8)], ["open the drawer"])
        assert time.perf_counter() - t0 < 1.4


def test_openai_judge_nonsense_answer_raises(monkeypatch):
    with _ChatServer(lambda body, count: "I think the robot did a great job!") as server:
        judge = _openai_judge(server, monkeypatch, n_samples=3)
        with pytest.raises(
            JudgeError, match="could not find a final 'Score: 0' or 'Score: 1'.*great job"
        ):
            judge.judge([np.zeros((2, 16, 16, 3), np.uint8)], ["open the drawer"])


def test_openai_judge_needs_its_api_key(monkeypatch):
    monkeypatch.delenv("GYMNAST_MISSING_KEY", raising=False)
    with pytest.raises(JudgeConfigError, match="GYMNAST_MISSING_KEY is not set"):
        make_judge("openai", OpenAIJudgeConfig(api_key_env="GYMNAST_MISSING_KEY"))


def test_score_parsing():
    from reward.openai_judge import parse_score

    assert parse_score("Score: 0 at first... on reflection\nScore: 1") == 1
    assert parse_score("score=0") == 0
    assert parse_score(" 1 ") == 1
    for bad in ("Score: 0.7", "maybe", "", "Score: 2"):
        with pytest.raises(JudgeError):
            parse_score(bad)
    with pytest.raises(JudgeError, match="no content"):
        parse_score(None)


def test_openai_judge_config_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("GYMNAST_TEST_JUDGE_KEY", "k")
    cfg = OpenAIJudgeConfig(
        model="m", base_url="http://127.0.0.1:9/v1", api_key_env="GYMNAST_TEST_JUDGE_KEY"
    )
    make_judge("openai", cfg).save_pretrained(tmp_path / "oj")
    assert load_judge(tmp_path / "oj").config == cfg


def test_threshold_rules_on_hand_made_scores():
    """On success-heavy validation scores F1 keeps a cut that lets failures through (it counts
    only the success class); balanced accuracy weighs both classes and cuts between them."""
    from dataclasses import replace as dc_replace

    from reward.train import best_threshold, binary_metrics

    # 17 confident successes, 3 missed ones at 0.02, failures at 0.05 and 0.01
    probs = np.array([0.95] * 17 + [0.02] * 3 + [0.05, 0.05, 0.01, 0.01])
    labels = np.array([True] * 20 + [False] * 4)
    bal, f1 = best_threshold(probs, labels), best_threshold(probs, labels, "f1")
    assert 0.05 < bal < 0.95 and binary_metrics(probs >= bal, labels)["fp"] == 0
    assert 0.01 < f1 < 0.02 and binary_metrics(probs >= f1, labels)["fp"] == 2
    # ties go to the cut nearest 0.5
    assert best_threshold(np.array([0.1, 0.9]), np.array([False, True])) == 0.5
    with pytest.raises(ValueError, match="rule must be one of balanced_accuracy, f1"):
        best_threshold(probs, labels, "auc")
    with pytest.raises(JudgeConfigError, match="threshold_rule must be one of"):
        dc_replace(JudgeTrainConfig(), threshold_rule="auc")
