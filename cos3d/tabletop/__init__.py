"""Tabletop scenes: textured real-object meshes on a table, rendered by pybullet on CPU.

``generate_tabletop(TabletopConfig(out=..., seed=0))`` writes a scene in the ScanNet layout with
instance and part ground truth (see :mod:`cos3d.tabletop.generate`); ``cos3d prepare tabletop`` is
its command line. pybullet is imported only when a scene is generated.
"""

from cos3d.tabletop.generate import TabletopConfig, generate_tabletop

__all__ = ["TabletopConfig", "generate_tabletop"]
