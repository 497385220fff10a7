"""The perfect-field presence frontier (cos3d/eval/presence.py): what the embedder allows presence to reach."""

from __future__ import annotations

import pytest

from cos3d.eval.presence import frontier, perfect_field_scores, presence_frontier
from cos3d.eval.tabletop import HELD_OUT_KINDS


def _rows(present: list[float], absent: list[float]) -> list[dict]:
    return [{"score": s, "present": True} for s in present] + [{"score": s, "present": False} for s in absent]


def test_frontier_separable_scores_reach_both_bars():
    f = frontier(_rows([0.8, 0.7, 0.9], [0.1, 0.2, 0.3, 0.4]))
    assert f["present"] == 3 and f["absent"] == 4
    a = f["at_no_target"]
    assert a["false_empty"] == 0.0 and a["false_empty_n"] == 0 and a["no_target"] == 1.0
    assert 0.4 < a["threshold"] <= 0.7
    b = f["at_false_empty"]
    assert b["no_target"] == 1.0 and b["no_target_n"] == 4


def test_frontier_overlap_costs_what_the_scores_say():
    # ten absent prompts, one above every present one but the lowest two; no-target >= 0.9 lets one absent
    # prompt through: the threshold sits just above the second-highest absent score (0.5), so the two
    # present prompts below it (0.45, 0.3) are lost: 2 of 5
    absent = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.42, 0.5, 0.95]
    f = frontier(_rows([0.3, 0.45, 0.6, 0.7, 0.8], absent), min_no_target=0.9, max_false_empty=0.0)
    a = f["at_no_target"]
    assert a["false_empty_n"] == 2 and a["false_empty"] == pytest.approx(0.4) and a["no_target"] == pytest.approx(0.9)
    assert 0.5 < a["threshold"] <= 0.6
    # keeping every present prompt (false-empty 0) means a threshold at or below 0.3: the five absent prompts
    # at 0.3 and above pass
    b = f["at_false_empty"]
    assert b["false_empty"] == 0.0 and b["no_target_n"] == 4 and b["no_target"] == pytest.approx(0.4)
    assert 0.25 < b["threshold"] <= 0.3


def test_frontier_without_absent_prompts_reports_counts_only():
    f = frontier(_rows([0.5, 0.6], []))
    assert f == {"present": 2, "absent": 0, "at_no_target": None, "at_false_empty": None}


def test_perfect_field_scores_on_a_trained_tabletop(trained_run):
    import cos3d
    from cos3d.eval.tabletop import EvalQuery, tabletop_queries

    ts = cos3d.load(trained_run)
    scene = ts.engine.scene
    qs = tabletop_queries(scene)
    rows = perfect_field_scores(ts, qs)
    assert len(rows) == len(qs)
    by = {r["query"]: r for r in rows}
    names = [q for q in qs if q.kind == "name"]
    assert names
    # a canonical training name is one of the phrasings its masks' targets average: it scores high
    for q in names:
        assert by[q.label]["score"] > 0.75, q.label
    assert all(-1.0 <= r["score"] <= 1.0 + 1e-5 for r in rows)
    # a part is scored against its parent's part targets only: a whole object's name asked as a part of the
    # robot scores below the same name asked as an object
    parts = [q for q in qs if q.kind == "part"]
    assert parts  # every tabletop holds the articulated robot
    parent = parts[0].within
    other = next(q for q in names if q.text != parent and q.gt_ids and not q.is_part)
    asked = perfect_field_scores(ts, [EvalQuery(other.text, "absent_part", [], parent)])[0]
    assert asked["part"] and asked["score"] < by[other.label]["score"] - 0.2
    for q in parts:
        assert by[q.label]["score"] > 0.75, q.label
    res = presence_frontier(ts, qs)
    held = [q for q in qs if q.kind in HELD_OUT_KINDS]  # the frontier decides the held-out kinds only
    assert res["objects"]["present"] == sum(q.present and q.within is None for q in held)
    assert res["objects"]["absent"] == sum(not q.present and q.within is None for q in held)
    assert res["all"]["present"] == sum(q.present for q in held)
    assert {q.label for q in qs if q.present and q.kind not in HELD_OUT_KINDS} <= set(res["decided_present"])
    low = [s for _, s in res["lowest_present"]]
    assert low == sorted(low)


def test_frontier_of_no_rows():
    assert frontier([]) == {"present": 0, "absent": 0, "at_no_target": None, "at_false_empty": None}


def test_budget_frontier_row_answers_empty_exactly_where_the_frontier_does(trained_run):
    import cos3d
    from cos3d.eval.budget import error_budget
    from cos3d.eval.tabletop import tabletop_queries

    ts = cos3d.load(trained_run)
    qs = [q for q in tabletop_queries(ts.engine.scene) if q.kind in ("name", "paraphrase", "absent")]
    res = error_budget(ts, qs, rows=("collaborative", "collaborative + frontier presence"))
    fr = res["presence_frontier"]
    present = [q for q in qs if q.present and q.kind in HELD_OUT_KINDS]  # presence is scored on the held-out kinds
    dropped = [q for q in present if q.label not in fr["decided_present"]]
    row = res["rows"]["collaborative + frontier presence"]
    assert row["false_empty"] == len(dropped) / len(present)
    # its thresholds keep no-target >= 0.9 on the absent prompts
    absent = [q for q in qs if not q.present]
    passed = [q for q in absent if q.label in fr["decided_present"]]
    assert len(passed) <= 0.1 * len(absent)
    # answering a prompt "not here" only removes pairs' IoU: never above the forced-presence row
    assert row["mIoU"] <= res["rows"]["collaborative"]["mIoU"] + 1e-9
    assert row["pairs"] == res["rows"]["collaborative"]["pairs"]
