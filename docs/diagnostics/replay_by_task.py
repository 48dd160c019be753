"""Per task: the judge on real evaluation videos vs on imagined replays of the same actions."""

import collections
import glob

import numpy as np
import torch

from reward.judge import load_judge
from reward.train import replay_in_imagination
from robot_bridge.episodes import read_episode, read_episode_header
from world_model.model import ActionConditionedWorldModel

torch.set_num_threads(2)
R = "/work/bench_runs/final_v3/rep0"
pairs = {
    "leg1": (f"{R}/world_model", f"{R}/judge"),
    "dyna1": (f"{R}/dyna1/world_model", f"{R}/dyna1/judge"),
}
heads = [read_episode_header(p) for p in sorted(glob.glob(f"{R}/eval_final_SFT/*.h5"))]
rng = np.random.default_rng(0)
picked = []
for task in ["open_drawer", "close_drawer", "eggplant_in_sink", "eggplant_in_basket"]:
    for label in (True, False):
        same = [h.path for h in heads if h.task == task and h.success is label]
        for i in rng.permutation(len(same))[:8]:
            picked.append(read_episode(same[i]))
print("episodes", len(picked))
for name, (wm_path, judge_path) in pairs.items():
    wm = ActionConditionedWorldModel.from_pretrained(wm_path, device="cpu")
    judge = load_judge(judge_path, device="cpu")
    for max_steps in (30,):
        reps = replay_in_imagination(wm, picked, max_steps=max_steps, seed=0)
        real_votes = judge.judge(
            [np.asarray(e.frames)[: max_steps + 1] for e in picked], [e.instruction for e in picked]
        ).rewards
        imag_votes = judge.judge([r.frames for r in reps], [r.instruction for r in reps]).rewards

        # replays are regrouped by length: match back by identity of the episode order
        def key(r):
            return (r.task, r.success, r.instruction)

        by_task = collections.defaultdict(lambda: collections.Counter())
        for r, v in zip(reps, imag_votes, strict=False):
            by_task[r.task][("imag", r.success, bool(v > 0.5))] += 1
        for e, v in zip(picked, real_votes, strict=False):
            by_task[e.task][("real30", bool(e.success), bool(v > 0.5))] += 1
        for task, c in by_task.items():

            def rate(kind, label, c=c):
                yes = c[(kind, label, True)]
                n = yes + c[(kind, label, False)]
                return f"{yes}/{n}"

            print(
                f"{name} {task:20s} judged success | real30: succ {rate('real30', True)} fail {rate('real30', False)} | imagined: succ {rate('imag', True)} fail {rate('imag', False)}"
            )
        # per-step PSNR lead per task over the replays
        for task in ["open_drawer", "eggplant_in_basket"]:
            eps = [e for e in picked if e.task == task]
            rr = replay_in_imagination(wm, eps, max_steps=max_steps, seed=0)
            leads = []
            for r, e in zip(
                rr, sorted(eps, key=lambda e: min(len(e.actions), max_steps)), strict=False
            ):
                real = np.asarray(e.frames)[: len(r.frames)].astype(np.float32)
                im = np.asarray(r.frames).astype(np.float32)
                if im.shape[1:] != real.shape[1:]:
                    t = torch.nn.functional.interpolate(
                        torch.as_tensor(real).permute(0, 3, 1, 2), size=im.shape[1:3], mode="area"
                    )
                    real = t.permute(0, 2, 3, 1).numpy()
                mse = ((im - real) ** 2).mean(axis=(1, 2, 3))
                copy = ((real[:1] - real) ** 2).mean(axis=(1, 2, 3))
                leads.append(10 * np.log10((copy + 1e-6) / (mse + 1e-6)))
            longest = max(len(lead) for lead in leads)
            med = [
                float(np.median([lead[i] for lead in leads if len(lead) > i]))
                for i in range(1, longest, 5)
            ]
            print(f"{name} {task} PSNR lead (dB) at steps 1,6,11,..: {np.round(med, 1).tolist()}")
