"""Training windows (context frames, actions, next frame) cut from recorded episodes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from robot_bridge.episodes.schema import EpisodeLike
from world_model.codec import Codec, resize_frames


class EmptyDatasetError(ValueError):
    pass


class WindowDataset:
    """All (t -> t+1) transitions of a list of episodes, frames cached once in codec space.

    Window for transition t of an episode: context = frames[t-Tc+1 .. t] (indices below 0 repeat
    frame 0, as ``start`` does for a real initial frame), action = actions[t], target = frames[t+1].
    The action that led to context frame s is actions[s-1], unknown (null) for s <= 0. With
    ``anchor``, a slot holding frame 0 (its action unknown) comes first in every window, as the
    model's ``start`` keeps the real initial frame there for a whole rollout.
    """

    def __init__(
        self,
        episodes: Sequence[EpisodeLike],
        codec: Codec,
        image_size: int,
        context_frames: int,
        action_dim: int,
        encode_batch: int = 64,
        anchor: bool = False,
    ) -> None:
        caches, actions, ctx_idx, tgt_idx, act_idx = [], [], [], [], []
        frame_off = act_off = 0
        tc = context_frames
        for i, ep in enumerate(episodes):
            frames, acts = _check_episode(ep, i, action_dim)
            n = acts.shape[0]
            if n == 0:
                continue
            with torch.no_grad():
                small = resize_frames(frames, image_size)  # (T+1, 3, S, S) uint8
                caches.append(torch.cat([codec.to_cache(c) for c in small.split(encode_batch)]))
            actions.append(torch.from_numpy(acts))
            t = np.arange(n)
            s = t[:, None] - tc + 1 + np.arange(tc)[None]  # (n, Tc) frame index of each slot
            if anchor:  # frame 0 first; -1 below makes its action unknown, as for s <= 0
                s = np.concatenate([np.full((n, 1), -1), s], axis=1)
            ctx_idx.append(frame_off + np.maximum(s, 0))
            act_idx.append(np.where(s >= 1, act_off + s - 1, -1))
            tgt_idx.append(frame_off + t + 1)
            frame_off += n + 1
            act_off += n
        if not caches:
            raise EmptyDatasetError(
                f"no transitions to train on: {len(episodes)} episodes given, none with at least one action"
            )
        self.cache = torch.cat(caches)  # (N_frames, ...) codec cache
        self.actions = torch.cat(actions)  # (N_actions, A)
        self.context_index = torch.from_numpy(np.concatenate(ctx_idx))  # (N, Tc)
        self.context_action_index = torch.from_numpy(np.concatenate(act_idx))  # (N, Tc), -1 unknown
        self.target_index = torch.from_numpy(np.concatenate(tgt_idx))  # (N,)
        self.codec = codec

    @classmethod
    def for_model(cls, episodes: Sequence[EpisodeLike], model) -> WindowDataset:
        """The windows ``model`` (an ``ActionConditionedWorldModel``) trains and is judged on."""
        cfg = model.config
        return cls(
            episodes,
            model.codec,
            cfg.image_size,
            cfg.context_frames,
            cfg.action_dim,
            anchor=cfg.anchor_first_frame,
        )

    def __len__(self) -> int:
        return len(self.target_index)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Windows ``idx`` (B,) in model space: context (B, Tc, C, h, w), target (B, C, h, w), ..."""
        ctx_i = self.context_index[idx]  # (B, Tc)
        context = self.codec.from_cache(self.cache[ctx_i.flatten()])  # (B*Tc, C, h, w)
        known = self.context_action_index[idx] >= 0  # (B, Tc)
        return {
            "context": context.view(*ctx_i.shape, *context.shape[1:]),  # (B, Tc, C, h, w)
            "context_actions": self.actions[self.context_action_index[idx].clamp(min=0)]
            * known[..., None],
            "context_known": known,
            "action": self.actions[idx],  # transition n's action is the n-th action overall
            "target": self.codec.from_cache(self.cache[self.target_index[idx]]),
        }

    def action_stats(self) -> tuple[list[float], list[float]]:
        """Per-dimension mean and std (floored, so a constant dimension does not blow up)."""
        mean = self.actions.mean(0)
        std = self.actions.std(0).clamp(min=1e-3)
        return mean.tolist(), std.tolist()


def _check_episode(ep: EpisodeLike, i: int, action_dim: int) -> tuple[np.ndarray, np.ndarray]:
    frames, acts = np.asarray(ep.frames), np.asarray(ep.actions, dtype=np.float32)
    name = getattr(ep, "episode_id", f"#{i}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"episode {name}: frames must be (T+1, H, W, 3) uint8, got {frames.shape} {frames.dtype}"
        )
    if acts.ndim != 2 or acts.shape[1] != action_dim or frames.shape[0] != acts.shape[0] + 1:
        raise ValueError(
            f"episode {name}: expected actions (T, {action_dim}) with T+1 frames, "
            f"got actions {acts.shape} and {frames.shape[0]} frames"
        )
    if not np.isfinite(acts).all():
        raise ValueError(f"episode {name}: actions contain NaN or inf")
    return frames, acts
