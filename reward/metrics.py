"""Binary classification metrics for the success judge.

Undefined ratios (no predicted positives for precision, no true positives in the labels for
recall, neither for F1, an empty set for accuracy) are reported as ``None``, never as a made-up
0 or 1: a judge that never says "success" has no precision, it does not have precision 0.
"""

from __future__ import annotations

import numpy as np


def _as_binary(x: np.ndarray | list, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype != bool:
        if not np.all(np.isin(a, (0, 1))):
            bad = np.unique(a[~np.isin(a, (0, 1))])[:5].tolist()
            raise ValueError(f"{name} must hold only 0/1 or bool, got values {bad}")
        a = a.astype(bool)
    return a


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def binary_metrics(
    pred: np.ndarray | list, label: np.ndarray | list
) -> dict[str, float | int | None]:
    """precision, recall, f1, accuracy (None where undefined) and the confusion counts."""
    p = _as_binary(pred, "pred")
    y = _as_binary(label, "label")
    if p.shape != y.shape:
        raise ValueError(f"pred and label must have the same shape, got {p.shape} and {y.shape}")
    tp = int(np.sum(p & y))
    fp = int(np.sum(p & ~y))
    fn = int(np.sum(~p & y))
    tn = int(np.sum(~p & ~y))
    n = tp + fp + fn + tn
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        # 2tp / (2tp + fp + fn) is the harmonic mean of precision and recall where both exist,
        # and stays defined (0) when one of them is 0 but the other is undefined.
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, n),
        "n": n,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }
