"""The trained collaborative field of one mask level, as the query engine reads it (:class:`LevelField`).

Built by :func:`cos3d.pipeline.trained.load` from ``fields.pt`` (:mod:`cos3d.pipeline.fields_file`) and by
tests and benchmarks directly; the query engine depends on this type, never on the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["LevelField"]


@dataclass
class LevelField:
    """The collaborative field of one mask level."""

    instance: Tensor
    """[N, d] float32 unit instance features (d = 16 by default)."""
    language: Tensor
    """[N, D] float16 unit language features (D = the embedder's width)."""
    anchors: Tensor
    """[J, d] unit anchors (mean rendered instance feature of each training mask)."""
    targets: Tensor
    """[J, D] their mask embeddings."""
    dbar: float
    """Compactness: median ``1 − cos`` of masked pixel features to their mask's anchor."""

    @property
    def num(self) -> int:
        return int(self.instance.shape[0])
