"""World-Gymnast-Distract and -Language: GRPO starts with distractors pasted into the real frame
and paraphrased instructions, drawn by the GRPO rng; held-out paraphrases never reach GRPO; and
test-time training takes one frame, nothing more."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest
import torch
from config_convention import assert_follows_the_config_convention

from policy.grpo import GRPOConfig, Start, _draw_starts, judge_instruction, train_grpo
from reward.judge import SuccessJudge, check_batch
from robot_bridge.spec import PARAPHRASES, TASKS, training_instructions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def frame(seed: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.full((size, size, 3), rng.integers(30, 90), np.uint8)
    f[size // 2 :] = rng.integers(120, 200, 3, dtype=np.uint8)
    return f


def task_starts() -> list[Start]:
    return [Start(frame(i), TASKS[t].instruction, t) for i, t in enumerate(PARAPHRASES)]


def draws(config: GRPOConfig, seed: int, steps: int, starts=None) -> list[list[Start]]:
    rng = np.random.default_rng(seed)
    starts = task_starts() if starts is None else starts
    return [_draw_starts(starts, config, rng) for _ in range(steps)]


@dataclass
class RuleConfig:  # the fields SuccessJudge.judge reads
    n_samples: int = 1
    threshold: float = 0.5
    frame_stride: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


class AlternatingJudge(SuccessJudge):
    """Every other rollout succeeds (each group carries signal); records what it read."""

    backend = "test-alternating"

    def __init__(self) -> None:
        self.config = RuleConfig()
        self.seen: list[str] = []

    def sample_scores(self, videos, instructions, n_samples, frame_stride) -> np.ndarray:
        check_batch(videos, instructions)
        self.seen += instructions
        s = (np.arange(len(videos)) % 2).astype(np.float32)
        return np.repeat(s[:, None], n_samples, axis=1)


# --- the config ---------------------------------------------------------------------------------


def test_the_new_fields_follow_the_config_convention_and_are_checked():
    assert_follows_the_config_convention(
        GRPOConfig, "tiny", distractor_prob=0.5, paraphrase_prob=0.25
    )
    assert GRPOConfig().distractor_prob == GRPOConfig().paraphrase_prob == 0.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="paraphrase_prob must be in"):
            GRPOConfig(paraphrase_prob=bad)


def test_the_default_config_draws_exactly_as_before_the_options_existed():
    config = GRPOConfig.from_preset("tiny", starts_per_step=5)
    starts = task_starts()
    got, rng = draws(config, 3, 20, starts), np.random.default_rng(3)
    for batch in got:  # the old draw: the choice alone, the starts themselves
        idx = rng.choice(len(starts), size=5, replace=False)
        assert all(s is starts[i] for s, i in zip(batch, idx, strict=True))
    assert np.random.default_rng(3).bit_generator.state != rng.bit_generator.state
    after = np.random.default_rng(3)
    for _ in range(20):
        after.choice(len(starts), size=5, replace=False)
    assert after.random() == rng.random()  # no draw beyond the choices


def test_distractors_alone_draw_as_they_did_before_paraphrases_existed():
    from policy.augment import add_distractors

    config = GRPOConfig.from_preset("tiny", starts_per_step=4, distractor_prob=0.5)
    starts, rng = task_starts(), np.random.default_rng(5)
    for batch in draws(config, 5, 10, starts):
        idx = rng.choice(len(starts), size=4, replace=False)
        for s, i in zip(batch, idx, strict=True):
            want = starts[i].frame
            if rng.random() < 0.5:
                want = add_distractors(want[None], rng)[0]
            assert np.array_equal(s.frame, want) and s.instruction == starts[i].instruction


# --- WG-Distract ----------------------------------------------------------------------------------


def test_distractor_starts_are_seeded_by_the_grpo_rng_and_change_the_real_frame():
    config = GRPOConfig.from_preset("tiny", starts_per_step=4, distractor_prob=1.0)
    starts = task_starts()
    a, b, other = draws(config, 0, 3, starts), draws(config, 0, 3, starts), draws(config, 1, 3)
    for batch_a, batch_b in zip(a, b, strict=True):
        for sa, sb in zip(batch_a, batch_b, strict=True):
            assert np.array_equal(sa.frame, sb.frame)  # the same seed: the same starts
            real = next(s.frame for s in starts if s.task == sa.task)
            assert sa.frame.shape == real.shape and sa.frame.dtype == np.uint8
            assert not np.array_equal(sa.frame, real)  # distractors pasted into the real frame
            assert (sa.frame == real).all(axis=-1).mean() > 0.3  # ... and the rest of it kept
            assert sa.instruction == TASKS[sa.task].instruction  # the instruction untouched
    flat = [s.frame for batch in a for s in batch]
    assert any(
        not np.array_equal(x.frame, y)
        for x, y in zip((s for b in other for s in b), flat, strict=True)
    )  # another seed: other distractors
    assert all(np.array_equal(s.frame, frame(i)) for i, s in enumerate(starts))  # not mutated


def test_a_distractor_probability_of_a_half_clutters_about_half_the_starts():
    config = GRPOConfig.from_preset("tiny", starts_per_step=10, distractor_prob=0.5)
    starts = task_starts()
    hit = [
        s is not starts[TASK_INDEX[s.task]] for batch in draws(config, 2, 40, starts) for s in batch
    ]
    assert 0.4 < np.mean(hit) < 0.6


TASK_INDEX = {t: i for i, t in enumerate(PARAPHRASES)}


# --- WG-Language ----------------------------------------------------------------------------------


def test_paraphrases_come_only_from_the_training_ones_over_many_draws():
    config = GRPOConfig.from_preset("tiny", starts_per_step=20, paraphrase_prob=1.0)
    seen: dict[str, set[str]] = {t: set() for t in PARAPHRASES}
    for batch in draws(config, 7, 200):
        for s in batch:
            seen[s.task].add(s.instruction)
            assert np.array_equal(s.frame, frame(TASK_INDEX[s.task]))  # the frame untouched
    for task, texts in seen.items():
        assert texts <= set(training_instructions(task)), task
        assert not texts & set(PARAPHRASES[task]["heldout"]), task
        assert texts == set(training_instructions(task)), task  # every training one is drawn


def test_a_held_out_paraphrase_never_reaches_grpo_and_unknown_tasks_cannot_be_paraphrased():
    config = GRPOConfig.from_preset("tiny", group_size=2, starts_per_step=1, steps=1)
    held = PARAPHRASES["open_drawer"]["heldout"][0]
    judge = AlternatingJudge()
    with pytest.raises(ValueError, match="evaluation-only paraphrases"):
        train_grpo(None, None, judge, [Start(frame(0), held, "open_drawer")], config)
    with pytest.raises(ValueError, match="needs starts of tasks with paraphrases"):
        train_grpo(
            None,
            None,
            judge,
            [Start(frame(0), "wipe the table", "novel")],
            replace(config, paraphrase_prob=0.5),
        )
    assert judge.seen == []  # refused before any rollout


def test_the_judge_reads_the_tasks_own_instruction_for_a_training_paraphrase():
    for task in PARAPHRASES:
        for text in training_instructions(task):
            assert judge_instruction(text) == TASKS[task].instruction
    assert judge_instruction("wipe the table") == "wipe the table"


def test_one_paraphrase_per_start_for_its_whole_group_end_to_end():
    from small_models import SMALL_VLA, small_config

    from policy.config import VLAConfig
    from policy.vla import VLAPolicy
    from world_model import ActionConditionedWorldModel

    torch.manual_seed(0)
    policy = VLAPolicy.build(VLAConfig.from_preset("tiny", **SMALL_VLA))
    wm = ActionConditionedWorldModel(small_config())
    config = GRPOConfig.from_preset(
        "tiny",
        group_size=4,
        starts_per_step=3,
        horizon_chunks=1,
        steps=2,
        judge_samples=1,
        ppo_epochs=1,
        paraphrase_prob=1.0,
        distractor_prob=0.5,
        device="cpu",
    )
    starts = [Start(frame(i), TASKS[t].instruction, t) for i, t in enumerate(PARAPHRASES)][:2]
    judge, groups = AlternatingJudge(), []

    def keep(step, rollouts, rewards, scores):
        for g in rollouts.group.unique().tolist():
            rows = (rollouts.group == g).nonzero().squeeze(1).tolist()
            groups.append({rollouts.instructions[i] for i in rows})

    history = train_grpo(policy, wm, judge, starts, config, progress=False, on_rollouts=keep)
    assert len(history) == 2 and len(groups) == 2 * 3
    assert all(len(g) == 1 for g in groups)  # one prompt per group
    drawn = {next(iter(g)) for g in groups}
    allowed = {p for s in starts for p in training_instructions(s.task)}
    assert drawn <= allowed
    assert set(judge.seen) <= {s.instruction for s in starts}  # the judge: the tasks' own
