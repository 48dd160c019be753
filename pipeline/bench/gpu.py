"""GPU benchmark: world-model imagination, a GRPO step and VLA sampling, with model FLOPs
utilization (MFU). Random weights at full size, nothing downloaded; see docs/gpu.md.

    python -m pipeline.bench.gpu                # on a lent GPU: a few minutes
    python -m pipeline.bench.gpu --quick        # tiny sizes, any device (the CPU test runs this)

Rows:
- ``wm/<tiny|large>``: imagined frames/s at batch 1/8/32 (``imagine`` of a few frames: DDIM
  steps with classifier-free guidance, and the VAE decode for ``large``).
- ``grpo/<tiny|large-reduced>``: seconds per GRPO step (rollouts in the world model, judge
  scoring, the PPO update) and the step's peak GPU memory. ``tiny`` is ``GRPOConfig.preset
  ("tiny")``; ``large-reduced`` is the full-size ``large`` world model and a PaliGemma-3B-sized
  VLA with fewer rollouts per step (2 starts x 4, one chunk).
- ``vla/<tiny|3b>``: action chunks/s of ``VLAPolicy.sample`` at batch 1 and 64.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one untimed call (a GRPO step
is counted whole: forward and backward); MFU is FLOPs/s over the GPU's dense bf16 peak
(``PEAK_BF16_TFLOPS``, or ``--peak-tflops``); an unknown GPU reports FLOPs/s only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from robot_bridge.devices import autocast, resolve_device, resolve_precision

if TYPE_CHECKING:
    import torch

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, by a substring of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}


@dataclass
class Row:
    name: str
    batch: int
    rate: float | None = None  # frames/s, steps/s or chunks/s
    unit: str = ""
    seconds: float | None = None  # per timed call
    flops: float | None = None  # per timed call
    peak_mem_gib: float | None = None
    params_m: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def flops_per_s(self) -> float | None:
        if self.flops is None or not self.seconds:
            return None
        return self.flops / self.seconds


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    import torch

    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def count_flops(fn: Callable[[], object]) -> float:

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def _peak_mem(device: torch.device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def _reset_mem(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --- models at full size, random weights --------------------------------------------------------


def random_vae(path: Path, quick: bool) -> Path:
    """An SD3-shaped AutoencoderKL (16 latent channels, 8x down), random, saved to ``path``."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    if quick:
        kw = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
    else:  # SD3's VAE: 4 levels (128, 256, 512, 512), 2 layers per block, 32 groups
        kw = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
    n = len(kw["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        latent_channels=16,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
        **kw,
    )
    vae.save_pretrained(path)
    return path


def world_model(kind: str, quick: bool, vae_dir: Path, device: torch.device):
    import torch

    from world_model.config import WorldModelConfig
    from world_model.model import ActionConditionedWorldModel

    if kind == "tiny":
        shrink = dict(image_size=32, pixel_unshuffle=2, unet_block_out_channels=(16, 32, 32),
                      unet_norm_num_groups=8, unet_attention_head_dim=16, num_inference_steps=2)  # fmt: skip
        cfg = WorldModelConfig.from_preset("tiny", **(shrink if quick else {}))
    else:
        shrink = dict(image_size=32, vae_downsample=2, dit_width=32, dit_heads=2, dit_layers=1,
                      context_frames=3, num_inference_steps=2)  # fmt: skip
        cfg = WorldModelConfig.from_preset(
            "large", vae_path=str(vae_dir), **(shrink if quick else {})
        )
    torch.manual_seed(0)
    return ActionConditionedWorldModel(cfg).to(device).eval()


def vla(kind: str, quick: bool, device: torch.device):
    import torch

    from policy.config import VLAConfig
    from policy.vla import VLAPolicy

    if kind == "tiny" or quick:
        cfg = VLAConfig.from_preset("tiny")
    else:  # PaliGemma-3B-sized: SigLIP-So400m at 224 px / patch 14 and a Gemma-2B language model
        # (the vocabulary is the tiny BPE's, not Gemma's 257k: the LM head is the only shrunk part)
        cfg = VLAConfig.from_preset(
            "tiny", image_size=224, patch_size=14, vision_hidden=1152, vision_layers=27,
            vision_heads=16, vision_intermediate=4304, text_hidden=2048, text_layers=18,
            text_heads=8, text_head_dim=256, text_intermediate=16384,
        )  # fmt: skip
    with torch.device(device):  # initialise on the device: seconds, not a minute of CPU init
        policy = VLAPolicy.build(cfg)
    return policy.to(device).eval()


def judge(device: torch.device):
    from reward.config import VLMJudgeConfig
    from reward.vlm import VLMJudge
    from robot_bridge.spec import AUTOEVAL_TASKS, TASKS

    return VLMJudge.from_config(
        VLMJudgeConfig(device=str(device)),
        instructions=[TASKS[t].instruction for t in AUTOEVAL_TASKS],
    )


def _frames(n: int, size: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _params_m(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


# --- the measurements -------------------------------------------------------------------------


def bench_world_model(kind, model, batches, frames, iters, device, precision) -> list[Row]:
    import torch

    rows = []
    for b in batches:
        row = Row(f"wm/{kind}", b, unit="frames/s", params_m=_params_m(model))
        try:
            _reset_mem(device)
            gen = torch.Generator(device=device).manual_seed(0)
            state = model.start(_frames(b))
            actions = torch.zeros(b, frames, model.config.action_dim, device=device)

            def call(state=state, actions=actions, gen=gen):
                with autocast(device, precision):
                    model.imagine(state, actions, gen)

            row.flops = count_flops(call)
            row.seconds = timed(call, device, iters)
            row.rate = b * frames / row.seconds
            row.peak_mem_gib = _peak_mem(device)
            row.extra["frames_per_call"] = frames
        except Exception as e:  # noqa: BLE001 - one failed row (e.g. out of memory) is reported
            row.error = _short(e)
        rows.append(row)
    return rows


def bench_grpo(name, policy, wm, judge_model, overrides, iters, device, precision) -> Row:
    import torch

    from policy.grpo import GRPOConfig, Start, grpo_update, imagine_rollouts, score_rollouts

    # every group kept (the random judge's groups may all agree): the update always runs
    cfg = GRPOConfig.from_preset("tiny", filter_low=0.0, filter_high=1.0, **overrides)
    row = Row(f"grpo/{name}", cfg.starts_per_step * cfg.group_size, unit="steps/s")
    row.params_m = _params_m(policy) + _params_m(wm)
    try:
        _reset_mem(device)
        starts = [Start(f, "open the drawer", "open_drawer") for f in _frames(cfg.starts_per_step)]
        gen = torch.Generator(device=device).manual_seed(0)
        opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)

        def step():
            with autocast(device, precision):
                rollouts = imagine_rollouts(policy, wm, starts, cfg, gen)
                rewards = score_rollouts(judge_model, rollouts, cfg)
            return grpo_update(policy, opt, rollouts, rewards, cfg, precision=precision)

        row.flops = count_flops(step)  # also the warm-up: the optimizer state now exists
        row.seconds = timed(step, device, iters)
        row.rate = 1.0 / row.seconds
        row.peak_mem_gib = _peak_mem(device)
        row.extra.update(
            rollouts=cfg.starts_per_step * cfg.group_size,
            imagined_frames=cfg.starts_per_step * cfg.group_size * cfg.horizon_chunks
            * policy.config.chunk_size,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001
        row.error = _short(e)
    return row


def bench_vla(kind, policy, batches, iters, device, precision) -> list[Row]:
    import torch

    rows = []
    for b in batches:
        row = Row(f"vla/{kind}", b, unit="chunks/s", params_m=_params_m(policy))
        try:
            _reset_mem(device)
            images = _frames(b)
            instructions = ["open the drawer"] * b
            gen = torch.Generator(device=device).manual_seed(0)

            def call(images=images, instructions=instructions, gen=gen):
                with autocast(device, precision):
                    policy.sample(images, instructions, temperature=1.0, generator=gen)

            row.flops = count_flops(call)
            row.seconds = timed(call, device, iters)
            row.rate = b / row.seconds
            row.peak_mem_gib = _peak_mem(device)
        except Exception as e:  # noqa: BLE001
            row.error = _short(e)
        rows.append(row)
    return rows


def _short(e: BaseException) -> str:
    traceback.print_exception(e, file=sys.stderr)
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


# --- the table ----------------------------------------------------------------------------------


def format_table(rows: list[Row], peak: float | None, header: str) -> str:
    cols = ["bench", "batch", "rate", "unit", "s/call", "TFLOP/call", "TFLOP/s", "MFU", "peak GiB",
            "params M"]  # fmt: skip
    lines = []
    for r in rows:
        fps = r.flops_per_s()
        if r.error:
            cells = [r.name, str(r.batch), "-", r.unit, "-", "-", "-", "-", "-", "-"]
            cells[-1] = f"ERROR {r.error}"
        else:
            cells = [
                r.name,
                str(r.batch),
                f"{r.rate:.3g}",
                r.unit,
                f"{r.seconds:.3g}",
                f"{r.flops / 1e12:.3g}" if r.flops is not None else "-",
                f"{fps / 1e12:.3g}" if fps is not None else "-",
                f"{100 * fps / (peak * 1e12):.1f}%" if fps is not None and peak else "n/a",
                f"{r.peak_mem_gib:.2f}" if r.peak_mem_gib is not None else "-",
                f"{r.params_m:.1f}" if r.params_m is not None else "-",
            ]
        lines.append(cells)
    widths = [max(len(c), *(len(x[i]) for x in lines)) for i, c in enumerate(cols)]
    out = [header, "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    out += ["  ".join(x.ljust(w) for x, w in zip(cells, widths, strict=True)) for cells in lines]
    return "\n".join(out)


def run(
    device: str | None = None,
    quick: bool = False,
    precision: str | None = "bf16",
    peak: float | None = None,
    sections: tuple[str, ...] = ("wm", "grpo", "vla"),
) -> tuple[list[Row], str]:
    """Run the benchmark; returns the rows and the printed table."""
    import torch

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    peak = peak_tflops(dev, peak)
    batches = (1, 2) if quick else (1, 8, 32)
    vla_batches = (1, 4) if quick else (1, 64)
    iters = 1 if quick else 3
    rows: list[Row] = []
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        vae_dir = random_vae(Path(tmp) / "vae", quick)
        wms = {}
        for kind in ("tiny", "large"):
            wms[kind] = world_model(kind, quick, vae_dir, dev)
            if "wm" in sections:
                frames = 4 if kind == "tiny" else (2 if quick else 1)
                its = iters if kind == "tiny" else 1
                rows += bench_world_model(kind, wms[kind], batches, frames, its, dev, prec)
        tiny_vla = vla("tiny", quick, dev)
        big_vla = None if quick else vla("3b", quick, dev)
        if "grpo" in sections:
            j = judge(dev)
            small = dict(group_size=2, starts_per_step=2, horizon_chunks=1, judge_samples=1)
            tiny_overrides = small if quick else {}
            rows.append(bench_grpo("tiny", tiny_vla, wms["tiny"], j, tiny_overrides, iters, dev,
                                   prec))  # fmt: skip
            large_overrides = dict(group_size=4, starts_per_step=2, horizon_chunks=1,
                                   judge_samples=1, minibatch_size=8)  # fmt: skip
            rows.append(bench_grpo("large-reduced", big_vla or vla("tiny", quick, dev),
                                   wms["large"], j, small if quick else large_overrides, 1, dev,
                                   prec))  # fmt: skip
        if "vla" in sections:
            rows += bench_vla("tiny", tiny_vla, vla_batches, iters, dev, prec)
            if big_vla is not None:
                rows += bench_vla("3b", big_vla, vla_batches, iters, dev, prec)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    header = (
        f"gymnast bench gpu: {name} ({dev}), precision {prec}, "
        f"peak bf16 {f'{peak:g} TFLOP/s' if peak else 'unknown (MFU n/a)'}, "
        f"torch {torch.__version__}{', quick' if quick else ''}"
    )
    table = format_table(rows, peak, header)
    return rows, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="bf16", choices=("auto", "fp32", "bf16"))
    p.add_argument("--quick", action="store_true", help="tiny sizes, one iteration (CPU test)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    p.add_argument("--only", nargs="+", choices=("wm", "grpo", "vla"), default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gymnast bench gpu", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    rows, table = run(
        args.device,
        quick=args.quick,
        precision=args.precision,
        peak=args.peak_tflops,
        sections=tuple(args.only or ("wm", "grpo", "vla")),
    )
    print(table)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps([r.__dict__ | {"flops_per_s": r.flops_per_s()} for r in rows], indent=1)
        )
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
