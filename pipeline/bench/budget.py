"""The real budget of each arm of ``gymnast bench learning``: every real episode an arm used.

A replicate's ``Ledger`` holds the episode files of every real run, by purpose, as the stages
ran them: ``demos``, ``attempts`` (the SFT policy's greedy runs), ``exploration`` (sampled runs),
``dyna{k}_runs`` (the RL policy's own runs in Dyna iteration k), and ``{prefix}check`` (the real
snapshot checks that chose a policy: ``check`` and ``dyna{k}_check`` for World-Gymnast,
``sft_select_check``, ``iter_sft_check``, ``sim_rl_check`` for the baselines), and
``sft_choice`` (the checks that chose how many demonstrations SFT gets, ``pipeline.bench.
sft_choice``: every arm starts from that choice, so it counts for all). An arm's budget
is the sum over the purposes it used (``arm_keys``); ``budget_claims`` checks the equal-budget
statements the bench makes, and the report prints both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CATEGORIES = ("demos", "sft_choice", "attempts", "exploration", "dyna_runs", "checks")
WG = "WG"  # World-Gymnast's first leg; "WG+Dyna{k}" after k Dyna iterations


def wg_name(dyna: int) -> str:
    return WG if dyna == 0 else f"{WG}+Dyna{dyna}"


def category(key: str) -> str:
    """The budget column a ledger key counts under."""
    if key in ("demos", "sft_choice", "attempts", "exploration"):
        return key
    if key.endswith("_runs"):
        return "dyna_runs"
    if key.endswith("check"):
        return "checks"
    raise ValueError(f"unknown real-episode purpose {key!r}")


@dataclass
class Ledger:
    """The real episodes of one replicate, by purpose (see the module doc)."""

    runs: dict[str, list[Path]] = field(default_factory=dict)

    def add(self, key: str, paths: Iterable[Path]) -> None:
        category(key)  # refuses an unknown purpose
        self.runs[key] = list(paths)

    def paths(self, keys: Sequence[str]) -> list[Path]:
        missing = [k for k in keys if k not in self.runs]
        if missing:
            raise KeyError(f"no real episodes recorded for {missing}; have {sorted(self.runs)}")
        return [p for k in keys for p in self.runs[k]]

    def budget(self, keys: Sequence[str]) -> dict[str, int]:
        """Real episodes per category over ``keys``, and their ``total``."""
        out = dict.fromkeys(CATEGORIES, 0)
        for k in keys:
            out[category(k)] += len(self.paths([k]))
        return out | {"total": sum(out.values())}


def wg_keys(dyna: int, checked: bool) -> list[str]:
    """World-Gymnast after ``dyna`` Dyna iterations: demonstrations, SFT attempts, exploration,
    every leg's check (when GRPO keeps snapshots) and every Dyna iteration's runs."""
    keys = ["demos", "attempts", "exploration", *(["check"] if checked else [])]
    for k in range(1, dyna + 1):
        keys += [f"dyna{k}_runs", *([f"dyna{k}_check"] if checked else [])]
    return keys


def arm_keys(
    arm: str, main_keys: Sequence[str], checked: bool, sft_choice: bool = False
) -> list[str]:
    """The purposes arm ``arm`` used, given the main World-Gymnast arm's (``main_keys``), and
    the SFT choice's checks when one ran (every arm starts from it).

    SFT+select and Sim-RL: the demonstrations and a check of their own; Iter-SFT: everything the
    main arm ran (its data: the successes among them) and a check of its own."""
    keys = _arm_keys(arm, main_keys, checked)
    return [*keys, "sft_choice"] if sft_choice else keys


def _arm_keys(arm: str, main_keys: Sequence[str], checked: bool) -> list[str]:
    own = lambda prefix: [f"{prefix}_check"] if checked else []  # noqa: E731
    if arm == "SFT":
        return ["demos"]
    if arm == "SFT+select":
        return ["demos", *own("sft_select")]
    if arm == "Iter-SFT":
        return [*main_keys, *own("iter_sft")]
    if arm == "Sim-RL":
        return ["demos", *own("sim_rl")]
    if arm == WG or arm.startswith(f"{WG}+Dyna"):
        dyna = 0 if arm == WG else int(arm.removeprefix(f"{WG}+Dyna"))
        return wg_keys(dyna, checked)
    raise ValueError(f"unknown arm {arm!r}")


def selection_candidates(snapshots: int, dyna: int) -> int:
    """How many policies SFT+select and Iter-SFT check: as many as the main arm's checks saw
    (its snapshots in each of its 1 + ``dyna`` legs), on the same check seeds, so their real
    check episodes equal the main arm's; 1 (no check) when GRPO keeps no snapshots."""
    return snapshots * (1 + dyna) if snapshots > 1 else 1


def iter_sft_data(
    ledger: Ledger, main_keys: Sequence[str], success: Callable[[Path], bool]
) -> list[Path]:
    """Iter-SFT's training set: the successful demonstrations and every real success among the
    main arm's other episodes (attempts, exploration, Dyna runs, checks), each file once."""
    seen: dict[Path, None] = {}
    for p in ledger.paths(["demos", *(k for k in main_keys if k != "demos")]):
        if success(p):
            seen.setdefault(p)
    return list(seen)


def budget_claims(budgets: dict[str, dict[str, int]], main: str) -> dict[str, bool]:
    """The equal-budget statements, checked on the counted budgets: each selecting baseline
    checked as many real episodes as the main arm; Iter-SFT had all of the main arm's real
    episodes; Sim-RL's check equals one World-Gymnast leg's (the main arm's checks / legs)."""
    m = budgets[main]
    legs = 1 + (int(main.removeprefix(f"{WG}+Dyna")) if main != WG else 0)
    claims = {}
    if "SFT+select" in budgets:
        claims["SFT+select checks == main checks"] = budgets["SFT+select"]["checks"] == m["checks"]
    if "Iter-SFT" in budgets:
        it = budgets["Iter-SFT"]
        claims["Iter-SFT data == main's real episodes"] = (
            all(it[c] == m[c] for c in CATEGORIES if c != "checks")
            and it["checks"] == 2 * m["checks"]
        )
    if "Sim-RL" in budgets:
        claims["Sim-RL checks == one WG leg's"] = budgets["Sim-RL"]["checks"] * legs == m["checks"]
    return claims
