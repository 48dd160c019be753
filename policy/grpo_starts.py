"""Where GRPO's imagined rollouts begin, and which starts a step draws: per-task signal (how
often a task's groups carried a learning signal), the task filter, optional distractors and
paraphrased instructions (World-Gymnast-Distract and -Language), and the guard that keeps the
held-out paraphrases out of training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from policy.grpo_math import keep_groups

if TYPE_CHECKING:
    from policy.grpo import GRPOConfig


@dataclass
class Start:
    """Where a group of imagined rollouts begins: a real frame and the instruction to follow."""

    frame: np.ndarray  # (H, W, 3) uint8
    instruction: str
    task: str = ""


def training_starts(starts: Sequence[Start], tasks: Sequence[str]) -> list[Start]:
    """The starts of ``tasks`` (all of them when empty); a task with no start is an error, not a
    quietly smaller batch (a misspelt name would otherwise train on nothing it names)."""
    if not tasks:
        return list(starts)
    have = {task_key(s) for s in starts}
    missing = [t for t in tasks if t not in have]
    if missing:
        raise ValueError(
            f"train_tasks {missing} have no start; the starts' tasks are {sorted(have)}"
        )
    return [s for s in starts if task_key(s) in tasks]


def task_key(start: Start) -> str:
    """The task a start counts under: its task name, else its instruction (novel ones)."""
    return start.task or start.instruction


class TaskSignal:
    """Per task: groups drawn and groups kept (carried signal) so far."""

    def __init__(self, starts: Sequence[Start]) -> None:
        self.task_of = [task_key(s) for s in starts]
        self.drawn = dict.fromkeys(self.task_of, 0)
        self.kept = dict.fromkeys(self.task_of, 0)

    def kept_share(self, task: str) -> float:
        return (self.kept[task] + 1) / (self.drawn[task] + 2)  # Laplace: 1/2 before any draw

    def start_weights(self, mode: str = "signal") -> np.ndarray:
        """(len(starts),) probabilities: a weight per task, then uniform within the task.

        ``"signal"``: the task's kept share; ``"balanced"``: the kept share over half the best
        task's, capped at 1 (see ``GRPOConfig.task_sampling``)."""
        if mode not in ("signal", "balanced"):
            raise ValueError(f"start_weights mode must be 'signal' or 'balanced', got {mode!r}")
        share = {t: self.kept_share(t) for t in self.drawn}
        if mode == "balanced":
            half_best = max(share.values()) / 2
            share = {t: min(1.0, v / half_best) for t, v in share.items()}
        per_task = {t: self.task_of.count(t) for t in self.drawn}
        w = np.array([share[t] / per_task[t] for t in self.task_of])
        return w / w.sum()

    def record(self, batch: Sequence[Start], rewards: torch.Tensor, config: GRPOConfig) -> dict:
        """Count this step's (P, G) rewards; returns per-task imagined success and kept groups."""
        keep = keep_groups(rewards, config.filter_low, config.filter_high)
        out: dict[str, float] = {}
        for task in dict.fromkeys(task_key(s) for s in batch):
            rows = [i for i, s in enumerate(batch) if task_key(s) == task]
            self.drawn[task] = self.drawn.get(task, 0) + len(rows)
            self.kept[task] = self.kept.get(task, 0) + int(keep[rows].sum())
            out[f"success/{task}"] = float(rewards[rows].mean())
            out[f"kept/{task}"] = int(keep[rows].sum())
        return out


def _draw_starts(
    starts: Sequence[Start],
    config: GRPOConfig,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> list[Start]:
    idx = rng.choice(
        len(starts),
        size=config.starts_per_step,
        replace=len(starts) < config.starts_per_step,
        p=weights,
    )
    return [vary_start(starts[i], config, rng) for i in idx]


def vary_start(start: Start, config: GRPOConfig, rng: np.random.Generator) -> Start:
    """``start`` as one group of a step sees it: with ``config.distractor_prob``, distractor
    shapes pasted into its frame (``add_distractors``); with ``config.paraphrase_prob``, its
    instruction replaced by one of its task's training instructions (``paraphrase_instruction``,
    never a held-out paraphrase). Every draw comes from the GRPO ``rng`` (a run is reproducible),
    and an option at 0 draws nothing (a run without it draws exactly as before it existed). The
    whole group of the start shares the result: GRPO compares rollouts of one prompt."""
    frame, instruction = start.frame, start.instruction
    if config.distractor_prob > 0 and rng.random() < config.distractor_prob:
        from policy.augment import add_distractors

        frame = add_distractors(frame[None], rng)[0]
    if config.paraphrase_prob > 0 and rng.random() < config.paraphrase_prob:
        from policy.augment import paraphrase_instruction

        instruction = paraphrase_instruction(start.task, rng)
    if frame is start.frame and instruction is start.instruction:
        return start
    return Start(frame, instruction, start.task)


def check_paraphrasable(starts: Sequence[Start]) -> None:
    """Refuses starts whose task has no paraphrases (a novel task, or none named), for
    ``paraphrase_prob`` > 0: their instruction could not be replaced by a training one."""
    from robot_bridge.spec import paraphrased_tasks

    known = paraphrased_tasks()
    bad = sorted({s.task or repr(s.instruction) for s in starts if s.task not in known})
    if bad:
        raise ValueError(
            f"paraphrase_prob > 0 needs starts of tasks with paraphrases; {bad} have none "
            f"(tasks with paraphrases: {sorted(known)})"
        )


def judge_instruction(instruction: str) -> str:
    """The instruction the judge reads for a rollout: the task's own for one of its training
    paraphrases, else ``instruction`` itself."""
    from robot_bridge.spec import own_instruction

    return own_instruction(instruction)


def check_training_instructions(starts: Sequence[Start]) -> None:
    """Refuses a start whose instruction is kept for evaluation (a paraphrase no training may
    see, e.g. from an episode run on the evaluation instruction set): GRPO never trains on one."""
    from robot_bridge.spec import evaluation_only

    leaked = sorted({s.instruction for s in starts if evaluation_only(s.instruction)})
    if leaked:
        raise ValueError(
            f"GRPO starts carry evaluation-only paraphrases {leaked}: never for training"
        )
