"""cos3d: open-vocabulary segmentation of 3D Gaussian-splat scenes (COS3D collaborative fields)."""

__version__ = "0.1.0"


def load(run, **kwargs):  # noqa: ANN001, ANN201
    """Load a trained run folder: ``cos3d.load("runs/tabletop") -> cos3d.pipeline.trained.TrainedScene``.

    Keywords (:func:`cos3d.pipeline.trained.load`): ``device``; ``segmenter`` (the image prompts' SAM: ``"auto"``,
    ``"none"``, ``"sam2"``, ``"sam2-hf"``, ``"sam3"`` or a segmenter object) and ``models`` (its weights, e.g.
    ``{"sam2_model": "path/to/sam2"}``)."""
    from cos3d.pipeline.trained import load as _load

    return _load(run, **kwargs)
