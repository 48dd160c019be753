"""OpenVLA / OpenVLA-OFT checkpoints: their ``dataset_statistics.json`` and their action bins.

An OpenVLA-family checkpoint folder carries ``dataset_statistics.json``, one entry per training
dataset (the model's ``norm_stats``)::

    {"bridge_orig": {"action": {"mean", "std", "max", "min", "q01", "q99", "mask"},
                     "proprio": {...}, "num_transitions": N, "num_trajectories": M}, ...}

Actions are normalised to [-1, 1] between q01 and q99 ("BOUNDS_Q99") in the dimensions where
``mask`` is true; elsewhere (Bridge: the gripper) the value is used raw. Un-normalising is
``a = 0.5 * (x + 1) * (q99 - q01) + q01`` where ``mask``, ``a = x`` elsewhere.

The discrete-token layout differs from our own tokenizer's (``policy.tokenization``), so a
checkpoint trained by OpenVLA decodes with :class:`OpenVLAActionTokenizer`: 256 bin *edges*
``linspace(-1, 1, 256)`` with the 255 centres between them, and token ``vocab_size - d`` for
``d = digitize(x, edges)`` (so larger actions get *smaller* ids, at the top of the vocabulary).
Both layouts share the last 256 ids of the base vocabulary, so the policy code is the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policy.tokenization import N_BINS, ActionTokenizer

STATISTICS_NAME = "dataset_statistics.json"
OPENVLA_NORM = "OPENVLA_BINS_Q99"  # the ``norm`` our saved action stats carry for this layout
_ACTION_KEYS = ("q01", "q99")


class StatisticsError(ValueError):
    """A ``dataset_statistics.json`` is missing, malformed, or has no (or no single) dataset."""


@dataclass(frozen=True)
class NormStats:
    """One modality's statistics; every array is (D,). ``mask`` True: normalised dimension."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.q01.shape[0])


@dataclass(frozen=True)
class DatasetStatistics:
    name: str
    action: NormStats
    proprio: NormStats | None = None
    num_transitions: int | None = None
    num_trajectories: int | None = None


def read_dataset_statistics(path: str | Path) -> dict[str, DatasetStatistics]:
    """Every dataset in a ``dataset_statistics.json`` (``path``: the file or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / STATISTICS_NAME
    if not p.is_file():
        raise StatisticsError(f"no {STATISTICS_NAME} at {p}")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise StatisticsError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not doc:
        raise StatisticsError(f"{p} must map dataset names to statistics, got {type(doc).__name__}")
    out = {}
    for name, entry in doc.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("action"), dict):
            raise StatisticsError(f"{p}: dataset {name!r} has no 'action' statistics object")
        proprio = entry.get("proprio")
        out[name] = DatasetStatistics(
            name=name,
            action=_norm_stats(entry["action"], f"{p}: {name}.action"),
            # OpenVLA writes zero-filled proprio statistics for datasets without proprioception
            proprio=_norm_stats(proprio, f"{p}: {name}.proprio") if proprio else None,
            num_transitions=_optional_int(entry.get("num_transitions")),
            num_trajectories=_optional_int(entry.get("num_trajectories")),
        )
    return out


def select_statistics(
    stats: dict[str, DatasetStatistics], unnorm_key: str | None, where: str = STATISTICS_NAME
) -> DatasetStatistics:
    """The dataset named ``unnorm_key``; ``None`` only when there is exactly one (as OpenVLA's
    ``predict_action`` resolves it, but an error rather than an assert)."""
    names = sorted(stats)
    if unnorm_key is None:
        if len(stats) != 1:
            raise StatisticsError(
                f"{where} holds {len(stats)} datasets {names}; set VLAConfig.unnorm_key to the "
                "one whose actions this policy should produce"
            )
        return stats[names[0]]
    if unnorm_key not in stats:
        raise StatisticsError(
            f"unnorm_key {unnorm_key!r} is not in {where}; available datasets: {names}"
        )
    return stats[unnorm_key]


def unnormalize_actions(normalized: np.ndarray, action: NormStats) -> np.ndarray:
    """(..., D) values in [-1, 1] -> raw actions, OpenVLA-OFT's BOUNDS_Q99 rule."""
    x = np.asarray(normalized, dtype=np.float64)
    if x.shape[-1] != action.dim:
        raise ValueError(f"actions must end in {action.dim} dims, got shape {x.shape}")
    raw = 0.5 * (x + 1) * (action.q99 - action.q01) + action.q01
    return np.where(action.mask, raw, x)


def oft_action_stats(ds: DatasetStatistics) -> dict:
    """Our saved action-stats dict (what ``VLAPolicy.set_action_stats`` takes) for a dataset."""
    a = ds.action
    return {
        "q01": a.q01.tolist(),
        "q99": a.q99.tolist(),
        "mask": a.mask.astype(bool).tolist(),
        "n_bins": N_BINS,
        "norm": OPENVLA_NORM,
        "dataset": ds.name,
    }


@dataclass
class OpenVLAActionTokenizer(ActionTokenizer):
    """OpenVLA's discretisation (see the module doc) behind ``ActionTokenizer``'s interface.

    ``bins`` (what ``to_bins`` returns and ``from_bins`` takes) are still ``token - token_start``
    in [0, 256), so the policy's sampling and log-probs are layout-agnostic.
    """

    mask: np.ndarray | None = None
    dataset: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_bins != N_BINS:
            raise ValueError(f"the OpenVLA layout has {N_BINS} bins, got n_bins={self.n_bins}")
        d = self.action_dim
        self.mask = (
            np.ones(d, dtype=bool) if self.mask is None else np.asarray(self.mask, dtype=bool)
        )
        if self.mask.shape != (d,):
            raise ValueError(f"mask must have {d} entries, got shape {self.mask.shape}")
        self._edges = np.linspace(-1.0, 1.0, N_BINS)
        self._centres = (self._edges[:-1] + self._edges[1:]) / 2  # (255,)
        self._action = NormStats(self.q01, self.q99, self.mask)

    def to_bins(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        if a.shape[-1] != self.action_dim:
            raise ValueError(f"actions must end in {self.action_dim} dims, got shape {a.shape}")
        span = np.maximum(self.q99 - self.q01, 1e-8)
        x = np.where(self.mask, 2 * (a - self.q01) / span - 1, a)
        d = np.digitize(np.clip(x, -1.0, 1.0), self._edges)  # 1..256
        return (N_BINS - d).astype(np.int64)  # token = vocab_size - d = token_start + 256 - d

    def from_bins(self, bins: np.ndarray) -> np.ndarray:
        b = np.asarray(bins)
        if b.min(initial=0) < 0 or b.max(initial=0) >= N_BINS:
            raise ValueError(f"bins must lie in [0, {N_BINS}), got range [{b.min()}, {b.max()}]")
        # OpenVLA: d = vocab_size - token = 256 - b, centre index clip(d - 1, 0, 254)
        x = self._centres[np.clip(N_BINS - 1 - b, 0, N_BINS - 2)]
        return unnormalize_actions(x, self._action).astype(np.float32)

    @property
    def bin_width(self) -> np.ndarray:
        return np.where(self.mask, (self.q99 - self.q01) / (N_BINS - 1), 2.0 / (N_BINS - 1))

    def to_dict(self) -> dict:
        return {
            **super().to_dict(),
            "mask": self.mask.tolist(),
            "norm": OPENVLA_NORM,
            "dataset": self.dataset,
        }


def action_tokenizer_from_dict(stats: dict, token_start: int) -> ActionTokenizer:
    """The tokenizer a saved action-stats dict describes: ours, or OpenVLA's layout."""
    if stats.get("norm") == OPENVLA_NORM:
        return OpenVLAActionTokenizer(
            np.asarray(stats["q01"]),
            np.asarray(stats["q99"]),
            token_start,
            int(stats.get("n_bins", N_BINS)),
            mask=np.asarray(stats.get("mask", np.ones(len(stats["q01"]), dtype=bool))),
            dataset=str(stats.get("dataset", "")),
        )
    return ActionTokenizer.from_dict(stats, token_start)


def _norm_stats(d: dict, where: str) -> NormStats:
    missing = [k for k in _ACTION_KEYS if k not in d]
    if missing:
        raise StatisticsError(f"{where} lacks {missing} (BOUNDS_Q99 needs q01 and q99)")
    q01 = _vector(d["q01"], f"{where}.q01")
    arrays = {
        k: _vector(d[k], f"{where}.{k}") for k in ("q99", "mean", "std", "min", "max") if k in d
    }
    mask = np.asarray(d.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool).reshape(-1)
    for k, v in {**arrays, "mask": mask}.items():
        if v.shape != q01.shape:
            raise StatisticsError(f"{where}.{k} has {v.shape[0]} entries, q01 has {q01.shape[0]}")
    return NormStats(q01=q01, mask=mask, **arrays)


def _vector(value, where: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise StatisticsError(f"{where} is not a list of numbers: {e}") from None
    if not np.all(np.isfinite(v)):
        raise StatisticsError(f"{where} has non-finite values: {v.tolist()}")
    return v


def _optional_int(value) -> int | None:
    return None if value is None else int(np.asarray(value).reshape(-1)[0])
