"""Test-time training takes exactly one real frame of the novel scene, and the task
instruction(s): a second frame, a batch of frames or an episode is refused, and every start GRPO
imagines from is that one frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy import test_time
from policy.grpo import GRPOConfig
from robot_bridge.spec import TASKS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS_2 = ["open_drawer", "close_drawer"]


def frame(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture
def captured(monkeypatch):
    """What test_time_train hands GRPO, without running it."""
    calls = []

    def fake_train(policy, world_model, judge, starts, config, progress=False):
        calls.append((starts, config))
        return []

    monkeypatch.setattr(test_time, "train_grpo", fake_train)
    return calls


def test_every_start_is_the_one_frame_with_each_tasks_instruction(captured):
    f = frame(0)
    instructions = [TASKS[t].instruction for t in TASKS_2]
    test_time.test_time_train(None, None, None, f, instructions, tasks=TASKS_2)
    ((starts, config),) = captured
    assert [s.instruction for s in starts] == instructions
    assert [s.task for s in starts] == TASKS_2
    assert all(s.frame is f for s in starts)  # that frame, and no other
    assert config == test_time.default_test_time_config()


def test_a_second_frame_a_batch_or_an_episode_is_refused(captured):
    from small_models import SyntheticEpisode

    f = frame(0)
    episode = SyntheticEpisode(np.stack([f, frame(1)]), np.zeros((1, 7), np.float32))
    refused = [
        np.stack([f, frame(1)]),  # two frames
        f[None],  # a batch of one is not a frame
        [f, frame(1)],  # a list of frames
        (f,),
        episode,
        episode.frames,
        {"frame": f},
    ]
    for bad in refused:
        with pytest.raises(ValueError, match="frame must be"):
            test_time.test_time_train(None, None, None, bad, TASKS["open_drawer"].instruction)
    with pytest.raises(ValueError, match="2 tasks for 1 instructions"):
        test_time.test_time_train(None, None, None, f, ["open the drawer"], tasks=TASKS_2)
    with pytest.raises(ValueError, match="instruction must be a non-empty string"):
        test_time.test_time_train(None, None, None, f, [])
    assert captured == []  # refused before GRPO


def test_test_time_training_runs_grpo_from_that_frame_alone():
    from small_models import SMALL_VLA, small_config

    from policy.config import VLAConfig
    from policy.vla import VLAPolicy
    from reward.judge import JudgeResult
    from world_model import ActionConditionedWorldModel

    class FirstFrameJudge:  # records the start frame of every rollout it judges
        def __init__(self):
            self.firsts = []

        def judge(self, videos, instructions, n_samples=None):
            self.firsts += [v[0] for v in videos]
            r = (np.arange(len(videos)) % 2).astype(np.float32)
            return JudgeResult(r, r, r[:, None] > 0.5)

    torch.manual_seed(0)
    policy = VLAPolicy.build(VLAConfig.from_preset("tiny", **SMALL_VLA))
    wm = ActionConditionedWorldModel(small_config())
    config = GRPOConfig.from_preset(
        "tiny", group_size=2, starts_per_step=2, horizon_chunks=1, steps=1, judge_samples=1
    )
    f, judge = frame(3), FirstFrameJudge()
    instructions = [TASKS[t].instruction for t in TASKS_2]
    history = test_time.test_time_train(policy, wm, judge, f, instructions, config, tasks=TASKS_2)
    assert len(history) == 1 and history[0].total_groups == 2
    firsts = np.stack(judge.firsts)
    assert (firsts == firsts[0]).all()  # every rollout began on the one frame
