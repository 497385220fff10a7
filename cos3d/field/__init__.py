"""The collaborative field: per-Gaussian instance features (stage 1) and language features (stage 2).

- :mod:`cos3d.field.view_weights` — cached frozen-geometry blending weights (:class:`ViewWeights`);
- :mod:`cos3d.field.contrastive` — the contrastive instance loss and unit-row maps;
- :mod:`cos3d.field.instance` — :class:`InstanceConfig`, checkpoints and :func:`train_instance_field`;
- :mod:`cos3d.field.ins2lang` — anchors (mean rendered instance feature per mask → mask embedding),
  kernel regression (default) or an MLP to a language feature per Gaussian;
- :mod:`cos3d.field.smoothing` — kNN smoothing of per-Gaussian features in xyz.
"""

from __future__ import annotations

from cos3d.field.contrastive import contrastive_loss, normalize
from cos3d.field.ins2lang import (
    Anchors,
    Ins2LangConfig,
    collect_anchors,
    fit_mlp,
    kernel_regression,
    map_to_language,
)
from cos3d.field.instance import InstanceConfig, train_instance_field
from cos3d.field.smoothing import smooth_features
from cos3d.field.view_weights import ViewWeights

__all__ = [
    "Anchors",
    "Ins2LangConfig",
    "InstanceConfig",
    "ViewWeights",
    "collect_anchors",
    "contrastive_loss",
    "fit_mlp",
    "kernel_regression",
    "map_to_language",
    "normalize",
    "smooth_features",
    "train_instance_field",
]
