"""``gymnast bench loop``'s gate table: per round, champion and challenger on the round's fresh
gate block, the decision, and whether the champion's success fell from one round to the next
(beyond the 95% intervals), from hand-made round summaries."""

from __future__ import annotations

from pipeline.bench.loop import format_gate, gate_rows
from pipeline.demo import RoundSummary


def _evaluation(successes: int, n: int = 20) -> dict:
    return {"per_task": {"open_drawer": {"successes": successes, "labelled": n}}}


def _round(key: str, champion: int, challenger: int, promoted: bool) -> RoundSummary:
    return RoundSummary(
        round=key,
        champion_from="-",
        world_model_warm_start="-",
        champion=_evaluation(champion),
        challenger=_evaluation(challenger),
        promoted=promoted,
        test="exact McNemar",
        p_value=0.01 if promoted else 0.5,
        reason="",
    )


def test_the_gate_table_follows_the_champion_and_flags_a_fall_beyond_the_intervals():
    rows = gate_rows(
        [
            _round("r1", 4, 15, promoted=True),  # promoted: round 2's champion is this 15/20
            _round("r2", 14, 15, promoted=False),  # 14/20 after 15/20: within the intervals
            _round("r3", 2, 3, promoted=False),  # 2/20 after 14/20: a fall beyond them
        ]
    )
    assert [r["champion"]["successes"] for r in rows] == [4, 14, 2]
    assert [r["champion_fell"] for r in rows] == [False, False, True]
    text = format_gate(rows)
    assert "| r1 | 4/20 [" in text and "| True |" in text
    assert text.endswith("the round before: r3")
    steady = gate_rows([_round("r1", 4, 5, False), _round("r2", 5, 6, False)])
    assert format_gate(steady).endswith("the round before: never")
