"""Presence rules (issue 13): the development prompts are disjoint from evaluation, the rules' thresholds
are what their docstrings say, the cosines are recovered exactly from the relevancy, and the sweep/choice
pick the point the docs describe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.eval import devprompts
from cos3d.eval.presence import choose, sweep
from cos3d.query.notarget import (
    MARGIN,
    NoTargetCalibration,
    choose_threshold,
    decide,
    presence_statistics,
    top_k_score,
)
from cos3d.query.relevancy import negative_max, raw_relevancy


def test_dev_prompts_are_disjoint_from_evaluation_training_and_calibration():
    devprompts.check_dev_disjoint()
    res = devprompts.reserved_texts()
    dev = devprompts.dev_texts()
    assert len(dev) >= 60
    for what, texts in res.items():
        assert not dev & texts, what
    # every catalogue entry, the robot's parts and floor/table have development phrasings
    from cos3d.tabletop.catalog import CATALOG, ROBOT

    assert set(CATALOG) <= set(devprompts.DEV_PARAPHRASES)
    assert {p.names[0] for p in ROBOT.parts} == set(devprompts.DEV_PART_PARAPHRASES)


@pytest.mark.parametrize("planted", [("DEV_ABSENT", ("teapot",)), ("DEV_ABSENT", ("spoon",)),
                                     ("DEV_ABSENT", ("big teapot",))])
def test_dev_overlap_is_refused(monkeypatch, planted):
    name, extra = planted
    monkeypatch.setattr(devprompts, name, getattr(devprompts, name) + extra)
    with pytest.raises(Cos3dError, match="development prompts"):
        devprompts.check_dev_disjoint()


def _calibration(rng: np.random.Generator, V: torch.Tensor) -> NoTargetCalibration:
    pos = rng.uniform(0.9, 0.999, 40)
    neg = rng.uniform(0.2, 0.8, 100)
    thr, method = choose_threshold(pos, neg)
    return NoTargetCalibration(threshold=thr, positive_scores=pos, negative_scores=neg, floor=float(np.percentile(neg, 95)),
                               method=method, positive_cos=rng.uniform(0.8, 1.0, 40), negative_cos=rng.uniform(0.2, 0.5, 100),
                               vocabulary_embeddings=V)


def _field(n=300, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    P = torch.nn.functional.normalize(torch.randn(5, d, generator=g), dim=1)
    Nn = torch.nn.functional.normalize(torch.randn(4, d, generator=g), dim=1)
    V = torch.nn.functional.normalize(torch.randn(30, d, generator=g), dim=1)
    return L, P, Nn, V


def test_statistics_recover_cosines_and_rules_match_their_definitions():
    rng = np.random.default_rng(0)
    L, P, Nn, V = _field()
    cal = _calibration(rng, V)
    nm = negative_max(L, Nn)
    R = raw_relevancy(L, P, Nn, neg_max=nm)
    valid = torch.rand(len(L), generator=torch.Generator().manual_seed(1)) > 0.2
    subset = torch.zeros(len(L), dtype=torch.bool)
    subset[:100] = True
    stats = presence_statistics(cal, R, P, valid, neg_max=nm, subset=subset, language=L)
    cos = top_k_score(P @ L.T, valid, cal.top_k)
    inner_cos = top_k_score(P @ L.T, valid & subset, cal.top_k)
    world = (P @ V.T).amax(1)
    for t, st in enumerate(stats):
        assert st["cos"] == pytest.approx(float(cos[t]), abs=1e-5)
        assert st["inner_cos"] == pytest.approx(float(inner_cos[t]), abs=1e-5)
        assert st["world"] == pytest.approx(float(world[t]), abs=1e-6)
        assert st["score"] == pytest.approx(float(top_k_score(R, valid, cal.top_k)[t]), abs=1e-7)
    # the cosines handed over by raw_relevancy give the same statistics as the ones recovered from R
    R2, C2 = raw_relevancy(L, P, Nn, neg_max=nm, return_cosines=True)
    assert torch.equal(R2, R) and torch.allclose(C2, P @ L.T, atol=1e-6)
    direct = presence_statistics(cal, R, P, valid, neg_max=nm, subset=subset, language=L, cosines=C2,
                                 relevancy_score=False)
    for a, b in zip(stats, direct):
        assert b["score"] is None and b["cos"] == pytest.approx(a["cos"], abs=1e-5)
        assert b["inner_cos"] == pytest.approx(a["inner_cos"], abs=1e-5) and b["world"] == a["world"]
    with pytest.raises(ValueError, match="relevancy rule needs"):
        decide({**direct[0], "inner_cos": None}, "relevancy", MARGIN)
    st = dict(stats[0])
    # relevancy at the default margin is the calibrated threshold (and the inner floor)
    flat = {**st, "inner_cos": None, "inner_score": None}
    ok, v, thr, _ = decide(flat, "relevancy", MARGIN)
    assert thr == pytest.approx(cal.threshold) and ok == (st["score"] >= cal.threshold)
    ok, v, thr, _ = decide(st, "relevancy", MARGIN, part_rule="scene")
    assert ok == (st["score"] >= cal.threshold and st["inner_score"] >= min(cal.floor, cal.threshold))
    # cosine: q95 + m (p10 - q95)
    p_lo, q_hi = np.percentile(cal.positive_cos, 10), np.percentile(cal.negative_cos, 95)
    for m in (-0.2, 0.0, 0.3):
        _, v, thr, _ = decide(flat, "cosine", m)
        assert thr == pytest.approx(q_hi + m * (p_lo - q_hi))
    # relative: cos - world against delta
    for delta in (-0.5, 0.0, 0.5):
        ok, v, thr, _ = decide({**st, "inner_cos": None}, "relative", delta)
        assert v == pytest.approx(st["cos"] - st["world"]) and thr == delta
        assert ok == (st["cos"] - st["world"] >= delta)
    # inner: the q-quantile of the vocabulary's cosines inside the parent
    inner_neg = top_k_score(V @ L[valid & subset].T, torch.ones(int((valid & subset).sum()), dtype=torch.bool), cal.top_k)
    for q in (0.0, 0.5, 1.0):
        ok, v, thr, _ = decide(st, part_rule="inner", part_param=q)
        assert thr == pytest.approx(float(np.quantile(inner_neg.numpy(), q)), abs=1e-6)
        assert ok == (st["inner_cos"] >= thr)
    with pytest.raises(ValueError, match="unknown presence rule"):
        decide(st, "maximum", 0.0)


def test_sweep_is_monotone_and_choose_takes_the_lowest_false_empty_at_the_bar():
    cal = _calibration(np.random.default_rng(2), None)
    rows = []
    for c, present in [(0.9, True), (0.7, True), (0.55, True), (0.45, True), (0.5, False), (0.4, False),
                       (0.3, False), (0.35, False), (0.2, False), (0.1, False)]:
        rows.append({"cos": c, "world": 0.0, "score": 0.0, "inner_cos": None, "inner_score": None, "cal": cal,
                     "present": present, "within": None, "parent_found": True})
    vals = np.linspace(-0.3, 0.3, 13)
    curve = sweep(rows, "relative", vals)
    fe = [c["false_empty"] for c in curve]
    nt = [c["no_target"] for c in curve]
    assert fe == sorted(fe) and nt == sorted(nt)
    # relative with world 0: present iff cos >= delta; at delta 0.51: 1 of 4 present missed, all absent right
    c = sweep(rows, "relative", [0.51])[0]
    assert c["false_empty"] == 0.25 and c["no_target"] == 1.0 and c["present"] == 4 and c["absent"] == 6
    best = choose(sweep(rows, "relative", [0.3, 0.42, 0.46, 0.52, 0.6]), min_no_target=0.8)
    # 0.42 misses nothing and gets 5 of 6 absent right (0.833 >= 0.8)
    assert best["value"] == 0.42 and best["false_empty"] == 0.0
    assert choose(sweep(rows, "relative", [-1.0]), min_no_target=0.9) is None


def test_large_parent_is_sampled_evenly_for_prompt_and_vocabulary(monkeypatch):
    from cos3d.query import notarget

    rng = np.random.default_rng(3)
    L, P, Nn, V = _field(n=400, seed=4)
    cal = _calibration(rng, V)
    nm = negative_max(L, Nn)
    R, C = raw_relevancy(L, P, Nn, neg_max=nm, return_cosines=True)
    valid = torch.ones(len(L), dtype=torch.bool)
    subset = torch.zeros(len(L), dtype=torch.bool)
    subset[50:350] = True
    full = presence_statistics(cal, R, P, valid, neg_max=nm, subset=subset, language=L, cosines=C)
    monkeypatch.setattr(notarget, "INNER_SAMPLE", 60)
    sampled = presence_statistics(cal, R, P, valid, neg_max=nm, subset=subset, language=L, cosines=C)
    ids = torch.arange(50, 350)[torch.linspace(0, 299, 60).round().long()]
    keep = torch.zeros(len(L), dtype=torch.bool)
    keep[ids] = True
    for t, st in enumerate(sampled):
        assert st["inner_cos"] == pytest.approx(float(top_k_score(C, keep, cal.top_k)[t]), abs=1e-6)
        assert st["cos"] == full[t]["cos"]  # the scene-wide statistic is not sampled
    ref = np.sort(top_k_score(V @ L[ids].T, torch.ones(60, dtype=torch.bool), cal.top_k).numpy())
    np.testing.assert_allclose(sampled[0]["inner_negative_cos"], ref, atol=1e-6)
    assert len(full[0]["inner_negative_cos"]) == len(V)


def test_dev_tabletop_queries_carry_their_catalogue_ground_truth(tabletop_dir):
    import json

    from cos3d.eval.presence import dev_queries
    from cos3d.eval.tabletop import tabletop_queries
    from cos3d.readers import load_scene

    scene = load_scene(tabletop_dir)
    qs = devprompts.dev_tabletop_queries(scene)
    meta = json.loads((tabletop_dir / "meta.json").read_text())
    ids_of: dict[str, set[int]] = {}
    for o in meta["objects"]:
        ids_of.setdefault(o["key"], set()).add(int(o["id"]))
    present = [q for q in qs if q.kind == "paraphrase"]
    assert present
    for q in present:  # every instance of the catalogue entry the phrasing was written for, and only those
        keys = [k for k, ps in devprompts.DEV_PARAPHRASES.items() if q.text in ps]
        assert len(keys) == 1 and set(q.gt_ids) == ids_of[keys[0]], q
    parts = [q for q in qs if q.kind == "part_paraphrase"]
    assert parts and all(q.within == scene.labels[next(iter(scene.parts.values())).parent][0] for q in parts)
    for q in parts:
        canon = next(k for k, ps in devprompts.DEV_PART_PARAPHRASES.items() if q.text in ps)
        assert q.gt_ids and all(scene.parts[i].names[0] == canon for i in q.gt_ids)
    assert [q.text for q in qs if q.kind == "absent"] == list(devprompts.DEV_ABSENT)
    assert [q.text for q in qs if q.kind == "absent_part"] == list(devprompts.DEV_ABSENT[:devprompts.DEV_ABSENT_PARTS])
    assert all(not q.gt_ids for q in qs if q.kind in ("absent", "absent_part"))
    # disjoint from the protocol's own prompts; the presence sweep reads the same rows
    assert not {(q.text, q.within) for q in qs} & {(q.text, q.within) for q in tabletop_queries(scene)}
    assert [(r.text, r.present, r.within) for r in dev_queries(scene)] == [(q.text, q.present, q.within) for q in qs]


def test_separability_bounds_are_exact_on_small_cases():
    """scripts/presence_separability.py's AUC and hindsight acceptance: hand-checked cases, ties included."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "presence_separability", Path(__file__).parents[2] / "scripts" / "presence_separability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pos, neg = np.array([0.3, 0.5, 0.9]), np.array([0.1, 0.4, 0.6, 0.9])
    # pairs won: 0.3 beats 1; 0.5 beats 2; 0.9 beats 3 and ties 1 -> (1 + 2 + 3.5) / 12
    assert mod.auc(pos, neg) == pytest.approx(6.5 / 12)
    assert mod.auc(np.array([2.0]), np.array([1.0])) == 1.0
    # reject >= 0.75 of neg: the threshold must sit above 0.6 (3 of 4 below) -> only 0.9 accepted
    assert mod.accept_at(pos, neg, 0.75) == pytest.approx(1 / 3)
    # reject >= 0.5: threshold in (0.4, 0.5] keeps 0.5 and 0.9
    assert mod.accept_at(pos, neg, 0.5) == pytest.approx(2 / 3)
    assert mod.accept_at(pos, neg, 1.0) == 0.0  # 0.9 ties the top negative: nothing clears every negative
