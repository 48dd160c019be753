"""One replicate's results as a small JSON file, and the bench's report pooled from such files.

A replicate of ``gymnast bench learning`` takes hours on a 2-core CPU, so the R replicates of a
result may come from different runs on different days (``--first-replicate``), even from
machines that kept nothing but the repository. Each replicate writes ``rep<r>/results.json``:
its report and every evaluation episode's outcome per arm ((task, seed, success), the paired
test's input). Copied under ``docs/results/``, those files rebuild the whole report, verdict and
figure without re-running (``gymnast bench learning --pool FILE ...``). Pooling refuses files
whose replicates cannot be pooled: another base config, other settings, a replicate twice.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_FILE = "results.json"
FORMAT = 1
# settings that say which replicates a run made, on how many stations, or how it printed: not
# what a replicate is
_RUN_ONLY = ("replicates", "first_replicate", "progress", "stations")


class PoolError(ValueError):
    """Replicate results that cannot be pooled into one report."""


def replicate_results(
    replicate: int, base_config: dict, settings: dict, report: dict, outcomes: dict
) -> dict:
    """The JSON-able results of replicate ``replicate``: ``outcomes`` maps each arm to its
    evaluation outcomes ``{(task, seed): success}``."""
    return {
        "format": FORMAT,
        "replicate": replicate,
        "base_config": base_config,
        "settings": {k: v for k, v in settings.items() if k not in _RUN_ONLY},
        "report": report,
        "outcomes": {
            arm: [[task, int(seed), bool(ok)] for (task, seed), ok in sorted(per.items())]
            for arm, per in outcomes.items()
        },
    }


def write_replicate_results(path: Path, results: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)  # a reader never sees half a file
    return path


def read_replicate_results(path: Path) -> dict:
    """One results file, checked; its outcomes back as ``{arm: {(task, seed): success}}``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PoolError(f"{path}: not a readable replicate results file ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise PoolError(
            f"{path}: not a replicate results file of format {FORMAT} (written by "
            f"`gymnast bench learning` as rep<r>/{RESULTS_FILE})"
        )
    missing = [
        k for k in ("replicate", "base_config", "settings", "report", "outcomes") if k not in raw
    ]
    if missing:
        raise PoolError(f"{path}: missing {', '.join(missing)}")
    raw["outcomes"] = {
        arm: {(str(task), int(seed)): bool(ok) for task, seed, ok in rows}
        for arm, rows in raw["outcomes"].items()
    }
    return raw


def pool(paths: list[Path]) -> tuple[dict, dict, list[dict], dict]:
    """(base config, settings, reports in replicate order, outcomes ``{arm: [per replicate]}``)
    of the results files ``paths``, refused unless they share the base config and settings,
    hold distinct replicates, and every replicate evaluated the same arms."""
    if not paths:
        raise PoolError("no replicate results files to pool")
    files = [(read_replicate_results(p), Path(p)) for p in paths]
    files.sort(key=lambda rp: rp[0]["replicate"])
    first, first_path = files[0]
    seen: dict[int, Path] = {}
    for res, path in files:
        r = res["replicate"]
        if r in seen:
            raise PoolError(f"replicate {r} is in both {seen[r]} and {path}")
        seen[r] = path
        for key in ("base_config", "settings"):
            if res[key] != first[key]:
                diff = sorted(
                    k
                    for k in set(res[key]) | set(first[key])
                    if res[key].get(k) != first[key].get(k)
                )
                raise PoolError(
                    f"{path} and {first_path} differ in their {key.replace('_', ' ')} "
                    f"({', '.join(diff)}): replicates of different benches do not pool"
                )
        if set(res["outcomes"]) != set(first["outcomes"]):
            raise PoolError(
                f"{path} evaluated arms {sorted(res['outcomes'])}, {first_path} "
                f"{sorted(first['outcomes'])}: every replicate must evaluate the same arms"
            )
    outcomes = {arm: [res["outcomes"][arm] for res, _ in files] for arm in first["outcomes"]}
    return first["base_config"], first["settings"], [res["report"] for res, _ in files], outcomes
