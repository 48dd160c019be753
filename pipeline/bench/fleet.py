"""``gymnast bench loop --stations N``: a round's collection and evaluation on 1 arm and on N.

The same episodes (same tasks, seeds and policies) are run by a fleet of one simulated station
and by a fleet of N, each station paced at the real arm's control rate (the ``sim`` backend's
``realtime`` option, 5 Hz), so the figure is what arms would take, not how fast this CPU
simulates. The work is what the round's arm-driving assets do: the champion's collection, then
the gate (champion and challenger on one fresh seed block). The policies are scripted (an expert
and a noisier one): a learned policy's inference runs on each station's own computer on real arms,
which a shared 2-core machine cannot stand in for. The model stages do not depend on the number
of arms (``docs/scale.md``).
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

DRAWERS = ("open_drawer", "close_drawer")


@dataclass
class FleetTiming:
    stations: int
    episodes: int
    collection_s: float
    evaluation_s: float

    @property
    def total_s(self) -> float:
        return self.collection_s + self.evaluation_s


def time_fleet(
    stations: int,
    workdir: Path,
    tasks=DRAWERS,
    collect_per_task: int = 6,
    gate_per_task: int = 6,
    image_size: int = 256,
) -> FleetTiming:
    """Start ``stations`` paced sim stations, run collection then the paired gate, time both."""
    from pipeline.fleet import Arm, Fleet, FleetRunner
    from robot_bridge.launch import StationProcess
    from robot_bridge.policies import write_policy_config

    champion = write_policy_config(workdir / "champion", "scripted_expert", noise=0.005)
    challenger = write_policy_config(workdir / "challenger", "scripted_expert", noise=0.01)
    with ExitStack() as stack:
        procs = [
            stack.enter_context(
                StationProcess(
                    "sim",
                    episodes_dir=workdir / f"station_{i}" / "episodes",
                    station_id=f"arm{i}",
                    backend_args={"image_size": image_size, "realtime": True},
                )
            )
            for i in range(stations)
        ]
        fleet = Fleet(tuple(Arm(f"arm{i}", p.endpoint) for i, p in enumerate(procs)), 60.0)
        runner = FleetRunner(fleet, log=lambda m: None)
        for policy in (champion, challenger):  # uploads are not what is measured
            runner.upload_checkpoint(policy)
        t0 = time.monotonic()
        a = runner.run(champion, tasks, collect_per_task, workdir / "collect", seed=0)
        t1 = time.monotonic()
        b = runner.run(champion, tasks, gate_per_task, workdir / "gate_champion", seed=10_000)
        c = runner.run(challenger, tasks, gate_per_task, workdir / "gate_challenger", seed=10_000)
        t2 = time.monotonic()
    n = sum(len(r.episodes) for r in (a, b, c))
    return FleetTiming(stations, n, round(t1 - t0, 1), round(t2 - t1, 1))


def main(stations: int = 3, json_path: Path | None = None, **sizes) -> int:
    if stations < 2:
        raise SystemExit("--stations compares one arm with N >= 2 arms")
    results = []
    for n in (1, stations):
        with tempfile.TemporaryDirectory(prefix=f"gymnast-bench-fleet-{n}-") as d:
            results.append(time_fleet(n, Path(d), **sizes))
            print(f"{n} station(s): {asdict(results[-1])}", flush=True)
    one, many = results
    print(
        f"\n# bench loop --stations {stations}: a round's arm work, sim stations paced at 5 Hz\n"
        "| stations | episodes | collection s | evaluation s | total s | speed-up |\n"
        "|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r.stations} | {r.episodes} | {r.collection_s:.1f} | {r.evaluation_s:.1f} | "
            f"{r.total_s:.1f} | {one.total_s / r.total_s:.2f}x |"
        )
    print(
        f"collection {one.collection_s / many.collection_s:.2f}x faster with {stations} arms "
        f"(target >= 2.5x with 3)"
    )
    if json_path:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=1))
        print(f"wrote {json_path}")
    return 0
