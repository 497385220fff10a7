"""Prompts → selected Gaussians → 3D objects → 2D masks (docs/architecture.md "Query").

- :mod:`.relevancy` — LERF relevancy against canonical negatives, COS3D normalisation, prompt cache;
- :mod:`.refine` — adaptive Lang2Ins refinement: the literal reference loop and the fast engine version;
- :mod:`.notarget` — the calibrated presence test (the prompt's cosine with the field; parts inside their parent);
- :mod:`.objects` — instances, centroids, oriented boxes; :mod:`.masks2d` — masks under two protocols;
- :mod:`.prompts` — parsing CLI prompt specs; :mod:`.engine` — :class:`QueryEngine` (on a :class:`QuerySource`:
  a loaded run, or :class:`QueryInputs`) and :class:`QueryResult`.
"""

from cos3d.query.engine import QueryEngine, QueryInputs, QueryResult, QuerySource
from cos3d.query.objects import Object3D, OrientedBox
from cos3d.query.prompts import Click

__all__ = ["QueryEngine", "QueryInputs", "QueryResult", "QuerySource", "Object3D", "OrientedBox", "Click"]
