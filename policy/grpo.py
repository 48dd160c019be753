"""GRPO in imagination (World-Gymnast / SimpleVLA-RL recipe).

For each start (a real initial frame and an instruction) draw a group of ``G`` closed-loop
rollouts in the world model: the policy sees the latest (imagined) frame, samples a chunk of
actions at temperature 1.6, the world model imagines one frame per action, ``horizon_chunks``
times. The judge scores every rollout (0/1 by majority vote); advantages are the group z-score of
the outcome; groups whose success rate is outside [0.1, 0.9] carry no signal and are dropped
(dynamic sampling); the loss is PPO's clipped surrogate with an asymmetric clip (0.2 low / 0.28
high), averaged over action tokens, with no KL and no entropy term by default (``kl_coef`` anchors
to a frozen copy of the starting policy).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gymnast_common.config import Config
from policy.grpo_math import (  # noqa: F401  (re-exported: the loss lives in one place)
    clipped_surrogate,
    group_advantages,
    k3,
    keep_groups,
    reference_kl,
    task_balance_weights,
)
from policy.grpo_shard import RolloutPlan, SampleShard, step_rollouts
from policy.grpo_starts import (  # noqa: F401 (Start is part of GRPO's API)
    Start,
    TaskSignal,
    _draw_starts,
    check_paraphrasable,
    check_training_instructions,
    judge_instruction,
    task_key,
    training_starts,
    vary_start,
)

PRESETS: dict[str, dict] = {
    # the tiny VLA is trained on Gaussian-smoothed bins, so its distribution is already wide:
    # temperature 1.0 gives it about the spread 1.6 gives a sharp 7B OFT policy (measured on the
    # sim, 8 demos/task: open drawer 35% at T=1.0, 15% at T=1.6)
    "tiny": {
        "group_size": 8,
        "starts_per_step": 4,
        "horizon_chunks": 4,  # 20 actions: the sim's expert needs 8-17, the SFT policy ~10
        "temperature": 1.0,
        "ppo_epochs": 2,
        "lr": 1e-4,
        "steps": 20,
        "judge_samples": 3,
        "minibatch_size": 64,
    },
    # the dataclass defaults: 20 starts x 8 rollouts x 8 chunks (the paper's 160 rollouts a step)
    "paper": {},
}
TASK_SAMPLING = ("uniform", "signal", "balanced")


@dataclass
class GRPOConfig(Config):
    PRESETS = PRESETS

    group_size: int = 8  # G rollouts per start
    starts_per_step: int = 20  # prompts per step (the paper: 20 x 8 = 160 rollouts)
    horizon_chunks: int = 8  # policy calls per rollout (8 x 5 actions = 40 frames)
    temperature: float = 1.6
    clip_low: float = 0.2
    clip_high: float = 0.28
    lr: float = 5e-6
    grad_clip: float = 1.0
    ppo_epochs: int = 1
    minibatch_size: int = 64  # rollout-chunks per micro-batch (gradients accumulate: memory)
    updates_per_epoch: int = 1  # optimizer steps per PPO epoch (the epoch's shuffled minibatches)
    # > 0 adds kl_coef * KL(pi || pi_ref) (k3 estimator, per token), pi_ref = the policy GRPO
    # started from, frozen: an anchor to the SFT policy the world model has seen the actions of
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    filter_low: float = 0.1  # keep groups with success rate in [filter_low, filter_high]
    filter_high: float = 0.9
    steps: int = 100
    judge_samples: int = 5
    # World-Gymnast-Distract: the chance a drawn start's frame gets distractor shapes pasted in
    # (``policy.augment.add_distractors``), drawn by the GRPO rng, the same for its whole group
    distractor_prob: float = 0.0
    # World-Gymnast-Language: the chance a drawn start's instruction is replaced by one of its
    # task's training instructions (``policy.augment.paraphrase_instruction``; never a held-out
    # paraphrase), one per start, so its whole group follows the same prompt. The judge still
    # reads the task's own instruction (``judge_instruction``): the reward does not hinge on
    # whether the judge understood a wording it was not trained on
    paraphrase_prob: float = 0.0
    # how a step's starts are drawn: "uniform" over all starts, or "signal": task first, each task
    # weighted by the share of its groups that carried signal (were kept; Laplace-smoothed), then
    # a start of that task uniformly. A task the policy never (or always) solves in imagination
    # then stops filling the batch with groups that dynamic sampling drops anyway. "balanced": a
    # task whose kept share is at least half the best task's is drawn as often as the best one, a
    # poorer one in proportion; a task the policy solves less often then still fills its share
    # (with "signal", the drawer task with fewer mixed groups got a third of the draws, and its
    # real success moved only as a side effect of the other's updates)
    task_sampling: str = "uniform"
    # True: each task with kept groups carries an equal share of the update (its groups'
    # advantages scaled by kept / (tasks kept * its kept)), not a share by its count of groups
    task_balanced_loss: bool = False
    # GRPO trains on the starts of these tasks only (empty: every task). The policy is shared, so
    # the other tasks still move, as a side effect; the snapshot check on the station guards them
    train_tasks: tuple[str, ...] = ()
    seed: int = 0
    # where train_grpo puts the policy, the world model and the judge, and whether their forward
    # passes autocast to bf16 (``robot_bridge.devices``: "auto" follows GYMNAST_DEVICE / the machine)
    device: str = "auto"
    precision: str = "auto"
    # a step's groups are imagined and judged in this many equal parts, each with a generator
    # seeded from (seed, step, part); 0: one part per process. Under W processes each imagines
    # rollout_shards / W parts, so a run's result depends on this, not on W (policy.grpo_shard)
    rollout_shards: int = 0

    def __post_init__(self) -> None:
        for name in (
            "group_size",
            "starts_per_step",
            "horizon_chunks",
            "ppo_epochs",
            "minibatch_size",
            "updates_per_epoch",
            "steps",
            "judge_samples",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_shards < 0:
            raise ValueError(f"rollout_shards must be >= 0, got {self.rollout_shards}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 for a group z-score, got {self.group_size}")
        if not 0 <= self.filter_low <= self.filter_high <= 1:
            raise ValueError(
                f"need 0 <= filter_low <= filter_high <= 1, got {self.filter_low} and {self.filter_high}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for rollouts, got {self.temperature}")
        if not (0 < self.clip_low < 1 and self.clip_high > 0):
            raise ValueError(
                f"clip_low must be in (0, 1) and clip_high > 0, got {self.clip_low}, {self.clip_high}"
            )
        for name in ("distractor_prob", "paraphrase_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not isinstance(self.task_balanced_loss, bool):
            raise ValueError(f"task_balanced_loss must be a bool, got {self.task_balanced_loss!r}")
        # a JSON override gives a list; a bare string would select tasks by its letters
        if isinstance(self.train_tasks, str) or not all(
            isinstance(t, str) and t for t in self.train_tasks
        ):
            raise ValueError(f"train_tasks must be a list of task names, got {self.train_tasks!r}")
        self.train_tasks = tuple(self.train_tasks)
        from robot_bridge.devices import check_device_setting, check_precision_setting

        check_device_setting(self.device, "GRPOConfig.device")
        check_precision_setting(self.precision, "GRPOConfig.precision")
        if self.task_sampling not in TASK_SAMPLING:
            raise ValueError(
                f"task_sampling must be one of {TASK_SAMPLING}, got {self.task_sampling!r}"
            )


@dataclass
class Rollouts:
    """A batch of closed-loop imagined rollouts, B = starts x G."""

    observations: torch.Tensor  # (B, C, h, w, 3) uint8: the frame the policy saw before chunk c
    tokens: torch.Tensor  # (B, C, N) long: sampled action tokens, N = K * 7
    old_logprobs: torch.Tensor  # (B, C, N) log pi_old(token) at the rollout temperature
    videos: torch.Tensor  # (B, T + 1, h, w, 3) uint8: start frame + one frame per action
    instructions: list[str]  # (B,)
    group: torch.Tensor  # (B,) long: index of the start each rollout belongs to


@dataclass
class GRPOStats:
    step: int
    success_rate: float  # judge-scored success in imagination, over all rollouts
    kept_groups: int
    total_groups: int
    loss: float = float("nan")
    clipfrac: float = float("nan")
    approx_kl: float = float("nan")
    entropy: float = float("nan")
    grad_norm: float = float("nan")
    seconds: float = 0.0
    imagined_frames: int = 0
    extra: dict = field(default_factory=dict)


# --- rollouts -------------------------------------------------------------------------------------


@torch.no_grad()
def imagine_rollouts(
    policy,
    world_model,
    starts: Sequence[Start],
    config: GRPOConfig,
    generator: torch.Generator | None = None,
) -> Rollouts:
    """Closed-loop rollouts: G per start, ``horizon_chunks`` policy calls each."""
    if not starts:
        raise ValueError("imagine_rollouts needs at least one start")
    g = config.group_size
    frames0 = np.stack([s.frame for s in starts for _ in range(g)])  # (B, H, W, 3)
    instructions = [s.instruction for s in starts for _ in range(g)]
    world_generator = _generator_on(world_model.device, generator)
    state = world_model.start(frames0)
    # what the policy sees is the world model's own rendering of the start frame (same resolution
    # as every later frame), so the first chunk is not conditioned on a sharper image
    current = torch.as_tensor(_resize_like(frames0, world_model))  # (B, h, w, 3)
    observations, tokens, old_logprobs, video = [], [], [], [current]
    for _ in range(config.horizon_chunks):
        sample = policy.sample(
            current, instructions, temperature=config.temperature, generator=generator
        )
        observations.append(current)
        tokens.append(sample.tokens)
        old_logprobs.append(sample.logprobs)
        state, imagined = world_model.imagine(
            state, torch.as_tensor(sample.actions), world_generator
        )  # (B, K, h, w, 3)
        video.append(imagined.cpu())
        current = imagined[:, -1]
    return Rollouts(
        observations=torch.stack(observations, dim=1).cpu(),  # (B, C, h, w, 3)
        tokens=torch.stack(tokens, dim=1).cpu(),  # (B, C, N)
        old_logprobs=torch.stack(old_logprobs, dim=1).float().cpu(),  # (B, C, N)
        videos=torch.cat([video[0][:, None].cpu(), *video[1:]], dim=1),  # (B, T+1, h, w, 3)
        instructions=instructions,
        group=torch.arange(len(starts)).repeat_interleave(g),
    )


def _generator_on(device: torch.device, generator: torch.Generator | None):
    """``generator`` if it lives on ``device``; else one there, seeded from it (CUDA sampling
    refuses a CPU generator, and the policy and the world model may sit on different devices)."""
    if generator is None or generator.device.type == torch.device(device).type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def _resize_like(frames: np.ndarray, world_model) -> np.ndarray:
    size = world_model.config.image_size
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    t = torch.as_tensor(frames).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="area")
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, h, w, 3)


# --- one step -------------------------------------------------------------------------------------


def score_rollouts(judge, rollouts: Rollouts, config: GRPOConfig) -> torch.Tensor:
    """(B,) {0, 1} rewards from the judge's majority vote; any judge failure propagates."""
    return judge_rollouts(judge, rollouts, config)[0]


def judge_rollouts(
    judge, rollouts: Rollouts, config: GRPOConfig
) -> tuple[torch.Tensor, np.ndarray]:
    """``score_rollouts``' rewards and (B,) the judge's scores in [0, 1] (each rollout's mean
    score over its samples: what the vote thresholds, shown beside the rollouts it rewarded)."""
    videos = [v.numpy() for v in rollouts.videos]
    instructions = rollouts.instructions
    if config.paraphrase_prob > 0:
        instructions = [judge_instruction(t) for t in instructions]
    result = judge.judge(videos, instructions, n_samples=config.judge_samples)
    rewards = torch.as_tensor(result.rewards, dtype=torch.float32)
    if rewards.shape != (len(videos),):
        raise ValueError(f"judge returned {tuple(rewards.shape)} rewards for {len(videos)} videos")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"judge returned non-finite rewards: {rewards.tolist()}")
    return rewards, np.asarray(result.probabilities, dtype=np.float32).reshape(-1)


def grpo_update(
    policy,
    optimizer: torch.optim.Optimizer,
    rollouts: Rollouts,
    rewards: torch.Tensor,
    config: GRPOConfig,
    reference=None,
    group_tasks: Sequence[str] | None = None,
    precision: str = "fp32",
    *,
    plan: RolloutPlan | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """PPO epochs over the kept groups; returns loss statistics (NaN loss raises).

    ``reference``: the frozen starting policy, needed when ``config.kl_coef > 0``.
    ``group_tasks``: each start's task; given, each task's kept groups carry an equal share of
    the update (``task_balance_weights``). ``precision`` "bf16" autocasts the forward passes on
    CUDA (the policy's weights and the surrogate stay fp32). ``plan``: under data parallelism,
    ``rollouts`` hold this rank's groups (``plan.groups``) and ``rewards`` the whole batch's
    (``policy.grpo_shard``); None: every group is here. ``generator``: the PPO shuffle's.
    """
    if config.kl_coef > 0 and reference is None:
        raise ValueError("kl_coef > 0 needs the frozen reference policy (train_grpo makes one)")
    n_starts = rewards.numel() // config.group_size
    plan = plan or RolloutPlan.single(n_starts)
    per_group = rewards.view(n_starts, config.group_size)  # (P, G), the whole batch
    keep = keep_groups(per_group, config.filter_low, config.filter_high)  # (P,)
    stats = {"kept_groups": int(keep.sum()), "total_groups": n_starts}
    if not keep.any():
        return stats
    advantages = group_advantages(per_group)  # (P, G)
    if group_tasks is not None:
        advantages = advantages * task_balance_weights(group_tasks, keep)[:, None]
    b, c, n = rollouts.tokens.shape
    first = plan.groups.start * config.group_size  # this rank's first rollout in the batch
    kept_rollouts = keep.repeat_interleave(config.group_size)  # (P*G,)
    shard = SampleShard.make(kept_rollouts, first, b, c)
    rows = kept_rollouts[first : first + b].nonzero().squeeze(1)  # local rollouts, kept groups
    # flatten (rollout, chunk) pairs: every policy call is one PPO sample
    samples = (
        rollouts.observations[rows].reshape(-1, *rollouts.observations.shape[2:]),  # (M, h, w, 3)
        [rollouts.instructions[i] for i in rows.tolist() for _ in range(c)],
        rollouts.tokens[rows].reshape(-1, n).to(policy.device),  # (M, N)
        rollouts.old_logprobs[rows].reshape(-1, n).to(policy.device),  # (M, N)
        advantages.view(-1)[first + rows].repeat_interleave(c).to(policy.device),  # (M,)
    )
    params = [p for p in policy.parameters() if p.requires_grad]
    keys = ["loss", "clipfrac", "approx_kl", "entropy"] + (["ref_kl"] if config.kl_coef else [])
    totals = torch.zeros(len(keys), dtype=torch.float64)  # per-sample means, summed over epochs
    grad_norms = []
    policy.train()
    for _ in range(config.ppo_epochs):
        # PPO minibatches: the shuffled epoch split into ``updates_per_epoch`` optimizer steps, each
        # accumulating micro-batches of ``minibatch_size`` (memory); the order is the global one
        perm = torch.randperm(shard.total, generator=generator)
        for part in perm.tensor_split(min(config.updates_per_epoch, shard.total)):
            optimizer.zero_grad(set_to_none=True)
            error = _accumulate(
                policy, reference, samples, shard.local(part), len(part), shard.total,
                config, precision, keys, totals,
            )  # fmt: skip
            if plan.ctx.any(error is not None):  # every rank raises, none waits for another
                raise error or FloatingPointError("GRPO loss is non-finite on another rank")
            plan.ctx.sum_gradients(params)  # the global minibatch's gradient on every rank
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            grad_norms.append(float(grad_norm))
    policy.eval()
    totals = plan.ctx.sum(totals) / config.ppo_epochs
    return {
        **stats,
        **dict(zip(keys, totals.tolist(), strict=True)),
        "grad_norm": float(np.mean(grad_norms)),
        "optimizer_steps": len(grad_norms),
    }


def _accumulate(
    policy, reference, samples, idx_all, part_len, total, config, precision, keys, totals
) -> FloatingPointError | None:
    """Backward of this rank's samples ``idx_all`` of one minibatch of ``part_len`` (globally),
    micro-batch by micro-batch; adds their statistics to ``totals``. A non-finite loss is
    returned, not raised, so the caller can tell the other ranks first."""
    obs, instr, tokens, old, adv = samples
    for lo in range(0, len(idx_all), config.minibatch_size):
        idx = idx_all[lo : lo + config.minibatch_size]
        try:
            loss, s = _minibatch_loss(
                policy, reference, obs[idx], [instr[i] for i in idx.tolist()], tokens[idx],
                old[idx], adv[idx], config, precision,
            )  # fmt: skip
        except FloatingPointError as e:
            return e
        (loss * (len(idx) / part_len)).backward()
        totals += torch.tensor([s[k] for k in keys], dtype=torch.float64) * (len(idx) / total)
    return None


def _minibatch_loss(
    policy, reference, obs, instr, tokens, old, adv, config: GRPOConfig, precision: str = "fp32"
):
    """The clipped surrogate (+ KL to the reference, - entropy bonus) on one micro-batch."""
    from robot_bridge.devices import autocast

    with autocast(policy.device, precision):
        ts = policy.token_stats(obs, instr, tokens, temperature=config.temperature)
    loss, s = clipped_surrogate(ts.logprobs, old, adv, config.clip_low, config.clip_high)
    s = {**s, "entropy": float(ts.entropy.detach().mean())}
    if config.kl_coef > 0:
        with autocast(policy.device, precision):
            ref = reference_kl(reference, obs, instr, tokens, ts.logprobs, config.temperature)
        ref_kl = ref.float()
        loss = loss + config.kl_coef * ref_kl
        s["ref_kl"] = float(ref_kl.detach())
    if config.entropy_coef > 0:
        loss = loss - config.entropy_coef * ts.entropy.mean()
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"GRPO loss is {float(loss)} (non-finite) on a minibatch of {len(adv)}"
        )
    return loss, {**s, "loss": float(loss.detach())}


def train_grpo(
    policy,
    world_model,
    judge,
    starts: Sequence[Start],
    config: GRPOConfig,
    *,
    progress: bool = True,
    on_step=None,
    rollout_fn=None,
    on_rollouts=None,
) -> list[GRPOStats]:
    """Run ``config.steps`` GRPO steps; ``on_step(stats)`` is called after each (for tracking).

    ``on_rollouts(step, rollouts, rewards, scores)``, called after each step's update (before
    ``on_step``): the step's ``Rollouts`` (this rank's), their (B,) rewards and (B,) the judge's
    scores in [0, 1] (the rewards under ``rollout_fn``); for pictures of what GRPO was rewarded
    for (``pipeline.rollout_strip``). The arguments are the step's own: copy what you keep.

    ``rollout_fn(batch, generator) -> (Rollouts, rewards)`` replaces imagination and the judge
    (the world model and judge may then be None): the same GRPO in a simulator with its
    ground-truth reward (``policy.evaluate_sim.SimRollouts``, the bench's Sim-RL arm).

    The policy, the world model and the judge (when it has weights) move once to
    ``config.device``; rollouts and the update autocast per ``config.precision``.

    Launched with several processes (torchrun; ``policy.distributed``) it runs data-parallel:
    each rank imagines and judges its share of every step's groups with its own world model
    and judge, and every rank takes the same optimizer steps (``policy.grpo_shard``);
    ``on_step`` and the progress bar run on rank 0 only, and callers save on rank 0 only.
    Every rank returns the same history."""
    from policy.distributed import DistContext
    from robot_bridge.devices import placement

    starts = _checked_starts(starts, config)
    dev, precision = placement(config.device, config.precision)
    ctx, dev = DistContext.setup(dev)
    plan = RolloutPlan.make(ctx, config.starts_per_step, config.rollout_shards)
    place_models(dev, policy, world_model, judge)
    ctx.broadcast_parameters(policy)  # identical starting weights on every rank, as DDP does
    make_rollouts = _MakeRollouts(policy, world_model, judge, config, rollout_fn)
    run = _Trainer.make(policy, starts, config, plan, dev, precision, make_rollouts)
    history: list[GRPOStats] = []
    bar = _progress(config.steps, progress and ctx.is_main)
    for step in range(config.steps):
        stats, rollouts, rewards = run.train_step(step)
        history.append(stats)
        _show(bar, stats)
        if on_rollouts is not None and ctx.is_main:
            first = plan.groups.start * config.group_size  # this rank's rollouts in the batch
            mine = rewards[first : first + rollouts.videos.shape[0]]
            on_rollouts(step, rollouts, mine, np.concatenate(make_rollouts.scores))
        if on_step is not None and ctx.is_main:
            on_step(stats)
    bar.close()
    return history


def _checked_starts(starts: Sequence[Start], config: GRPOConfig) -> list[Start]:
    """The starts of ``config.train_tasks`` (all of them when empty); refuses no starts at all,
    evaluation-only instructions, and unparaphrasable starts when ``config.paraphrase_prob`` > 0."""
    if not starts:
        raise ValueError("train_grpo needs at least one start (a real frame and an instruction)")
    starts = training_starts(starts, config.train_tasks)
    check_training_instructions(starts)
    if config.paraphrase_prob > 0:
        check_paraphrasable(starts)
    return starts


@dataclass
class _MakeRollouts:
    """``step_rollouts``' ``make``: one part's rollouts and rewards, imagined and judged (or
    ``rollout_fn``'s); keeps the step's judge scores, part by part, for ``on_rollouts``."""

    policy: object
    world_model: object
    judge: object
    config: GRPOConfig
    rollout_fn: object = None
    scores: list[np.ndarray] = field(default_factory=list)

    def __call__(self, part: list[Start], gen: torch.Generator):
        if self.rollout_fn is not None:
            rollouts, rewards = self.rollout_fn(part, gen)
            self.scores.append(torch.as_tensor(rewards, dtype=torch.float32).cpu().numpy())
            return rollouts, rewards
        rollouts = imagine_rollouts(self.policy, self.world_model, part, self.config, gen)
        rewards, judged = judge_rollouts(self.judge, rollouts, self.config)
        self.scores.append(judged)
        return rollouts, rewards


@dataclass
class _Trainer:
    """One GRPO run's state across steps: the generators, the optimizer, the frozen reference
    and the per-task signal that weighs the draws."""

    policy: object
    starts: list[Start]
    config: GRPOConfig
    plan: RolloutPlan
    dev: torch.device
    precision: str
    make_rollouts: _MakeRollouts
    rng: np.random.Generator  # the starts drawn (and their variations)
    generator: torch.Generator  # the rollouts' sampling stream
    shuffle: torch.Generator  # PPO minibatches: alike on every rank
    optimizer: torch.optim.Optimizer
    reference: object  # the frozen starting policy when config.kl_coef > 0, else None
    signal: TaskSignal

    @classmethod
    def make(
        cls, policy, starts, config: GRPOConfig, plan, dev, precision, make_rollouts
    ) -> _Trainer:
        rng = np.random.default_rng(config.seed)
        generator = torch.Generator(device=policy.device).manual_seed(config.seed)
        shuffle = torch.Generator().manual_seed(config.seed)
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        reference = _frozen_copy(policy) if config.kl_coef > 0 else None
        return cls(
            policy, starts, config, plan, dev, precision, make_rollouts, rng, generator, shuffle,
            optimizer, reference, TaskSignal(starts),
        )  # fmt: skip

    def train_step(self, step: int) -> tuple[GRPOStats, Rollouts, torch.Tensor]:
        """Draw a batch of starts, roll out and score its groups, update the policy; returns the
        step's stats, this rank's rollouts and the whole batch's (P*G,) rewards."""
        from robot_bridge.devices import autocast

        config, plan = self.config, self.plan
        t0 = time.perf_counter()
        uniform = config.task_sampling == "uniform"
        weights = None if uniform else self.signal.start_weights(config.task_sampling)
        batch = _draw_starts(self.starts, config, self.rng, weights)  # the same on every rank
        self.make_rollouts.scores.clear()
        with autocast(self.dev, self.precision):
            rollouts, rewards = step_rollouts(
                plan, batch, step, config.seed, self.generator, self.make_rollouts
            )
        group_tasks = [task_key(s) for s in batch] if config.task_balanced_loss else None
        update = grpo_update(
            self.policy, self.optimizer, rollouts, rewards, config, self.reference, group_tasks,
            self.precision, plan=plan, generator=self.shuffle,
        )  # fmt: skip
        per_task = self.signal.record(batch, rewards.view(len(batch), config.group_size), config)
        frames = rollouts.videos.shape[0] * (rollouts.videos.shape[1] - 1) * plan.ctx.world_size
        stats = _step_stats(step, rewards, update, time.perf_counter() - t0, frames, per_task)
        return stats, rollouts, rewards


def _step_stats(step, rewards, update: dict, seconds: float, frames: int, per_task: dict):
    return GRPOStats(
        step=step,
        success_rate=float(rewards.mean()),
        kept_groups=update["kept_groups"],
        total_groups=update["total_groups"],
        loss=update.get("loss", math.nan),
        clipfrac=update.get("clipfrac", math.nan),
        approx_kl=update.get("approx_kl", math.nan),
        entropy=update.get("entropy", math.nan),
        grad_norm=update.get("grad_norm", math.nan),
        seconds=seconds,
        imagined_frames=int(frames),
        extra=({"ref_kl": update["ref_kl"]} if "ref_kl" in update else {}) | per_task,
    )


def place_models(device, *models) -> None:
    """Move each model (an ``nn.Module`` or a judge with a ``to``) to ``device``, once."""
    for m in models:
        if m is not None and callable(getattr(m, "to", None)):
            m.to(device)


def _frozen_copy(policy):
    import copy

    reference = copy.deepcopy(policy).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def _show(bar, stats: GRPOStats) -> None:
    bar.set_postfix(
        success=f"{stats.success_rate:.2f}",
        kept=f"{stats.kept_groups}/{stats.total_groups}",
        clipfrac=f"{stats.clipfrac:.3f}",
        kl=f"{stats.approx_kl:.4f}",
        ent=f"{stats.entropy:.2f}",
    )
    bar.update(1)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="GRPO", unit="step", disable=not enabled)
