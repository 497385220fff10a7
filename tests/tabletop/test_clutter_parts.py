"""Tabletop options of issue 28: clutter (8-12 objects, some touching) and object part maps (handles found from the
mesh geometry). Default scenes are left as they were (test_tabletop.py covers them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cos3d.core.errors import Cos3dError
from cos3d.tabletop import TabletopConfig, generate_tabletop

pytest.importorskip("pybullet")


@pytest.fixture(scope="module")
def clutter_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clutter") / "scene"
    generate_tabletop(TabletopConfig(out=out, seed=2, views=4, width=128, height=96, objects=10, clutter=True,
                                     object_parts=True, include=("blue_mug", "white_bowl")))
    return out


def _footprint(rec: dict) -> np.ndarray:
    """[4, 2] the object's footprint corners from meta.json (its upright-frame bounds are not stored: the world AABB
    of an upright object, turned back by its yaw, is what layout placed)."""
    lo, hi = (np.asarray(v, np.float64) for v in rec["aabb_world"])
    return np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])


def test_clutter_scene_holds_the_asked_objects_densely(clutter_dir):
    meta = json.loads((clutter_dir / "meta.json").read_text())
    rigid = [o for o in meta["objects"] if o["key"] not in ("floor", "table")]
    assert len(rigid) == 10  # the robot + 9 rigid objects
    keys = {o["key"] for o in rigid}
    assert {"blue_mug", "white_bowl"} <= keys
    assert meta["config"]["clutter"] is True and meta["config"]["include"] == ["blue_mug", "white_bowl"]
    # compact: every object inside the (possibly grown) clutter region
    x0, y0, x1, y1 = meta["placement_region_xy"]
    assert (x1 - x0) * (y1 - y0) <= 0.8 * 0.4 * 1.3**2 + 1e-9
    centres = np.array([np.mean(np.asarray(o["aabb_world"])[:, :2], 0) for o in rigid])
    assert np.all((centres >= [x0, y0]) & (centres <= [x1, y1]))
    # some touching: at least three pairs whose true boxes (world AABBs, which contain the footprints) meet
    touching = 0
    for i in range(len(rigid)):
        for j in range(i + 1, len(rigid)):
            a, b = (np.asarray(rigid[k]["aabb_world"]) for k in (i, j))
            gap = np.maximum(a[0, :2] - b[1, :2], b[0, :2] - a[1, :2]).max()
            touching += gap <= 0.003
    assert touching >= 3


def test_handles_are_parts_of_their_mugs_and_visible(clutter_dir):
    from cos3d.readers import load_scene

    parts = json.loads((clutter_dir / "parts.json").read_text())
    meta = json.loads((clutter_dir / "meta.json").read_text())
    keys = {int(o["id"]): o["key"] for o in meta["objects"]}
    handles = {int(k): v for k, v in parts.items() if v["names"][0] == "handle"}
    mugs = [i for i, k in keys.items() if k in ("blue_mug", "red_coffee_mug")]
    assert sorted(v["parent"] for v in handles.values() if keys[v["parent"]] != "frying_pan") == sorted(mugs)
    # the robot's parts keep their ids 1-5
    assert [parts[str(i)]["parent"] for i in range(1, 6)] == [3] * 5
    scene = load_scene(clutter_dir)
    seen = set()
    for fr in scene.frames:
        inst, part = fr.load_instance(), fr.load_part()
        for pid, rec in handles.items():
            m = part == pid
            if m.any():
                seen.add(pid)
                # a handle's pixels belong to its parent's instance pixels
                assert np.all(inst[m] == rec["parent"])
    assert seen == set(handles)
    ev = json.loads((clutter_dir / "eval_prompts.json").read_text())["parts"]
    assert all(ev[str(pid)] for pid in handles)  # held-out part phrasings ("grip")


def test_handle_geometry_from_the_mesh():
    from cos3d.tabletop.catalog import CATALOG
    from cos3d.tabletop.parts import object_part_geometry, upright_vertices

    # pybullet_data's mug: a body of radius 0.041 m around the origin, its handle towards +y (to y = 0.081)
    e = CATALOG["blue_mug"]
    g = object_part_geometry(e, 1.0)
    assert g is not None
    assert np.allclose(g.centre, (0.0, 0.0), atol=0.003) and np.allclose(g.axis, (0.0, 1.0))
    assert g.radius == pytest.approx(0.041, abs=0.002)
    v = upright_vertices(e, 1.0)
    h = g.handle_mask(v)
    assert 0.05 < h.mean() < 0.6 and v[h, 1].min() > g.radius  # the handle's vertices all stand out on +y
    assert np.all(np.abs(v[h, 0]) < g.radius)
    # an object without an obvious part has none
    assert object_part_geometry(CATALOG["white_bowl"], 0.9) is None


def test_clutter_option_errors_are_one_line(tmp_path):
    with pytest.raises(Cos3dError, match="--clutter"):
        generate_tabletop(TabletopConfig(out=tmp_path / "a", objects=5, clutter=True, views=4, width=32, height=24))
    with pytest.raises(Cos3dError, match="--include"):
        generate_tabletop(TabletopConfig(out=tmp_path / "b", include=("no_such_thing",), views=4, width=32, height=24))
