"""Robot-side use of cos3d in plain numpy: prompt → grasp pose in the robot base frame (no ROS).

    .venv/bin/python scripts/pick_demo.py --run runs/tabletop "red coffee mug" [--place "white bowl"]
    .venv/bin/python scripts/pick_demo.py --run runs/tabletop "soda can" --sim data/tabletop   # try it in pybullet
    .venv/bin/python scripts/pick_demo.py --run runs/tabletop "soda can" --sim data/tabletop --arm \
        --T-base-scene base.txt   # with a Panda arm whose base stands at inv(T_base_scene) in the scene
    .venv/bin/python scripts/pick_demo.py --run runs/clutter "lemon" --place "in the white bowl" --sim SCENE --arm \
        --T-base-scene base.txt   # pick, carry and place with the Panda (grasps planned for FRANKA_HAND with --arm)

--T-base-scene takes a 4x4 as a .npy/.txt file (default: identity, the scene frame is the base frame);
--tags takes a .npz with arrays ``scene`` [K, 3] and ``base`` [K, 3] of points known in both frames.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prompt", help='what to pick, e.g. "red coffee mug" or "the handle of the mug"')
    ap.add_argument("--run", required=True, type=Path, help="run folder made by cos3d train")
    ap.add_argument("--place", default=None, help='where to put it, e.g. "white bowl"')
    ap.add_argument("--T-base-scene", type=Path, default=None, help="4x4 scene->base transform (.npy or text)")
    ap.add_argument("--tags", type=Path, default=None, help=".npz with 'scene' and 'base' point arrays [K, 3]")
    ap.add_argument("--sim", type=Path, default=None, help="tabletop scene folder: execute the grasp in pybullet")
    ap.add_argument("--arm", action="store_true",
                    help="with --sim: execute with a Franka Panda at the base pose (IK, joint limits, collisions)")
    args = ap.parse_args()

    import cos3d
    from cos3d.robot import FRANKA_HAND, pick_targets, place_target, release_pose, transform_from_correspondences

    T = np.eye(4)
    if args.T_base_scene is not None:
        T = np.load(args.T_base_scene) if args.T_base_scene.suffix == ".npy" else np.loadtxt(args.T_base_scene)
    if args.tags is not None:
        tags = np.load(args.tags)
        T = transform_from_correspondences(tags["scene"], tags["base"])  # scale too (COLMAP scenes)

    # ---- the robot-side part: about ten lines ------------------------------------------------
    scene = cos3d.load(args.run)
    hand = FRANKA_HAND if args.arm else None  # plan for the hand that will execute it
    targets = pick_targets(scene, args.prompt, T_base_scene=T, gripper=hand)  # best first; [] with .reason when absent
    if not targets:
        print("nothing to pick:", targets.reason)
        return 1
    t = targets[0]
    pre, grasp = t.grasp.pregrasp(0.10), t.T_base_grasp  # 4x4 poses: z = approach, x = closing direction
    print(f"pick {args.prompt!r}: {t.grasp.approach} grasp, open to {t.width * 100:.1f} cm, flags {t.flags or 'none'}")
    print("pre-grasp T_base_tool =\n", np.round(pre, 4), "\ngrasp T_base_tool =\n", np.round(grasp, 4))
    places = None
    if args.place:
        places = place_target(scene, args.place, T_base_scene=T)
        print(f"place: {places[0].kind} at {np.round(places[0].position, 4)}" if places else f"no place: {places.reason}")
        if places:
            print("release T_base_tool =\n", np.round(release_pose(t, t.grasp, places[0]), 4))
    # -------------------------------------------------------------------------------------------
    if args.sim is not None:
        from cos3d.robot.sim import simulate_pick

        from cos3d.robot import transform_points

        meta_ids = _instances_at(args.sim, transform_points(np.linalg.inv(T), t.centroid))
        if not meta_ids:
            print("sim: the target's centroid lies in no object's true box")
            return 1
        if args.arm:
            from cos3d.robot.arm import simulate_arm_pick

            place_on = None
            # the candidates are in the base frame, as the place target
            place = (lambda g: release_pose(t, g, places[0])) if places else None  # noqa: E731
            if places:
                on = _instances_at(args.sim, transform_points(np.linalg.inv(T), places[0].position), xy_only=True)
                place_on = on[0] if on else None  # scoring only: which receptacle the place point lies on
            arm = simulate_arm_pick(args.sim, t.grasps or [t.grasp], meta_ids[0], np.linalg.inv(T), place=place,
                                    place_on=place_on)
            print(f"arm: {arm.status} (object rose {arm.target_rise * 100:.1f} cm) {arm.reason}")
            if place is not None:
                print(f"place: {arm.place_status} {arm.place_reason}; neighbours moved > 2 cm: {arm.disturbed or 'none'}")
            return 0 if arm.success and arm.place_status in (None, "placed") else 1
        out = simulate_pick(args.sim, t.grasp, meta_ids[0], T_world_base=np.linalg.inv(T))
        print(f"sim: {'lifted' if out.success else 'failed'} (object rose {out.target_rise * 100:.1f} cm) {out.note}")
    return 0


def _instances_at(scene_dir: Path, point_world: np.ndarray, xy_only: bool = False) -> list[int]:
    import json

    meta = json.loads((scene_dir / "meta.json").read_text())
    n = 2 if xy_only else 3
    return [o["id"] for o in meta["objects"] if "position" in o and not o["asset"].endswith(".urdf")
            and np.all((point_world[:n] >= np.asarray(o["aabb_world"][0])[:n])
                       & (point_world[:n] <= np.asarray(o["aabb_world"][1])[:n]))]


if __name__ == "__main__":
    sys.exit(main())
