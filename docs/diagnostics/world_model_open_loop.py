"""Open-loop error of several world models on the same held-out real episodes, more of them than
the stage's own check uses (4), over several sampling seeds: the figures that compare levers.

    python3 -m uv run python docs/diagnostics/world_model_open_loop.py REP_DIR HORIZON \
        MODEL_DIR [MODEL_DIR ...]

The held-out episodes are the world-model stage's own split of the replicate's first-leg data
(demonstrations, SFT's attempts and exploration), so no model saw them. Prints, per model, the
PSNR lead over repeating the first frame at every step (median over seeds of the mean over
episodes), its mean and worst step, and the absolute PSNR at steps 1, H/2 and H.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.round.config import RoundConfig
from pipeline.round.episodes import load_episodes, split_holdout
from world_model.evaluate import rollout_error
from world_model.model import ActionConditionedWorldModel

EPISODES = 32
SEEDS = (0, 1, 2)


def held_out(rep: Path) -> list:
    dirs = [rep / "bootstrap" / "demos", rep / "sft_attempts", rep / "sft_explore"]
    _, held = split_holdout(load_episodes(dirs), RoundConfig().holdout_fraction)
    return held


def open_loop(model_dir: Path, held: list, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(lead per step, PSNR per step), each the median over seeds."""
    model = ActionConditionedWorldModel.from_pretrained(model_dir, device="cpu")
    leads, psnrs = [], []
    for seed in SEEDS:
        with torch.no_grad():
            r = rollout_error(model, held, horizon=horizon, max_episodes=EPISODES, seed=seed)
        psnr = np.asarray(r["psnr"])
        leads.append(psnr - np.asarray(r["copy_first_psnr"]))
        psnrs.append(psnr)
    return np.median(leads, axis=0), np.median(psnrs, axis=0)


def main(rep: Path, horizon: int, models: list[Path]) -> None:
    held = held_out(rep)
    long = sum(len(e.actions) >= horizon for e in held)
    print(f"{len(held)} held-out episodes, {long} at least {horizon} steps long; "
          f"up to {EPISODES} used, sampling seeds {SEEDS}")  # fmt: skip
    for m in models:
        lead, psnr = open_loop(m, held, horizon)
        mid = len(psnr) // 2
        print(
            f"{m}: lead per step {np.round(lead, 2).tolist()}; mean {lead.mean():+.2f} dB, "
            f"worst {lead.min():+.2f} dB (step {int(lead.argmin()) + 1}); PSNR step 1 / "
            f"{mid + 1} / {len(psnr)}: {psnr[0]:.1f} / {psnr[mid]:.1f} / {psnr[-1]:.1f} dB"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
