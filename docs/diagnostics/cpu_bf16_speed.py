"""fp32 against bf16 autocast on this CPU, for the `bench` preset's tiny models: the world
model's training step (batch 32), its imagination of a GRPO batch (64 rollouts x 3 frames), the
VLA's sampling (64 frames) and update (64 frames), and one whole GRPO step (the preset's 8 starts
x 8 rollouts, 3 chunks; rollouts and judge under autocast, the update at the same precision).
Interleaved repeats, medians; run it alone on the cores.

    python3 -m uv run python docs/diagnostics/cpu_bf16_speed.py [REPEATS]
"""

import statistics
import sys
import time

import numpy as np
import torch

from pipeline.bench import gpu
from pipeline.round.config import ROUND_PRESETS
from policy.grpo import GRPOConfig, Start, grpo_update, imagine_rollouts, score_rollouts
from robot_bridge.devices import autocast, cpu_has_native_bf16

CPU = torch.device("cpu")


def world_model_step(wm, opt, batch, precision):
    opt.zero_grad()
    with autocast(CPU, precision):
        loss = wm.training_loss(**batch)
    loss.backward()
    opt.step()


def main(repeats: int) -> None:
    torch.manual_seed(0)
    wm = gpu.world_model("tiny", False, None, CPU).train()
    c, b = wm.config, 32
    batch = {
        "context": torch.randn(b, c.context_slots, 3, c.image_size, c.image_size),
        "context_actions": torch.randn(b, c.context_slots, 7),
        "context_known": torch.ones(b, c.context_slots, dtype=torch.bool),
        "action": torch.randn(b, 7),
        "target": torch.randn(b, 3, c.image_size, c.image_size),
    }
    wm_opt = torch.optim.AdamW(wm.parameters(), lr=1e-4)
    policy, judge = gpu.vla("tiny", False, CPU), gpu.judge(CPU)
    frames = np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    words = ["open the drawer"] * 64
    tokens = policy.sample(frames, words, temperature=1.0).tokens
    p_opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    bench = ROUND_PRESETS["bench"]["grpo_overrides"]
    cfg = GRPOConfig.from_preset(
        "tiny",
        filter_low=0.0,
        filter_high=1.0,
        horizon_chunks=bench["horizon_chunks"],
        starts_per_step=bench["starts_per_step"],
    )
    starts = [Start(f, "open the drawer", "open_drawer") for f in frames[: cfg.starts_per_step]]
    gen = torch.Generator().manual_seed(0)

    def imagination(precision):
        with autocast(CPU, precision):
            wm.eval()
            wm.rollout(frames, torch.zeros(64, 3, 7), gen)
            wm.train()

    def vla_sample(precision):
        with torch.no_grad(), autocast(CPU, precision):
            policy.sample(frames, words, temperature=1.0, generator=gen)

    def vla_update(precision):
        p_opt.zero_grad()
        with autocast(CPU, precision):
            logp = policy.log_probs(frames, words, tokens, temperature=1.0)
        logp.float().mean().backward()
        p_opt.step()

    def grpo_step(precision):
        wm.eval()
        with autocast(CPU, precision):
            rollouts = imagine_rollouts(policy, wm, starts, cfg, gen)
            rewards = score_rollouts(judge, rollouts, cfg)
        grpo_update(policy, p_opt, rollouts, rewards, cfg, precision=precision)
        wm.train()

    cases = {
        "world model training step (batch 32)": lambda p: world_model_step(wm, wm_opt, batch, p),
        "world model imagination (64 x 3 frames)": imagination,
        "VLA sampling (64 frames)": vla_sample,
        "VLA update (64 frames)": vla_update,
        "GRPO step (8 x 8 rollouts, 3 chunks)": grpo_step,
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"native bf16: {cpu_has_native_bf16()}; median of {repeats} interleaved repeats"
    )
    print(f"{'':42s} {'fp32 s':>8s} {'bf16 s':>8s} {'speed-up':>8s}")
    for name, fn in cases.items():
        for p in ("fp32", "bf16"):  # warm-up: allocations, oneDNN kernels
            fn(p)
        times = {"fp32": [], "bf16": []}
        for _ in range(repeats):
            for p in ("fp32", "bf16"):
                t = time.perf_counter()
                fn(p)
                times[p].append(time.perf_counter() - t)
        f, h = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        print(f"{name:42s} {f:8.3f} {h:8.3f} {f / h:7.2f}x", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
