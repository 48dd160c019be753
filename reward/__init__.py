"""The VLM success judge: scores real or imagined rollouts for GRPO, and its finetuning.

``make_judge("vlm" | "openai", config)`` / ``load_judge(dir)`` build judges; torch, transformers
and openai are imported only when a backend is used.
"""

from reward.config import (
    AugmentConfig,
    JudgeConfigError,
    JudgeTrainConfig,
    OpenAIJudgeConfig,
    VLMJudgeConfig,
)
from reward.judge import (
    JUDGES,
    JudgeError,
    JudgeResult,
    SuccessJudge,
    UnknownJudgeError,
    get_judge_class,
    load_judge,
    majority_vote,
    make_judge,
    select_frame_indices,
)
from reward.metrics import binary_metrics

_LAZY = {
    "VLMJudge": "reward.vlm",
    "CheckpointError": "reward.vlm",
    "OpenAIJudge": "reward.openai_judge",
    "finetune_judge": "reward.train",
    "calibrate_threshold": "reward.train",
    "evaluate_judge": "reward.train",
    "JudgeDataError": "reward.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reward' has no attribute {name!r}")


__all__ = [
    "JUDGES",
    "AugmentConfig",
    "JudgeConfigError",
    "JudgeError",
    "JudgeResult",
    "JudgeTrainConfig",
    "OpenAIJudgeConfig",
    "SuccessJudge",
    "UnknownJudgeError",
    "VLMJudgeConfig",
    "binary_metrics",
    "get_judge_class",
    "load_judge",
    "majority_vote",
    "make_judge",
    "select_frame_indices",
    *_LAZY,
]
