"""``cos3d export``: what users take out of a trained run, in the formats their tools read.

Into ``OUT`` (default ``RUN/export``), every file written atomically:

- **Scene labels** (a scene-wide decomposition into named objects):
  ``labels.ply`` — every Gaussian (3DGS columns, opens in SuperSplat and other 3DGS viewers) plus the
  PLY properties ``label`` (int, 0 = no object) and ``label_score``; ``labels.npz`` — ``label`` [N]
  int32, ``score`` [N] float32, ``means`` [N, 3], ``names`` [K+1] (index 0 = ""), ``object_names``
  (JSON text of every object's ranked names); ``labels.json`` — the objects (label, names best first,
  score, Gaussian count, centroid, oriented box) and the vocabulary.
- **Per prompt** (``--prompt "red mug,bowl"``; files named by the prompt's slug): ``<slug>.ply`` the
  selected Gaussians (a 3DGS .ply); ``<slug>_points.ply`` a labelled point cloud (x y z, red green
  blue uchar, ``object`` int: 1.. per object) that CloudCompare, MeshLab and open3d read;
  ``<slug>.json`` the answer's objects with centroids, oriented boxes and grasps
  (:func:`cos3d.robot.pick_targets`, scene frame); ``<slug>.spz`` with ``--formats`` holding ``spz``.
- **Scene** in the ``--formats`` asked for beyond ``ply``, beside the labels: ``scene.spz`` (Niantic .spz,
  version ``--spz-version``, default 4). ``--no-labels`` writes no scene-wide file: the prompts' files only.

The decomposition (:func:`decompose`): every vocabulary entry is queried (text); each object of each
answer is a candidate with its score; candidates are taken best first, and one whose Gaussians are
mostly (≥ 50 %) claimed already adds its name to that object, otherwise it becomes a new object
holding its unclaimed Gaussians — or, when it is less than half the size of the object that claimed it
(a butter box inside the answer to "table"), carves its Gaussians out of that object. The vocabulary is ``--vocabulary`` or, by default, the names of the
training masks (the scene's ``labels.json``: available with the dataset masks; a run trained on SAM
masks needs ``--vocabulary``). Queries run on the run's own providers (oracle-2D offline).

Then the objects are filtered (:func:`filter_objects`; ``labels.json``'s ``filtered`` says what went):

- **Floaters** leave their object: its Gaussians are linked to near neighbours (within :data:`BODY_LINK`
  × the object's own typical spacing, so the rule is scale-free) and the linked parts lighter than
  :data:`BODY_SHARE` of the heaviest part, not touching a heavier one, are dropped (label 0). A floor whose
  stray Gaussians 20 m away made its box 46 × 39 m keeps its body.
- **Fragments** are not objects: one with fewer than :data:`MIN_GAUSSIANS` Gaussians, or with less opacity
  mass (Σ opacity: how much of it renders) than :data:`MIN_SHARE` of the heaviest object of the same name,
  is dropped (a flat 159-Gaussian slab answered as a third "mug" beside two real ones).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cos3d.core.atomic import atomic_path, check_writable, write_json
from cos3d.core.errors import Cos3dError

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.gaussians import Gaussians
    from cos3d.pipeline.trained import TrainedScene

FORMATS = ("ply", "spz")
SAME_OBJECT = 0.5
"""A candidate whose Gaussians are claimed by an object at least this much names that object."""
BODY_LINK = 4.0
"""Two Gaussians of an object are linked when their centres lie within this many times the object's
typical spacing (the median distance to a Gaussian's 4th nearest neighbour in the object)."""
BODY_SHARE = 0.1
"""A linked part of an object with less opacity mass than this share of its heaviest part, and not within
the link distance of a heavier part, is floaters: dropped from the object."""
MIN_SHARE = 0.25
"""An object with less opacity mass than this share of the heaviest object of its name is a fragment, not
another instance (two mugs weigh alike; a 159-Gaussian slab beside 1300-Gaussian mugs does not)."""
MIN_GAUSSIANS = 16
"""An object needs at least this many Gaussians (after its floaters are dropped)."""


@dataclass
class ExportConfig:
    """What ``cos3d export`` writes."""

    run: Path
    """Run folder made by ``cos3d train``."""
    out: Path | None = None
    """Output folder (default: RUN/export)."""
    vocabulary: tuple[str, ...] | None = None
    """Names to label the scene with, comma separated (default: the training masks' names)."""
    prompt: tuple[str, ...] = ()
    """Text prompts whose selections to export, comma separated."""
    formats: tuple[str, ...] = ("ply",)
    """Splat formats for the scene and selections: ply, spz (ply always)."""
    labels: bool = True
    """Write the scene-wide labels (labels.ply/.npz/.json) and, with --formats spz, scene.spz; --no-labels:
    only the prompts' files."""
    spz_version: int = 4
    """.spz version to write: 4 (the current one) or 3 (for viewers that read only gzip .spz)."""
    device: str = "cpu"
    """Device to load the run on (cpu, cuda, auto)."""

    def validate(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise Cos3dError(f"--formats {','.join(bad)}: unknown; choose from {','.join(FORMATS)}")
        if self.spz_version not in (3, 4):
            raise Cos3dError(f"--spz-version {self.spz_version}: choose 4 (current) or 3")
        if self.vocabulary is not None and not [v for v in self.vocabulary if v.strip()]:
            raise Cos3dError("--vocabulary is empty; give names separated by commas")


@dataclass
class SceneObject:
    """One object of the scene-wide decomposition."""

    label: int
    names: list[str]
    """Vocabulary entries that selected it, best score first."""
    score: float
    gaussians: np.ndarray
    """int64 [K] Gaussian ids."""
    scores: list[float] = field(default_factory=list)

    def to_dict(self, means: np.ndarray) -> dict:
        from cos3d.query.objects import oriented_box

        pts = means[self.gaussians]
        return {"label": self.label, "names": self.names, "scores": [round(s, 4) for s in self.scores],
                "score": round(self.score, 4), "num_gaussians": int(len(self.gaussians)),
                "centroid": pts.mean(0).tolist(), "box": oriented_box(pts).to_dict()}


def slug(text: str) -> str:
    """A file-name stem for a prompt: ``"Red mug!"`` → ``red_mug``."""
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:60] or "prompt"


def default_vocabulary(ts: "TrainedScene") -> list[str]:
    """The training masks' names: each labelled instance's canonical name (``labels.json``)."""
    names = []
    for _, nm in sorted(ts.scene.labels.items()):
        if nm and nm[0] not in names:
            names.append(nm[0])
    if not names:
        raise Cos3dError(f"{ts.run_dir}: the scene has no object names (masks without labels, e.g. SAM2); "
                         "give --vocabulary NAME,NAME,...")
    return names


def decompose(ts: "TrainedScene", vocabulary: list[str], *, dropped: dict | None = None
              ) -> tuple[np.ndarray, np.ndarray, list[SceneObject]]:
    """Per-Gaussian ``label`` [N] int32 (0 = none), ``score`` [N] float32 and the objects (module docstring),
    after :func:`filter_objects`; ``dropped`` (a dict) receives what the filters dropped."""
    n = ts.gaussians.num
    cands = []
    for v in vocabulary:
        res = ts.query(v)
        for o in res.objects:
            cands.append((float(o.score), v, o.gaussians.detach().cpu().numpy().astype(np.int64)))
    cands.sort(key=lambda c: -c[0])
    label = np.zeros(n, np.int32)
    score = np.zeros(n, np.float32)
    objs: list[SceneObject] = []
    for sc, name, ids in cands:
        owners = label[ids]
        claimed = owners[owners > 0]
        if len(claimed) >= SAME_OBJECT * len(ids):
            host = objs[int(np.bincount(claimed).argmax()) - 1]
            if len(ids) >= SAME_OBJECT * len(host.gaussians):  # the same object under another name
                if name not in host.names:
                    host.names.append(name)
                    host.scores.append(sc)
                continue
            # a much smaller selection inside a larger one (the butter on the table): carve it out
            taken = ids[owners == host.label]
            host.gaussians = np.setdiff1d(host.gaussians, taken)
            owners = np.where(owners == host.label, 0, owners)
            label[taken] = 0
        free = ids[owners == 0]
        if len(free) == 0:
            continue
        obj = SceneObject(label=len(objs) + 1, names=[name], score=sc, gaussians=free, scores=[sc])
        label[free] = obj.label
        score[free] = sc
        objs.append(obj)
    g = ts.gaussians
    means = g.means.detach().cpu().double().numpy()
    opacity = g.opacities.detach().cpu().double().numpy()
    objs, why = filter_objects(objs, means, opacity)
    if dropped is not None:
        dropped.update(why)
    label[:] = 0
    for o in objs:
        label[o.gaussians] = o.label
    score[label == 0] = 0.0
    return label, score, objs


def object_body(ids: np.ndarray, means: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    """The Gaussians of ``ids`` that form the object's body, sorted; the rest are floaters (module docstring).

    Parts are the connected components of the graph linking each Gaussian to its 8 nearest neighbours in the
    object that lie within :data:`BODY_LINK` × the object's typical spacing: scale-free, so a 40 m floor and a
    5 cm can are judged alike. Parts holding at least :data:`BODY_SHARE` of the heaviest part's opacity mass
    are the body; a lighter part joins it when its nearest Gaussian is within the link distance of the body
    (a k-NN graph can miss links between dense clumps); the others are floaters."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    ids = np.sort(np.asarray(ids, np.int64))
    if len(ids) < 6:
        return ids
    X = means[ids]
    w = np.clip(opacity[ids], 1e-8, None)
    k = min(8, len(ids) - 1)
    dist, nb = cKDTree(X).query(X, k=k + 1)
    link = BODY_LINK * max(float(np.median(dist[:, 4])), 1e-9)
    rows = np.repeat(np.arange(len(ids)), k)
    keep = dist[:, 1:].reshape(-1) <= link
    graph = coo_matrix((np.ones(int(keep.sum()), np.int8), (rows[keep], nb[:, 1:].reshape(-1)[keep])),
                       shape=(len(ids), len(ids)))
    part = connected_components(graph, directed=False)[1]
    mass = np.bincount(part, weights=w)
    body = mass[part] >= BODY_SHARE * mass.max()
    if not body.all():
        d, _ = cKDTree(X[body]).query(X[~body], k=1)
        near = np.zeros(len(mass), bool)
        near[np.unique(part[~body][d <= link])] = True  # a part touching the body joins it whole
        body |= near[part]
    return ids[body]


def filter_objects(objs: list[SceneObject], means: np.ndarray, opacity: np.ndarray) -> tuple[list[SceneObject], dict]:
    """Drop each object's floaters (:func:`object_body`), then the objects below the floor: fewer than
    :data:`MIN_GAUSSIANS` Gaussians, or less opacity mass than :data:`MIN_SHARE` of the heaviest object of
    the same name. The survivors are relabelled 1..K in order; returns them and counts of what was dropped."""
    floaters = 0
    for o in objs:
        body = object_body(o.gaussians, means, opacity)
        floaters += len(o.gaussians) - len(body)
        o.gaussians = body
    mass = {id(o): float(np.clip(opacity[o.gaussians], 1e-8, None).sum()) for o in objs}
    heaviest: dict[str, float] = {}
    for o in objs:
        heaviest[o.names[0]] = max(heaviest.get(o.names[0], 0.0), mass[id(o)])
    kept, small = [], []
    for o in objs:
        if len(o.gaussians) >= MIN_GAUSSIANS and mass[id(o)] >= MIN_SHARE * heaviest[o.names[0]]:
            kept.append(o)
        else:
            small.append({"names": o.names, "num_gaussians": int(len(o.gaussians)), "opacity_mass": round(mass[id(o)], 3)})
    for i, o in enumerate(kept, start=1):
        o.label = i
    return kept, {"floater_gaussians": int(floaters), "objects_below_floor": small}


def write_point_cloud(path: Path, points: np.ndarray, rgb: np.ndarray, labels: np.ndarray) -> Path:
    """A binary PLY point cloud: x y z (float32), red green blue (uchar), object (int32)."""
    from plyfile import PlyData, PlyElement

    data = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                        ("blue", "u1"), ("object", "<i4")])
    for i, c in enumerate("xyz"):
        data[c] = points[:, i]
    for i, c in enumerate(("red", "green", "blue")):
        data[c] = np.clip(np.round(rgb[:, i] * 255), 0, 255).astype(np.uint8)
    data["object"] = labels
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(data, "vertex")], text=False, byte_order="<",
                comments=["cos3d labelled point cloud"]).write(str(tmp))
    return path


def _write_splats(stem: Path, g: "Gaussians", formats: tuple[str, ...], extra: dict | None = None, *,
                  spz_version: int = 4) -> list[Path]:
    from cos3d.data.ply import write_ply, write_spz

    out = [write_ply(stem.with_suffix(".ply"), g, features=False, extra_columns=extra)]
    if "spz" in formats:
        out.append(write_spz(stem.with_suffix(".spz"), g, version=spz_version))
    return out


def export_run(cfg: ExportConfig, *, log=print) -> dict:
    """Write what ``cfg`` asks for; returns a summary (paths, counts)."""
    import cos3d
    from cos3d.robot import pick_targets

    cfg.validate()
    run = Path(cfg.run)
    out = Path(cfg.out) if cfg.out is not None else run / "export"
    check_writable(out, "--out")  # before the work: a write failure after minutes of it loses it all
    ts = cos3d.load(run, device=cfg.device)
    g = ts.gaussians.detach().to("cpu")
    means = g.means.double().numpy()
    summary: dict = {"run": str(run), "out": str(out), "files": [], "n_gaussians": g.num}
    if cfg.labels:
        vocab = [v.strip() for v in cfg.vocabulary if v.strip()] if cfg.vocabulary else default_vocabulary(ts)
        dropped: dict = {}
        label, score, objs = decompose(ts, vocab, dropped=dropped)
        names = [""] + [o.names[0] for o in objs]
        files = _write_splats(out / "labels", g, ("ply",), {"label": label, "label_score": score})
        npz = out / "labels.npz"
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, label=label, score=score, means=means.astype(np.float32),
                                    names=np.array(names), object_names=json.dumps([o.names for o in objs]))
        write_json(out / "labels.json", {
            "run": str(run), "n_gaussians": g.num, "vocabulary": vocab,
            "labelled_gaussians": int((label > 0).sum()),
            "label_0": "no object (not selected by any vocabulary entry)",
            "objects": [o.to_dict(means) for o in objs],
            "filtered": {"rule": "floaters leave their object; objects below the floor are dropped (cos3d.apps.export)",
                         "body_link": BODY_LINK, "body_share": BODY_SHARE, "min_share": MIN_SHARE,
                         "min_gaussians": MIN_GAUSSIANS, **dropped},
        })
        summary["files"] += [str(p) for p in files] + [str(npz), str(out / "labels.json")]
        summary["objects"] = len(objs)
        log(f"labels: {len(objs)} objects from {len(vocab)} names, {int((label > 0).sum())} of {g.num} Gaussians labelled"
            f" ({dropped['floater_gaussians']} floater Gaussians and {len(dropped['objects_below_floor'])} objects "
            "below the floor dropped)")
        if "spz" in cfg.formats:  # the scene beside its labels; --no-labels writes no scene-wide file
            from cos3d.data.ply import write_spz

            summary["files"].append(str(write_spz(out / "scene.spz", g, version=cfg.spz_version)))
    rgb = g.rgb().detach().double().numpy() if callable(getattr(g, "rgb", None)) else np.full((g.num, 3), 0.5)
    for prompt in cfg.prompt:
        prompt = prompt.strip()
        if not prompt:
            continue
        stem = out / slug(prompt)
        targets = pick_targets(ts, prompt)
        res = targets.query
        d = res.to_dict()
        d["targets"] = targets.to_dict()["targets"]
        d["frame"] = "scene (T_base_scene = identity); see cos3d.robot for a robot base frame"
        write_json(stem.with_suffix(".json"), d)
        summary["files"].append(str(stem.with_suffix(".json")))
        if res.no_target or res.selected.numel() == 0:
            log(f"{prompt!r}: no target ({res.reason}); wrote {stem.with_suffix('.json')} only")
            continue
        sel = res.selected.detach().cpu().long()
        obj_label = np.zeros(g.num, np.int32)
        for k, o in enumerate(res.objects, start=1):
            obj_label[o.gaussians.detach().cpu().numpy()] = k
        ids = sel.numpy()
        summary["files"] += [str(p) for p in _write_splats(stem, g.subset(sel), cfg.formats, {"object": obj_label[ids]},
                                                            spz_version=cfg.spz_version)]
        pc = Path(f"{stem}_points.ply")
        write_point_cloud(pc, means[ids], rgb[ids], obj_label[ids])
        summary["files"].append(str(pc))
        log(f"{prompt!r}: {len(res.objects)} object(s), {len(ids)} Gaussians -> {stem}.ply, {pc.name}, {stem.name}.json")
    return summary
