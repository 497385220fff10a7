"""Issue 28 items 6-8 on the robot side: the real Franka Hand in grasp planning, the release pose of a place, the
arm's place in pybullet, part prompts ("the mug by the handle")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cos3d.robot import FRANKA_HAND, GripperSpec, PickTarget, PlaceTarget, plan_grasps, release_pose
from cos3d.robot.targets import Box, _BY_PART, _PART_OF


def _cylinder(c, r, h, n=600, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 2 * np.pi, n)
    z = rng.uniform(0, h, n)
    return np.stack([c[0] + r * np.cos(a), c[1] + r * np.sin(a), z], 1)


def _table(half=0.4, step=0.01):
    g = np.arange(-half, half + 1e-9, step)
    X, Y = np.meshgrid(g, g)
    return np.stack([X.ravel(), Y.ravel(), np.full(X.size, -0.005)], 1)


def _in_box(points, T, centre, half):
    local = (points - T[:3, 3]) @ T[:3, :3]
    return np.all(np.abs(local - centre) <= half, axis=1)


def test_franka_hand_grasps_keep_the_real_palm_off_the_neighbours():
    """A can with tall neighbours 7 cm away on both sides along x: the old palm-less model passes grasps whose real
    palm (0.2 m along the closing axis) would land on a neighbour; FRANKA_HAND's collision-free grasps never do."""
    can = _cylinder((0.0, 0.0), 0.03, 0.12)
    nbs = np.concatenate([_cylinder((x, 0.0), 0.03, 0.2, seed=i + 1) for i, x in enumerate((-0.1, 0.1))])
    obstacles = np.concatenate([nbs, _table()])
    f = FRANKA_HAND
    palm_c = (0.0, 0.0, -f.finger_depth - f.palm_depth / 2)
    palm_h = (f.palm_width / 2, f.palm_length / 2, f.palm_depth / 2)

    def palm_hits(g):
        return int(_in_box(nbs, g.T_base_grasp, palm_c, palm_h).sum())

    old = [g for g in plan_grasps(can, obstacles, approach="top", gripper=GripperSpec()) if g.collision_free]
    new = [g for g in plan_grasps(can, obstacles, approach="top", gripper=FRANKA_HAND) if g.collision_free]
    assert any(palm_hits(g) > 0 for g in old)  # the mismatch the real hand would hit
    assert new and all(palm_hits(g) == 0 for g in new)
    # closing straight towards the neighbours is ruled out for the real hand
    assert all(abs(g.T_base_grasp[:3, 0] @ [1.0, 0.0, 0.0]) < 0.95 for g in new)
    assert any(abs(g.T_base_grasp[:3, 0] @ [1.0, 0.0, 0.0]) > 0.95 for g in old)


def test_franka_hand_numbers_come_from_the_panda_meshes():
    """The palm and finger sizes are the hulls of pybullet_data's Panda collision meshes (read here, not copied)."""
    from cos3d.tabletop.catalog import package_root

    root = package_root("pybullet_data") / "franka_panda" / "meshes" / "collision"

    def ext(name):
        v = np.array([[float(x) for x in line.split()[1:4]] for line in open(root / name) if line.startswith("v ")])
        return v.min(0), v.max(0)

    lo, hi = ext("hand.obj")
    assert FRANKA_HAND.palm_width == pytest.approx(hi[1] - lo[1], abs=0.002)  # the closing axis is the hand's y
    assert FRANKA_HAND.palm_length == pytest.approx(hi[0] - lo[0], abs=0.002)
    flo, fhi = ext("finger.obj")
    assert FRANKA_HAND.finger_width == pytest.approx(fhi[0] - flo[0], abs=0.001)
    # TCP at 0.105 on the hand's z, fingers mounted at 0.0584, the palm's hull ends at hi[2]
    assert FRANKA_HAND.finger_depth == pytest.approx(0.105 - hi[2], abs=0.001)
    assert FRANKA_HAND.tip_offset == pytest.approx(0.0584 + fhi[2] - 0.105, abs=0.001)
    assert FRANKA_HAND.max_opening == pytest.approx(0.08)


def test_release_pose_puts_the_object_bottom_on_the_place_point():
    pts = _cylinder((0.3, 0.1), 0.03, 0.12) + [0, 0, 0.02]  # an object standing 2 cm up, 12 cm tall
    g = plan_grasps(pts, _table(), approach="top", gripper=FRANKA_HAND)[0]
    t = PickTarget(object_id=1, score=1.0, centroid=pts.mean(0), box=Box(pts.mean(0), np.eye(3), np.ones(3)),
                   points=pts.astype(np.float32), gaussians=np.arange(len(pts)), grasp=g, grasps=[g])
    Tp = np.eye(4)
    Tp[:3, 3] = (-0.2, 0.25, 0.05)
    pl = PlaceTarget(object_id=2, score=1.0, kind="inside", T_base_place=Tp, surface_height=0.04, rim_height=0.1,
                     radius=0.05, box=Box(Tp[:3, 3], np.eye(3), np.ones(3)))
    T = release_pose(t, g, pl)
    # moving the object rigidly with the hand (no rotation) takes its lowest point to the place height and its
    # centroid over the place point
    moved = pts + (T[:3, 3] - g.T_base_grasp[:3, 3])
    assert moved[:, 2].min() == pytest.approx(0.05, abs=1e-6)
    assert np.allclose(moved.mean(0)[:2], (-0.2, 0.25), atol=1e-6)
    assert np.allclose(T[:3, :3], g.T_base_grasp[:3, :3])


@pytest.mark.parametrize("prompt, part, whole", [
    ("the mug by the handle", "handle", "mug"),
    ("pick up the blue cup by its grip", "grip", "blue cup"),
    ("the handle of the mug", "handle", "mug"),
])
def test_part_prompts_are_read_as_part_queries(prompt, part, whole):
    m = _BY_PART.match(prompt) or _PART_OF.match(prompt)
    assert m and (m.group("part"), m.group("whole")) == (part, whole)
    assert _BY_PART.match("something to sip a latte from") is None


@pytest.mark.slow  # 8-35 s; out of the default run: scripts/bench_pick.py --clutter runs place trials
def test_arm_places_a_can_in_the_bowl(tmp_path):
    """The Panda picks a can (grasps planned on its true surface: this tests the arm, not grounding), carries it to
    release_pose over the bowl and lets go: it rests in the bowl, off the table; nothing else is disturbed."""
    pytest.importorskip("pybullet")
    import json

    from cos3d.robot.arm import DISTURB_LIMIT, simulate_arm_pick
    from cos3d.tabletop import TabletopConfig, generate_tabletop
    from cos3d.tabletop.catalog import CATALOG
    from cos3d.tabletop.parts import upright_vertices

    scene = tmp_path / "s"
    generate_tabletop(TabletopConfig(out=scene, seed=0, views=4, width=32, height=24))  # cans, mugs, a bowl
    meta = json.loads((scene / "meta.json").read_text())
    objs = {o["key"]: o for o in meta["objects"][3:]}
    can, bowl = objs["soda_can"], objs["white_bowl"]

    def surface(rec):
        v = upright_vertices(CATALOG[rec["key"]], rec["scale"])
        T = np.asarray(rec["T_world_object"])
        from cos3d.tabletop.catalog import up_quaternion
        from cos3d.tabletop.render import quat_to_matrix

        R = T[:3, :3] @ quat_to_matrix(up_quaternion(rec.get("up_axis") or "z")).T
        return v @ R.T + T[:3, 3]

    pts = surface(can)
    others = np.concatenate([surface(o) for k, o in objs.items() if o is not can] + [_table(0.7) + [0, 0, 0.625]])
    # the arm stands 0.45 m to the side of the way from the can to the bowl
    a, b = np.asarray(can["position"][:2]), np.asarray(bowl["position"][:2])
    d = (b - a) / np.linalg.norm(b - a)
    perp = np.array([-d[1], d[0]])
    Tw = np.eye(4)
    Tw[:3, 3] = (*((a + b) / 2 - 0.45 * perp), 0.625)
    inv = np.linalg.inv(Tw)
    grasps = plan_grasps(pts, others, approach="top", gripper=FRANKA_HAND)
    t = PickTarget(object_id=1, score=1.0, centroid=pts.mean(0), box=Box(pts.mean(0), np.eye(3), np.ones(3)),
                   points=pts.astype(np.float32), gaussians=np.arange(len(pts)), grasp=grasps[0], grasps=grasps)
    bv = surface(bowl)
    Tp = np.eye(4)
    Tp[:3, 3] = (*bv[:, :2].mean(0), bv[:, 2].min() + 0.015)
    pl = PlaceTarget(object_id=2, score=1.0, kind="inside", T_base_place=Tp, surface_height=Tp[2, 3],
                     rim_height=bv[:, 2].max(), radius=0.05, box=Box(Tp[:3, 3], np.eye(3), np.ones(3)))

    def release(g_arm):
        return inv @ release_pose(t, dataclasses.replace(g_arm, T_base_grasp=Tw @ g_arm.T_base_grasp), pl)

    cands = [dataclasses.replace(g, T_base_grasp=inv @ g.T_base_grasp) for g in grasps]
    out = simulate_arm_pick(scene, cands, int(can["id"]), Tw, place=release, place_on=int(bowl["id"]))
    assert out.success, out.reason
    assert out.place_status == "placed", out.place_reason
    assert not out.disturbed and all(d <= DISTURB_LIMIT for d in out.displaced.values())
