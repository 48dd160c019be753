"""GRPO under data parallelism: which process imagines which rollout groups, with which random
stream, and which PPO samples it holds.

Launched by torchrun / ``accelerate launch`` (``policy.distributed``), ``train_grpo`` runs as:

* every rank draws the same step batch of P starts (same seeded generator), as SFT does;
* the P groups are cut into S equal *rollout parts* (``GRPOConfig.rollout_shards``; 0: one per
  process). Part ``p`` is imagined and judged as one batch, with its own generator seeded from
  ``(seed, step, p)``, and rank ``r`` of ``W`` takes parts ``[r S/W, (r+1) S/W)`` with its own
  world model and judge. The rollouts are therefore a function of ``(seed, S)``, not of the
  process count: W processes with S parts take the steps one process takes with S parts;
* the rewards are all-gathered (P x G floats), so every rank computes the same per-group
  advantages, dynamic-sampling filter, task weights and logged statistics over the whole batch;
* the PPO update walks the *global* shuffled sample order (a generator seeded alike on every
  rank); each rank computes the loss of the samples it holds, scaled by the global minibatch
  size, and the gradients are summed across ranks before clipping, so every optimizer step is
  the 1-process step and the weights stay identical;
* rank 0 alone shows progress and calls ``on_step`` (MLflow); callers save on rank 0.

Why not DistributedDataParallel here: a PPO minibatch may hold no sample of some rank (dynamic
sampling drops whole groups), and DDP's backward hook would then never fire on that rank while
the others wait; accumulating micro-batches would also need ``no_sync`` bookkeeping. One explicit
all-reduce per optimizer step is exact and simpler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from policy.distributed import DistContext


@dataclass(frozen=True)
class RolloutPlan:
    """How one step's ``n_groups`` groups are split into ``parts`` and over the processes."""

    ctx: DistContext
    n_groups: int
    parts: int

    @classmethod
    def make(cls, ctx: DistContext, n_groups: int, rollout_shards: int) -> RolloutPlan:
        parts = rollout_shards or ctx.world_size
        if parts % ctx.world_size:
            raise ValueError(
                f"GRPOConfig.rollout_shards={rollout_shards} must be a multiple of the "
                f"{ctx.world_size} processes (or 0: one part per process)"
            )
        if n_groups % parts:
            raise ValueError(
                f"starts_per_step={n_groups} does not split into {parts} equal rollout parts "
                f"(rollout_shards={rollout_shards}, {ctx.world_size} processes)"
            )
        return cls(ctx, n_groups, parts)

    @classmethod
    def single(cls, n_groups: int) -> RolloutPlan:
        """One process holding every group (``grpo_update`` called directly)."""
        return cls(DistContext(), n_groups, 1)

    @property
    def groups_per_part(self) -> int:
        return self.n_groups // self.parts

    @property
    def my_parts(self) -> range:
        per = self.parts // self.ctx.world_size
        return range(self.ctx.rank * per, (self.ctx.rank + 1) * per)

    @property
    def groups(self) -> range:
        """This rank's groups, as indices into the step's batch of starts."""
        g = self.groups_per_part
        return range(self.my_parts.start * g, self.my_parts.stop * g)

    def generator(
        self, part: int, step: int, seed: int, stream: torch.Generator, device: torch.device
    ) -> torch.Generator:
        """Part ``part``'s generator; with a single part the run's own stream, so a 1-process
        run with the default ``rollout_shards`` draws exactly as it always has."""
        if self.parts == 1:
            return stream
        state = np.random.SeedSequence([seed, step, part]).generate_state(2, dtype=np.uint32)
        return torch.Generator(device=device).manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def step_rollouts(
    plan: RolloutPlan,
    batch: Sequence,
    step: int,
    seed: int,
    stream: torch.Generator,
    make: Callable,
):
    """(this rank's rollouts, the whole batch's (P*G,) rewards).

    ``make(starts, generator) -> (Rollouts, rewards)`` imagines and judges one part; this rank's
    parts are concatenated (group indices local to the rank, in batch order)."""
    if len(batch) != plan.n_groups:
        raise ValueError(f"batch of {len(batch)} starts, plan for {plan.n_groups} groups")
    g = plan.groups_per_part
    pieces, rewards = [], []
    for p in plan.my_parts:
        gen = plan.generator(p, step, seed, stream, stream.device)
        rollouts, r = make(list(batch[p * g : (p + 1) * g]), gen)
        pieces.append(rollouts)
        rewards.append(torch.as_tensor(r, dtype=torch.float32).cpu())
    return concat_rollouts(pieces), plan.ctx.all_gather(torch.cat(rewards))


def concat_rollouts(pieces: list):
    """Rollouts of consecutive parts as one batch (group indices renumbered)."""
    if len(pieces) == 1:
        return pieces[0]
    groups, offset = [], 0
    for r in pieces:
        groups.append(r.group + offset)
        offset += int(r.group.max()) + 1
    cat = {
        name: torch.cat([getattr(r, name) for r in pieces])
        for name in ("observations", "tokens", "old_logprobs", "videos")
    }
    instructions = [s for r in pieces for s in r.instructions]
    return dataclasses.replace(pieces[0], **cat, instructions=instructions, group=torch.cat(groups))


@dataclass(frozen=True)
class SampleShard:
    """Where this rank's PPO samples sit in the global sample order of an update.

    A sample is one (rollout, chunk) of a kept group; globally they are ordered by rollout, then
    chunk, so a rank's samples are the contiguous range ``[offset, offset + count)``."""

    offset: int
    count: int
    total: int

    @classmethod
    def make(cls, kept_rollouts: torch.Tensor, first: int, n_local: int, chunks: int):
        """``kept_rollouts`` (P*G,) bool over the whole batch; this rank holds rollouts
        ``[first, first + n_local)``."""
        before = int(kept_rollouts[:first].sum())
        mine = int(kept_rollouts[first : first + n_local].sum())
        return cls(before * chunks, mine * chunks, int(kept_rollouts.sum()) * chunks)

    def local(self, part: torch.Tensor) -> torch.Tensor:
        """The entries of a global sample-index list held here, as local indices, order kept."""
        held = part[(part >= self.offset) & (part < self.offset + self.count)]
        return held - self.offset
