"""cos3d: open-vocabulary segmentation of 3D Gaussian-splat scenes (COS3D collaborative fields)."""

__version__ = "0.1.0"


def load(run, **kwargs):  # noqa: ANN001, ANN201
    """Load a trained run folder: ``cos3d.load("runs/tabletop") -> cos3d.trained.TrainedScene``."""
    from cos3d.trained import load as _load

    return _load(run, **kwargs)
