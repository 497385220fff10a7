"""Which dataset object each Ins2Lang anchor of a run came from (evaluation only: reads the dataset's ids
through the run's 2D cache, never on a query path)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from cos3d.core.errors import Cos3dError
from cos3d.pipeline.run_folder import RunFolder
from cos3d.vision.cache import load_view

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.pipeline.trained import TrainedScene

__all__ = ["anchor_objects"]


def anchor_objects(ts: "TrainedScene", level: str, *, parts: bool = False) -> Tensor:
    """``[J]`` long: the dataset id (instance, or part with ``parts``) of each anchor's training mask of
    ``level`` (-1 when the mask has none, or is of the other id space). Reads the run's 2D cache."""
    data = RunFolder(ts.run_dir).read_fields().levels[level]
    if data.anchor_view is None or data.anchor_mask is None:
        raise Cos3dError(f"{ts.run_dir}: fields.pt records no anchor masks for level {level}; re-run stage 2")
    views, masks = data.anchor_view, data.anchor_mask.tolist()
    cache = ts.record.get("stages", {}).get("masks", {}).get("cache")
    out = torch.full((len(views),), -1, dtype=torch.long)
    sets: dict[str, Any] = {}
    for j, (v, k) in enumerate(zip(views, masks)):
        if v not in sets:
            sets[v] = load_view(cache, v)[0]
        ms = sets[v]
        if ms.source_id.size > k and bool(ms.is_part[k]) == parts:
            out[j] = int(ms.source_id[k])
    return out
