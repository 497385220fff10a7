"""The query engine on a synthetic "trained" tabletop: fields made from the ground truth, no training.

Gaussians sit on the back-projected depth of the training views; each carries an instance feature near
its object's prototype (part prototype for the ``s`` level) and the labels-embedder embedding of its
object's (part's) names as language feature. This checks the engine's logic in seconds; the trained
fixture (tests/test_query_engine.py) checks it on learned fields.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cos3d.eval.metrics import iou


@pytest.fixture(scope="module")
def synthetic(tabletop_dir):
    from cos3d.data.gaussians import Gaussians
    from cos3d.query.engine import QueryEngine, QueryInputs
    from cos3d.readers import load_scene
    from cos3d.field.level import LevelField
    from cos3d.vision.labels_embedder import LabelsEmbedder

    scene = load_scene(tabletop_dir)
    pts, ins, prt, col = [], [], [], []
    for f in scene.split("train")[::2]:
        d = f.load_depth()
        P = f.camera.backproject(d)
        m = d > 0
        pts.append(P[m])
        ins.append(f.load_instance()[m])
        prt.append(f.load_part()[m])
        col.append(f.load_image()[m])
    pts, ins, prt, col = (np.concatenate(x) for x in (pts, ins, prt, col))
    key = np.floor(pts / 0.006).astype(np.int64)
    _, first = np.unique(key, axis=0, return_index=True)
    pts, ins, prt, col = pts[first], ins[first], prt[first], col[first]
    g = Gaussians.from_points(torch.from_numpy(pts).float(), torch.from_numpy(col).float() / 255, scales=0.004,
                              opacity=0.95, sh_degree=0)
    gen = torch.Generator().manual_seed(0)
    emb = LabelsEmbedder()

    def field(ids, names_of):
        uid = np.unique(ids)
        protos = torch.nn.functional.normalize(torch.randn(int(uid.max()) + 1, 16, generator=gen), dim=1)
        inst = torch.nn.functional.normalize(protos[ids] + 0.02 * torch.randn(len(ids), 16, generator=gen), dim=1)
        table = {int(i): torch.from_numpy(emb.embed_names(names_of(int(i)))) for i in uid if names_of(int(i))}
        lang = torch.stack([table.get(int(i), table[next(iter(table))] * 0) for i in ids])
        lang = torch.nn.functional.normalize(lang + 0.01 * torch.randn(lang.shape, generator=gen), dim=1)
        targets = torch.stack(list(table.values()))
        return LevelField(instance=inst, language=lang.half(), anchors=torch.zeros(0, 16), targets=targets, dbar=0.05)

    l_field = field(ins, lambda i: scene.labels.get(i, []))
    parts_or_inst = np.where(prt > 0, prt + 1000, ins)
    s_field = field(parts_or_inst, lambda i: scene.parts[i - 1000].names if i > 1000 else scene.labels.get(i, []))
    inputs = QueryInputs(scene=scene, gaussians=g, fields={"l": l_field, "s": s_field}, embedder=emb)
    return QueryEngine(inputs), ins


def _visible_iou(engine, res, ids, part=False):
    vals = []
    for f in engine.scene.split("test"):
        m = f.load_part() if part else f.load_instance()
        gt = np.isin(m, ids)
        if gt.sum() > 20:
            vals.append(iou(engine.mask(res, f.camera), gt))
    return float(np.mean(vals))


def test_names_absent_and_pair(synthetic):
    engine, ins = synthetic
    labels = engine.scene.labels
    for i, names in labels.items():
        if names[0] in ("floor", "table"):
            continue
        res = engine.query(names[0])
        assert not res.no_target, names[0]
        sel_ids = np.bincount(ins[res.selected.numpy()], minlength=max(labels) + 1)
        holders = [j for j in labels if names[0] in labels[j]]
        assert sel_ids[holders].sum() >= 0.9 * sel_ids.sum(), (names[0], sel_ids)
    assert engine.query("elephant").no_target
    import json

    meta = json.loads((engine.scene.root / "meta.json").read_text())
    kind, ids = meta["pair"]["kind"], meta["pair"]["ids"]
    res = engine.query(kind)
    assert len(res.objects) == 2, [o.num for o in res.objects]
    owners = {int(np.bincount(ins[o.gaussians.numpy()]).argmax()) for o in res.objects}
    assert owners == set(ids)


def test_fast_equals_reference_synthetic(synthetic):
    from cos3d.query.relevancy import normalize_relevancy

    engine, _ = synthetic
    for text in ("table", "robot", "lemon", "floor"):
        r = normalize_relevancy(engine.relevancy(engine.embed_text([text]))[0])
        a = engine.refine(r, method="reference")
        b = engine.refine(r, method="fast")
        assert torch.equal(a.selected, b.selected), text
        assert a.n_seeds == b.n_seeds


def test_click_and_part_synthetic(synthetic):
    from scipy.ndimage import distance_transform_edt

    engine, ins = synthetic
    f = engine.scene.split("test")[0]
    inst = f.load_instance()
    robot = next(i for i, n in engine.scene.labels.items() if "robot" in n)
    d = distance_transform_edt(inst == robot)
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    res = engine.query(click=(f.name, x, y))
    assert int(np.bincount(ins[res.selected.numpy()]).argmax()) == robot
    head = engine.query("head", within="robot")
    assert not head.no_target and head.kind == "part:text"
    head_pid = next(p for p, info in engine.scene.parts.items() if "head" in info.names)
    assert _visible_iou(engine, head, [head_pid], part=True) > 0.3
    assert engine.query("lemon", within="robot").no_target
