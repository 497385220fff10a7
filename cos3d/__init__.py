"""cos3d: open-vocabulary segmentation of 3D Gaussian-splat scenes (COS3D collaborative fields)."""

__version__ = "0.1.0"
