"""A ROS-free robot API: prompts → pick and place targets in the robot's base frame, as numpy arrays.

```python
import cos3d
from cos3d.robot import pick_targets, place_target

scene = cos3d.load("runs/tabletop")
targets = pick_targets(scene, "red coffee mug", T_base_scene=T)   # [] with .reason when absent
t = targets[0]
t.T_base_grasp, t.width, t.approach_direction, t.flags           # 4x4, metres, [3], ["occluded", ...]
place = place_target(scene, "into the bowl", T_base_scene=T)[0].T_base_place
```

Modules: :mod:`.frames` (scene ↔ base similarity transforms, from a 4×4 or point correspondences),
:mod:`.grasp` (parallel-jaw grasp candidates with width limit and collision against the scene's
Gaussians), :mod:`.targets` (``pick_targets``, ``place_target``), :mod:`.sim` (pybullet verification
on tabletop scenes; imports pybullet when called), :mod:`.arm` (the same picks executed by a Franka Panda
at a base pose the user gives: IK with joint limits, link collisions, unreachable targets flagged).

Point-cloud work is numpy + scipy (cKDTree, local-PCA normals, box tests). open3d (the ``open3d``
extra) was measured for it and not adopted: docs/benchmarks.md "Robot pick targets".

This package imports neither the viewer, nor training, nor any 2D model: a loaded run's query engine
does the answering (``cos3d.load`` is imported only when a run folder path is given).
"""

from cos3d.robot.frames import (
    as_transform,
    transform_directions,
    transform_from_correspondences,
    transform_points,
    transform_pose,
    transform_scale,
)
from cos3d.robot.grasp import FRANKA_HAND, Grasp, GripperSpec, estimate_normals, plan_grasps
from cos3d.robot.targets import Box, PickTarget, PlaceTarget, Targets, pick_targets, place_target, release_pose

__all__ = [
    "Box",
    "FRANKA_HAND",
    "Grasp",
    "GripperSpec",
    "PickTarget",
    "PlaceTarget",
    "Targets",
    "as_transform",
    "estimate_normals",
    "pick_targets",
    "place_target",
    "release_pose",
    "plan_grasps",
    "transform_directions",
    "transform_from_correspondences",
    "transform_points",
    "transform_pose",
    "transform_scale",
]
