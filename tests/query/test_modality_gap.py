"""Presence and the query rules under a modality gap (issue 26), on the modality-gap stand-in ``labels-gap``
(:mod:`cos3d.vision.gap_standin`): the synthetic "trained" tabletop of tests/test_query_synthetic.py, whose
language features are the stand-in's *image* side while queries go through its *text* side, as with CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _engine(scene, emb, to_field):
    """A synthetic engine on ``scene``: Gaussians on the training views' depth, language features
    ``to_field(names) [D]`` per object (plus noise), targets the same per object."""
    from cos3d.data.gaussians import Gaussians
    from cos3d.field.level import LevelField
    from cos3d.query.engine import QueryEngine, QueryInputs

    pts, ins, prt = [], [], []
    for f in scene.split("train")[::4]:
        d = f.load_depth()
        m = d > 0
        pts.append(f.camera.backproject(d)[m])
        ins.append(f.load_instance()[m])
        prt.append(f.load_part()[m])
    pts, ins, prt = (np.concatenate(x) for x in (pts, ins, prt))
    _, first = np.unique(np.floor(pts / 0.012).astype(np.int64), axis=0, return_index=True)
    pts, ins, prt = pts[first], ins[first], prt[first]
    g = Gaussians.from_points(torch.from_numpy(pts).float(), torch.full((len(pts), 3), 0.5), scales=0.004,
                              opacity=0.95, sh_degree=0)
    gen = torch.Generator().manual_seed(0)

    def field(ids, names_of):
        uid = np.unique(ids)
        protos = torch.nn.functional.normalize(torch.randn(int(uid.max()) + 1, 16, generator=gen), dim=1)
        inst = torch.nn.functional.normalize(protos[ids] + 0.02 * torch.randn(len(ids), 16, generator=gen), dim=1)
        table = {int(i): torch.as_tensor(to_field(names_of(int(i)))).float() for i in uid if names_of(int(i))}
        lang = torch.stack([table.get(int(i), table[next(iter(table))] * 0) for i in ids])
        lang = torch.nn.functional.normalize(lang + 0.01 * torch.randn(lang.shape, generator=gen), dim=1)
        return LevelField(instance=inst, language=lang.half(), anchors=torch.zeros(0, 16),
                          targets=torch.stack(list(table.values())), dbar=0.05)

    l_field = field(ins, lambda i: scene.labels.get(i, []))
    s_ids = np.where(prt > 0, prt + 1000, ins)
    s_field = field(s_ids, lambda i: scene.parts[i - 1000].names if i > 1000 else scene.labels.get(i, []))
    return QueryEngine(QueryInputs(scene=scene, gaussians=g, fields={"l": l_field, "s": s_field}, embedder=emb))


@pytest.fixture(scope="module")
def gap_engine(tabletop_dir):
    from cos3d.readers import load_scene
    from cos3d.vision.registry import create_embedder

    emb = create_embedder("labels-gap")
    # the field learns the masks' image embeddings (no view noise: the mean over views)
    return _engine(load_scene(tabletop_dir), emb, lambda names: emb.image_side(emb.labels.embed_names(names)[None],
                                                                               None)[0])


def _present_names(scene):
    return [names for names in scene.labels.values() if names[0] not in ("floor", "table")]


def test_stand_in_has_a_clip_like_gap():
    """The stand-in's cosine levels are CLIP ViT-B/16's (module docstring of cos3d.vision.gap_standin)."""
    from cos3d.vision.gap_standin import PROFILES, ModalityGapStandIn

    emb = ModalityGapStandIn(profile="clip-vit-b16")
    assert not emb.mask_embeddings_are_text and "modality-gap" in str(emb.params)
    assert abs(PROFILES["clip-vit-b16"].gap_distance - 0.82) < 0.02  # Liang et al. 2022
    names = [["rubber duck", "duck"], ["blue mug", "mug"], ["lemon"], ["frying pan", "pan"]]
    E = np.stack([emb.labels.embed_names(n) for n in names])
    I1, I2 = torch.from_numpy(emb.image_side(E, 1)), torch.from_numpy(emb.image_side(E, 2))
    T = emb.embed_text([n[0] for n in names])
    match = torch.diag(T @ I1.T)
    off = (T @ I1.T)[~torch.eye(len(names), dtype=torch.bool)]
    assert ((match > 0.22) & (match < 0.4)).all(), match
    assert ((off > 0.1) & (off < 0.26)).all() and off.max() < match.min(), off
    views = torch.diag(I1 @ I2.T)
    assert ((views > 0.85) & (views < 0.97)).all(), views  # image-to-image: far above any text-to-image
    assert emb.model_id != emb.labels.model_id and emb.embed_text(["mug"]).shape == (1, emb.dim)


def test_presence_calibrates_on_text_words_under_the_gap(gap_engine):
    """Fails if the calibration goes back to image-side positives (the Ins2Lang targets)."""
    cal = gap_engine.calibration
    assert cal.positives_from == "words" and cal.positive_words, cal.to_dict()
    assert set(cal.positive_words) <= set(cal.dropped_words)  # resembles the scene: never a negative
    # the positives are text-to-field cosines, on a query's footing: far below the image-to-image level
    assert cal.positive_cos.max() < 0.5, cal.positive_cos
    assert cal.threshold > 0 and cal.to_dict()["cosine_threshold"] < 0.4


def test_present_prompts_are_found_under_the_gap(gap_engine):
    """Fails if a present thing is answered "not here" under the modality gap."""
    scene = gap_engine.scene
    res = gap_engine.query_many([names[0] for names in _present_names(scene)])  # every object's name
    missed = [(r.query, r.reason) for r in res if r.no_target]
    assert not missed, missed
    # its other training phrasings ("mug" names two objects: each mask embeds the mean of its phrasings)
    # (at the shipped words quantile, 1.0, "mug" and "ketchup" score just under the best unrelated word here:
    # the false-empty cost of the gap, docs/benchmarks.md)
    others = gap_engine.query_many(sorted({n for names in _present_names(scene) for n in names[1:2]}))
    assert sum(r.no_target for r in others) <= 2, [(r.query, r.reason) for r in others if r.no_target]
    for absent in ("elephant", "volcano", "saxophone"):
        assert gap_engine.query(absent).no_target, absent


def test_image_side_positives_answer_present_things_not_here(gap_engine):
    """The failure of issue 26: with the targets (image embeddings) as positives, the cosine threshold sits
    above every present name's text-to-field cosine."""
    from cos3d.query.notarget import NEGATIVE_VOCABULARY, calibrate, decide, presence_statistics

    lv = gap_engine.level_state("l")
    vocab = list(NEGATIVE_VOCABULARY)
    old = calibrate(lv.language, gap_engine.opacity, lv.targets, gap_engine.negatives,
                    gap_engine.cache.embed(gap_engine.embedder, vocab), vocab, positives="targets")
    P = gap_engine.embed_text([n[0] for n in _present_names(gap_engine.scene)])
    R = gap_engine.relevancy(P)
    stats = presence_statistics(old, R, P, gap_engine.opacity > 0.1, neg_max=gap_engine.negative_max_for("l"))
    assert old.positive_cos.min() > 0.8  # image-to-image: the field learned these very embeddings
    shipped = [decide(st, "cosine")[0] for st in stats]  # the shipped margin
    assert sum(shipped) <= 0.75 * len(shipped), shipped  # at least a quarter of present things "not here"
    before = [decide(st, "cosine", 0.15)[0] for st in stats]  # issue 26's "15 % of the way"
    assert sum(before) <= len(before) // 4, before  # nearly every present thing "not here"


def test_labels_keeps_target_positives(tabletop_dir):
    from cos3d.readers import load_scene
    from cos3d.vision.labels_embedder import LabelsEmbedder

    emb = LabelsEmbedder()
    assert emb.mask_embeddings_are_text
    eng = _engine(load_scene(tabletop_dir), emb, lambda names: emb.embed_names(names))
    cal = eng.calibration
    assert cal.positives_from == "targets" and not cal.positive_words
    st = cal.state_dict()
    from cos3d.query.notarget import NoTargetCalibration

    assert NoTargetCalibration.from_state_dict(st).positives_from == "targets"
