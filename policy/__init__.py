"""VLA policy (transformers), action tokenization, SFT; GRPO lives in policy.grpo.

Names are imported lazily so that ``import policy`` does not pull in torch/transformers.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VLAConfig": "policy.config",
    "ActionTokenizer": "policy.tokenization",
    "format_prompt": "policy.tokenization",
    "VLAPolicy": "policy.vla",
    "PolicySample": "policy.vla",
    "TokenStats": "policy.vla",
    "CheckpointError": "policy.vla",
    "train_sft": "policy.sft",
    "SFTConfig": "policy.sft",
    "AugmentConfig": "policy.augment",
    "add_distractors": "policy.augment",
    "VLAStationPolicy": "policy.station",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'policy' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
