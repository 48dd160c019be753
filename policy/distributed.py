"""Data-parallel training on several processes (GPUs, or CPU processes for tests): torch DDP.

A trainer started by ``torchrun --nproc_per_node N`` (``python -m torch.distributed.run``) or
``accelerate launch`` finds ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (and ``MASTER_ADDR`` /
``MASTER_PORT``) in its environment; ``DistContext.setup`` then joins the process group (NCCL on
CUDA, gloo on the CPU) and pins each rank to ``cuda:LOCAL_RANK``. Without those variables, or
with ``WORLD_SIZE=1``, it is a no-op context and the trainer runs exactly as before.

The scheme, the same for every trainer that uses it:

* every rank draws the *same* global batch from the same seeded generator (and augments the
  whole global batch with it), then keeps its own contiguous slice (``DistContext.shard``), so
  N ranks see exactly the batch one process would, and the generators stay in step;
* the model is wrapped in ``DistributedDataParallel``: rank 0's weights are broadcast at wrap
  time, and the gradients are all-reduced (averaged) during ``backward`` -- with equal slices the
  average of per-rank mean losses is the global mean, so one step matches the 1-process step;
* scalars for logging (loss, accuracy) are averaged across ranks (``DistContext.mean``), which
  also makes a NaN on any rank visible to all of them, so they raise together instead of one
  rank raising while the others wait in an all-reduce;
* only rank 0 (``is_main_process()``) writes checkpoints, MLflow and progress bars.

GRPO shards its rollout groups instead of a sampled batch and reduces gradients itself
(``policy.grpo_shard`` says how and why); so do the world model (``world_model.train``, batch
parts with their own generators, ``part_generator``) and the judge (``reward.train``), whose
losses are not a ``forward`` DDP could hook.

Why DDP and not ``accelerate.Accelerator``: accelerate is here only as a transitive dependency
(lerobot's), not one the project declares; for plain data parallelism it wraps the same DDP; and
its dataloader sharding would draw the per-rank batches differently from the 1-process run, while
this scheme keeps the project's own seeded sampling and augmentation bit-for-bit. ``accelerate
launch`` still works as a launcher: it sets the same environment variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


def launch_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from a torchrun / accelerate launch; None when not launched
    distributed (no ``WORLD_SIZE``) or launched with a single process."""
    world = os.environ.get("WORLD_SIZE", "").strip()
    if not world or int(world) <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as e:
        raise RuntimeError(
            f"WORLD_SIZE={world} is set but RANK/LOCAL_RANK are missing or malformed ({e}); "
            "launch with torchrun (python -m torch.distributed.run) or accelerate launch"
        ) from e
    return rank, int(world), local


def is_main_process() -> bool:
    """True on rank 0 of an initialised process group, and in any single-process run: the one
    process that should save checkpoints and log to MLflow."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    env = launch_env()
    return env is None or env[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed), e.g. before reading rank 0's checkpoint."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (no-op when not distributed); call once, at the end of a run."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: torch.device) -> tuple[DistContext, torch.device]:
        """Join the launch's process group (if any) and return (context, this rank's device).

        On CUDA each rank gets ``cuda:LOCAL_RANK`` (a device setting naming another index is an
        error: two ranks on one GPU would deadlock NCCL); the CPU stays the CPU. An already
        initialised group (e.g. set up by the caller) is used as it is.
        """
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
            env = launch_env()
            local = env[2] if env is not None else rank
        else:
            env = launch_env()
            if env is None:
                return cls(), device
            if not dist.is_available():
                raise RuntimeError("launched distributed, but this torch has no torch.distributed")
            rank, world, local = env
        if device.type == "cuda":
            if device.index is not None and device.index != local:
                raise ValueError(
                    f"device {device} on local rank {local} of a {world}-process launch: "
                    "use device 'auto' or 'cuda' so each rank takes cuda:LOCAL_RANK"
                )
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"local rank {local} but only {torch.cuda.device_count()} CUDA devices"
                )
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        return cls(rank, world, local), device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (its ``forward`` then all-reduces gradients);
        the model itself when not distributed."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        dev = next(model.parameters()).device
        return DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )

    def check_batch(self, batch_size: int, what: str = "batch_size") -> int:
        """The per-rank batch for a global ``batch_size`` (which must split evenly)."""
        if batch_size % self.world_size:
            raise ValueError(
                f"{what} {batch_size} (the global batch) does not split evenly over "
                f"{self.world_size} processes"
            )
        return batch_size // self.world_size

    def shard(self, global_indices: np.ndarray) -> slice:
        """This rank's contiguous slice of a global batch (the whole batch when not distributed)."""
        per = self.check_batch(len(global_indices))
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a small tensor over ranks (the tensor itself when not distributed)."""
        if not self.enabled:
            return values
        out = values.detach().to(self._device(), copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(values.device)

    def all_gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's ``values`` (equal shapes) concatenated along dim 0 in rank order."""
        if not self.enabled:
            return values
        local = values.detach().to(self._device()).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(values.device)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any: a rank about to raise tells the
        others, which would otherwise wait for it in the next collective."""
        if not self.enabled:
            return flag
        return bool(self.sum(torch.tensor([float(flag)])) > 0)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients of ``params`` in one flat buffer, a missing gradient
        counting as zeros (a rank may hold no sample of a minibatch)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (what DDP does when it wraps a model)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def _device(self) -> torch.device:
        # NCCL collectives need CUDA tensors; gloo takes CPU ones
        return (
            torch.device("cuda", self.local_rank)
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )

    def broadcast_object(self, obj, src: int = 0):
        """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself when not distributed)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean of a small tensor over ranks (the tensor itself when not distributed)."""
        if not self.enabled:
            return values
        out = values.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size


def part_generator(seed: int, step: int, part: int, device: torch.device | str) -> torch.Generator:
    """A generator for part ``part`` of step ``step``'s batch, seeded from ``(seed, step, part)``:
    the same on every rank, whichever process holds the part (``policy.grpo_shard`` seeds its
    rollout parts this way)."""
    state = np.random.SeedSequence([seed, step, part]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
