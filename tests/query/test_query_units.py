"""Unit tests of the query modules on synthetic data (no trained run needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cos3d.core.errors import Cos3dError
from cos3d.query.notarget import choose_threshold, filter_vocabulary, top_k_score, unique_targets
from cos3d.query.objects import oriented_box, split_objects
from cos3d.query.prompts import parse_click, parse_views
from cos3d.vision.image_prompt import parse_box, parse_points
from cos3d.query.refine import InstanceIndex, refine_fast, refine_reference, thresholds
from cos3d.query.relevancy import PromptCache, negative_max, normalize_relevancy, raw_relevancy


def _unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def synthetic_field(n=4000, k=8, noise=0.03, seed=0, r_noise=0.3):
    """Gaussians in k instance clusters; cluster 0 relevant, cluster 1 half-relevant, noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    protos = _unit(torch.randn(k, 16, generator=g))
    lab = torch.randint(0, k, (n,), generator=g)
    F = _unit(protos[lab] + noise * torch.randn(n, 16, generator=g))
    base = torch.zeros(k)
    base[0], base[1] = 0.9, 0.6
    r = (base[lab] + r_noise * torch.randn(n, generator=g)).clamp(0, 1)
    o = torch.rand(n, generator=g)
    return F, r, o, lab


# ---------------------------------------------------------------- relevancy
def test_raw_relevancy_matches_pairwise_softmax_min():
    g = torch.Generator().manual_seed(1)
    L = _unit(torch.randn(50, 12, generator=g)).half()
    P = _unit(torch.randn(3, 12, generator=g))
    Nk = _unit(torch.randn(4, 12, generator=g))
    Lf = L.float()
    expect = []
    for t in range(3):
        pos = Lf @ P[t]
        per_neg = [torch.softmax(10 * torch.stack([pos, Lf @ Nk[k]], 1), 1)[:, 0] for k in range(4)]
        expect.append(torch.stack(per_neg, 1).min(1).values)
    expect = torch.stack(expect)
    # float32 field: exact
    torch.testing.assert_close(raw_relevancy(Lf, P, Nk), expect, atol=1e-5, rtol=0)
    # fp16 field: a few prompts are multiplied in half precision (the prompt rounded to fp16; cosines
    # within ~1e-3, i.e. within 10·1e-3/4 after the sigmoid), many prompts through float32 chunks (exact)
    R = raw_relevancy(L, P, Nk)
    torch.testing.assert_close(R, expect, atol=3e-3, rtol=0)
    many = torch.cat([P, P])  # 6 > NATIVE_ROWS prompts: the float32 path
    torch.testing.assert_close(raw_relevancy(L, many, Nk)[:3], expect, atol=1e-5, rtol=0)
    torch.testing.assert_close(raw_relevancy(L, P[0], Nk), R[0])
    # the negatives' half, computed once, gives the same numbers
    nm = negative_max(L, Nk)
    torch.testing.assert_close(nm, (Lf @ Nk.T).amax(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(raw_relevancy(L, P, Nk, neg_max=nm), R)
    with pytest.raises(ValueError, match="neg_max"):
        raw_relevancy(L, P, Nk, neg_max=nm[:5])


def test_raw_relevancy_shape_errors():
    with pytest.raises(ValueError, match="share D"):
        raw_relevancy(torch.zeros(5, 4), torch.zeros(2, 3), torch.zeros(1, 3))


def test_normalize_relevancy_minmax_and_clip():
    R = torch.tensor([[0.2, 0.4, 0.6, 1.0]])
    r = normalize_relevancy(R)
    torch.testing.assert_close(r, torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    r = normalize_relevancy(torch.tensor([0.0, 0.8, 0.9, 1.0]))
    torch.testing.assert_close(r, torch.tensor([0.0, 0.6, 0.8, 1.0]))
    sub = torch.tensor([False, True, True, True])
    r = normalize_relevancy(torch.tensor([5.0, 0.0, 0.5, 1.0]), sub)
    torch.testing.assert_close(r, torch.tensor([0.0, 0.0, 0.0, 1.0]))


class _CountingEmbedder:
    model_id = "count"
    dim = 3

    def __init__(self):
        self.calls = 0

    def embed_text(self, texts):
        self.calls += len(texts)
        return torch.stack([torch.tensor([len(t), 1.0, 0.0]) for t in texts])


def test_prompt_cache_embeds_each_text_once():
    e = _CountingEmbedder()
    c = PromptCache()
    a = c.embed(e, ["mug", "cup"])
    b = c.embed(e, ["cup", "mug", "mug"])
    assert e.calls == 2 and len(c) == 2
    torch.testing.assert_close(a[0], b[1])
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))


# ---------------------------------------------------------------- refinement
def _iou(a, b, n):
    ma, mb = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    ma[a], mb[b] = True, True
    return float((ma & mb).sum()) / max(1, float((ma | mb).sum()))


def _assert_same_refinement(ref, got):
    """``got`` made the reference's decisions: seeds tried and accepted, regions in acceptance order, their
    thresholds, the selection."""
    assert ref.n_seeds == got.n_seeds
    assert ref.seeds == got.seeds
    assert torch.equal(ref.selected, got.selected)
    assert len(ref.regions) == len(got.regions)
    assert all(torch.equal(a, b) for a, b in zip(ref.regions, got.regions))
    assert ref.region_thresholds == got.region_thresholds


@pytest.mark.parametrize("noise,dbar", [(0.03, 0.15), (0.08, 0.05), (0.05, 0.1)])
def test_fast_refinement_equals_reference(noise, dbar):
    F, r, o, _ = synthetic_field(noise=noise)
    ref = refine_reference(F, r, o, dbar)
    fast = refine_fast(F, r, o, dbar)
    assert ref.n_seeds == fast.n_seeds
    assert [int(s) for s in ref.seeds] == [int(s) for s in fast.seeds]
    assert _iou(ref.selected, fast.selected, len(F)) == 1.0
    for a, b in zip(ref.regions, fast.regions):
        assert torch.equal(a, b)


def test_fast_refinement_with_subset_and_ties():
    F, r, o, lab = synthetic_field(n=3000, noise=0.05)
    r = (r * 4).round() / 4  # many ties in r: seeds go to the lowest id
    sub = lab < 4
    ref = refine_reference(F, r, o, 0.1, subset=sub)
    fast = refine_fast(F, r, o, 0.1, subset=sub, index=InstanceIndex(F))
    assert ref.seeds == fast.seeds
    assert torch.equal(ref.selected, fast.selected)
    assert bool(sub[ref.selected].all())


@pytest.mark.parametrize("ratio", [0.0, float("inf")])
def test_balls_by_matmul_or_by_index_give_the_reference_answer(monkeypatch, ratio):
    # BRUTE_FORCE_RATIO 0: every ball by one matmul against all features; inf: every ball from the index
    import cos3d.query.refine as refine_mod

    monkeypatch.setattr(refine_mod, "BRUTE_FORCE_RATIO", ratio)
    calls = []
    real = refine_mod._balls_by_matmul
    monkeypatch.setattr(refine_mod, "_balls_by_matmul", lambda *a: calls.append(1) or real(*a))
    F, r, o, lab = synthetic_field(n=3000, noise=0.05, r_noise=0.4)
    for dbar, sub in ((0.1, None), (0.05, lab < 5)):
        ref = refine_reference(F, r, o, dbar, subset=sub)
        fast = refine_fast(F, r, o, dbar, subset=sub, index=InstanceIndex(F))
        assert ref.seeds == fast.seeds and torch.equal(ref.selected, fast.selected)
        assert all(torch.equal(a, b) for a, b in zip(ref.regions, fast.regions))
        assert ref.region_thresholds == fast.region_thresholds
    assert bool(calls) == (ratio == 0.0)


@pytest.mark.parametrize("min_wave", [1, 8, 10**9])
def test_fast_refinement_reuses_ball_cache_across_queries(monkeypatch, min_wave):
    # one index shared by several queries (as the engine does): balls cached by an earlier query (with or
    # without a subset, another dbar) must give the same decisions; min_wave forces the wave-parallel
    # decisions (1), the default mix (8) or the one-seed-at-a-time path (huge)
    import cos3d.query.refine as refine_mod

    monkeypatch.setattr(refine_mod, "_MIN_WAVE", min_wave)
    F, r, o, lab = synthetic_field(n=3000, noise=0.05, r_noise=0.4)
    index = InstanceIndex(F)
    g = torch.Generator().manual_seed(1)
    for it in range(4):
        rq = (r + 0.2 * torch.randn(len(r), generator=g)).clamp(0, 1) if it else r
        sub = (lab < 5) if it == 2 else None
        dbar = 0.05 if it == 3 else 0.1
        ref = refine_reference(F, rq, o, dbar, subset=sub)
        fast = refine_fast(F, rq, o, dbar, subset=sub, index=index)
        _assert_same_refinement(ref, fast)
    # the index owns the balls: one graph per threshold set (dbar 0.1 and 0.05), filled by the queries
    keys = [tuple(np.float32(t).item() for t in thresholds(dbar)) for dbar in (0.05, 0.1)]
    assert sorted(index.ball_graphs) == sorted(keys)
    assert all(int((graph.count >= 0).sum()) > 0 for graph in index.ball_graphs.values())
    with pytest.raises(ValueError, match="3000 Gaussians"):
        index.ball_graph(F[:10].numpy(), 0.1)


def _compiled(F, r, o, dbar, subset=None, index=None):
    from cos3d.query.refine_compiled import refine_compiled, sorted_field

    F = _unit(F)
    return refine_compiled(r, o, dbar, sorted_field(index or InstanceIndex(F), F.numpy()), subset=subset)


@pytest.mark.parametrize("noise,dbar,subset,k", [(0.03, 0.15, False, None), (0.08, 0.05, True, 12),
                                                 (0.05, 0.1, True, 1), (0.05, 1.2, False, 40)])
def test_compiled_refinement_equals_reference(noise, dbar, subset, k):
    # the numba loop: the reference's seeds, regions (in acceptance order), thresholds and selection, with
    # or without a subset, on indexes of one cluster, a few, or many (dbar 1.2: balls wider than 90 degrees)
    pytest.importorskip("numba")
    F, r, o, lab = synthetic_field(n=3000, noise=noise, r_noise=0.4)
    r = (r * 8).round() / 8  # ties in r: seeds go to the lowest id
    sub = (lab < 5) if subset else None
    ref = refine_reference(F, r, o, dbar, subset=sub)
    fast = _compiled(F, r, o, dbar, subset=sub, index=InstanceIndex(F, k=k))
    assert len(ref.regions) > 1
    _assert_same_refinement(ref, fast)
    if sub is not None:
        assert bool(sub[fast.selected].all())


def test_engine_refiners_give_one_selection(monkeypatch):
    # the engine's four refinement choices on one relevancy: the same selection ("fast" picks the compiled
    # loop from COMPILED_MIN_GAUSSIANS Gaussians)
    pytest.importorskip("numba")
    import cos3d.query.engine as engine_mod
    from cos3d.query import refine_compiled

    F, r, o, _ = synthetic_field(n=2000, noise=0.05)
    used = []
    real = refine_compiled.refine_compiled
    monkeypatch.setattr(refine_compiled, "refine_compiled", lambda *a, **kw: used.append(1) or real(*a, **kw))

    class _Stub(engine_mod.QueryEngine):
        def __init__(self):  # only what refine() reads
            unit = _unit(F)
            self.refine_method = "fast"
            self.opacity = o
            self.means = torch.zeros(len(F), 3)
            self._levels = {"l": engine_mod.LevelState(name="l", unit=unit, unit_np=unit.numpy(), language=unit,
                                                   targets=unit[:1], dbar=0.1)}

    eng = _Stub()
    answers = {m: eng.refine(r, "l", method=m).selected for m in ("reference", "numpy", "compiled")}
    assert used == [1]
    monkeypatch.setattr(engine_mod, "COMPILED_MIN_GAUSSIANS", 1000)
    answers["fast"] = eng.refine(r, "l").selected
    assert used == [1, 1]
    assert all(torch.equal(answers["reference"], a) for a in answers.values())
    assert answers["reference"].numel() > 100


def test_refinement_semantics_small_example():
    # two tight clusters; cluster A relevant (accepted), cluster B has one stray candidate (rejected)
    F = _unit(torch.tensor([[1, 0, 0]] * 4 + [[0, 1, 0]] * 4, dtype=torch.float32) + 1e-3 * torch.arange(24).reshape(8, 3))
    r = torch.tensor([0.9, 0.8, 0.7, 0.2, 0.9, 0.0, 0.0, 0.0])
    o = torch.ones(8)
    for fn in (refine_reference, refine_fast) + ((_compiled,) if _has_numba() else ()):
        res = fn(F, r, o, 0.1)
        assert res.selected.tolist() == [0, 1, 2, 3]
        assert res.n_seeds == 2  # seed 0 accepted (mean 0.65), seed 4 rejected (mean 0.225)
    assert thresholds(0.1) == pytest.approx([0.96, 0.97, 0.98, 0.99])
    assert thresholds(0.0)[-1] < 1.0


def test_refinement_empty_when_no_candidates():
    F, r, o, _ = synthetic_field(n=200)
    for fn in (refine_reference, refine_fast) + ((_compiled,) if _has_numba() else ()):
        assert fn(F, torch.zeros(200), o, 0.1).selected.numel() == 0


def _has_numba() -> bool:
    from cos3d.query.refine_compiled import available

    return available()


# ---------------------------------------------------------------- objects
def test_split_objects_separates_two_blobs_and_boxes_cover_points():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 3, generator=g) * torch.tensor([0.03, 0.01, 0.02])
    b = torch.randn(300, 3, generator=g) * 0.01 + torch.tensor([0.3, 0.0, 0.0])
    means = torch.cat([a, b])
    feats = _unit(torch.cat([torch.tensor([1.0, 0, 0]).expand(300, 3), torch.tensor([0, 1.0, 0]).expand(300, 3)]))
    o = torch.full((600,), 0.9)
    score = torch.cat([torch.full((300,), 0.9), torch.full((300,), 0.8)])
    objs = split_objects(torch.arange(600), means, feats, o, score, 0.1)
    assert len(objs) == 2
    assert objs[0].score > objs[1].score
    assert {tuple(sorted(set((o_.gaussians >= 300).tolist()))) for o_ in objs} == {(False,), (True,)}
    for ob in objs:
        assert ob.box.contains(ob.points).all()
        assert np.allclose(ob.box.R.T @ ob.box.R, np.eye(3), atol=1e-9)
        assert np.linalg.det(ob.box.R) == pytest.approx(1.0)
        assert int(ob.id) in ob.gaussians.tolist()
    # the elongated blob's first axis is x
    first = objs[0] if bool((objs[0].gaussians < 300).all()) else objs[1]
    assert abs(first.box.R[0, 0]) > 0.9
    assert split_objects(torch.zeros(0, dtype=torch.long), means, feats, o, score, 0.1) == []


def test_split_objects_on_a_sample_keeps_two_objects_apart():
    # a selection larger than graph_max is split on a sample (touching distances scaled by its spacing);
    # every Gaussian follows its nearest sampled one: two same-kind blobs (same features) 0.3 apart stay two
    # objects, a far floater is dropped, and both paths agree
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 3, generator=g) * 0.02
    b = torch.randn(3000, 3, generator=g) * 0.02 + torch.tensor([0.3, 0.0, 0.0])
    floater = torch.randn(20, 3, generator=g) * 0.002 + torch.tensor([0.0, 1.0, 0.0])
    means = torch.cat([a, b, floater])
    n = len(means)
    feats = _unit(torch.tensor([1.0, 0, 0]).expand(n, 3) + 0.01 * torch.randn(n, 3, generator=g))
    o = torch.full((n,), 0.9)
    score = torch.rand(n, generator=g)
    scales = torch.full((n,), 0.004)
    full = split_objects(torch.arange(n), means, feats, o, score, 0.01, scales=scales)
    sampled = split_objects(torch.arange(n), means, feats, o, score, 0.01, scales=scales, graph_max=500)
    for objs in (full, sampled):
        assert len(objs) == 2
        sides = sorted(tuple(sorted(set((ob.gaussians >= 3000).tolist()))) for ob in objs)
        assert sides == [(False,), (True,)]
        assert sum(ob.num for ob in objs) >= 5900
        assert not any(bool((ob.gaussians >= 6000).any()) for ob in objs)  # the floater is dropped
    overlap = sum(len(np.intersect1d(x.gaussians.numpy(), y.gaussians.numpy())) for x in full for y in sampled
                  if bool((x.gaussians[0] >= 3000) == (y.gaussians[0] >= 3000)))
    assert overlap >= 5900


def test_oriented_box_degenerate():
    b = oriented_box(np.array([[0.0, 0, 0], [1.0, 1, 1]]))
    assert b.contains(np.array([[0.5, 0.5, 0.5]])).all()


# ---------------------------------------------------------------- no-target calibration
def test_choose_threshold_separated_and_overlapping():
    thr, how = choose_threshold(np.array([0.99, 0.995, 0.98]), np.array([0.3, 0.5, 0.7]))
    assert how == "separated" and 0.7 < thr < 0.98
    thr, how = choose_threshold(np.array([0.6, 0.9, 0.95]), np.array([0.3, 0.7, 0.65]))
    assert how == "balanced" and 0.3 < thr < 0.95


def test_filter_vocabulary_drops_words_like_targets():
    t = _unit(torch.tensor([[1.0, 0, 0, 0]]))
    w = _unit(torch.tensor([[0.95, 0.1, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0.1, 0, 0, 1.0]]))
    keep, dropped = filter_vocabulary(["cup", "a", "b", "c"], w, t)
    assert dropped == [0] and keep == [1, 2, 3]


def test_unique_targets_dedups_and_caps():
    base = _unit(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)))
    T = torch.cat([base, base, base])
    assert len(unique_targets(T)) == 5
    assert len(unique_targets(_unit(torch.randn(300, 8)), cap=16)) == 16


def test_top_k_score():
    R = torch.tensor([[0.1, 0.9, 0.8, 0.2]])
    assert float(top_k_score(R, torch.tensor([True, True, True, True]), k=2)) == pytest.approx(0.85)
    assert float(top_k_score(R, torch.tensor([True, False, False, True]), k=2)) == pytest.approx(0.15)


# ---------------------------------------------------------------- prompt parsing
def test_prompt_parsing():
    assert parse_box("1,2,30,40") == [1.0, 2.0, 30.0, 40.0]
    pts, lab = parse_points("10,20; 30,40,0")
    assert pts.tolist() == [[10, 20], [30, 40]] and lab.tolist() == [1, 0]
    c = parse_click("16:80.5,60")
    assert (c.view, c.x, c.y) == ("16", 80.5, 60.0)
    assert parse_click("a:b:1,2").view == "a:b"
    assert parse_views(["16,17", "18"]) == ["16", "17", "18"]
    for bad, fn in (("1,2,3", parse_box), ("5,5,1,1", parse_box), ("x,y", parse_points), ("16-1,2", parse_click),
                    ("16:1", parse_click), ("1,2,7", parse_points)):
        with pytest.raises(Cos3dError):
            fn(bad)
