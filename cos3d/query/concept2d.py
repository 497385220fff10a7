"""The 2D-first query branch (docs/architecture.md): segment a concept in a few views with SAM 3, lift the masks
into 3D through the views' blending weights, vote, and fuse with the field's answer.

For a concept (a text, exemplar boxes, or both) and views ``V`` of the scene:

1. each view's image goes through a concept segmenter (:class:`cos3d.vision.sam3.SAM3ConceptSegmenter`, or
   anything with its ``segment(image, text, exemplars=...) -> ConceptMasks``); the union ``M_v`` of the
   instances it finds is the view's concept region (empty when it finds none);
2. with ``w_v(g, u)`` the blending weight of Gaussian ``g`` at pixel ``u`` (the cached per-view weights of
   :mod:`cos3d.render.contributions`), ``vote(g) = Σ_v Σ_{u∈M_v} w_v(g, u) / Σ_v Σ_u w_v(g, u)``: the share
   of the Gaussian's rendered weight, over all views, that falls inside the concept masks (``seen(g)`` is
   the denominator: Gaussians no view shows have no vote);
3. the branch's selection is ``vote ≥ threshold`` among Gaussians with ``seen ≥ min_seen``; SAM 3's presence
   head makes "no instance in any view" an answer (:attr:`ConceptVotes.present` is False → no target);
4. :func:`fuse` combines it with the field's selection: ``"and"`` (the field's Gaussians the views confirm),
   ``"or"``, or ``"2d"`` (the branch alone).

Every surface reaches this through :meth:`cos3d.query.engine.QueryEngine.query`'s ``branch`` (``"2d"``: the
branch alone; ``"fused"``: the field's objects cut to what the views confirm, presence by :func:`fused_presence`):
``cos3d query --branch``, ``cos3d.load(RUN).query(text, branch=...)``, the viewer and ``cos3d.robot``.

Views: :func:`pick_views` takes ``k`` training views evenly spread, or — given the field's answer — the
``k`` views where the answer's Gaussians carry the most blending weight (the most informative views for
that answer). Nothing here reads ground truth; an oracle segmenter may stand in for SAM 3 in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from cos3d.core.errors import Cos3dError

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.vision.sam3 import ConceptMasks

QueryEngine = Any
"""A :class:`cos3d.query.engine.QueryEngine` (not imported: the engine imports this module for its ``branch``)."""

FUSE_MODES = ("and", "or", "2d")

PRESENCE_SURE = 0.5
"""SAM 3 is sure the concept is present when some view holds an instance and its presence probability
reaches this (the same 0.5 as :class:`~cos3d.vision.sam3.SAM3ConceptSegmenter`'s instance score threshold)."""
PRESENCE_ABSENT = 0.2
"""SAM 3 is sure the concept is absent when no view's presence probability reaches this. Between the two
the field decides (:func:`fused_presence`). Neither value was tuned on evaluation prompts: with the oracle
stand-in presence is 0 or 1, so the development prompts (:mod:`cos3d.eval.devprompts`) cannot separate
values in (0, 1); they are set by the rule's meaning, to be re-chosen on development prompts with SAM 3
weights."""


class ConceptSegmenter(Protocol):
    """Every instance of a concept in one image (:class:`cos3d.vision.sam3.SAM3ConceptSegmenter`)."""

    def segment(
        self, image: np.ndarray, text: str | None = None, *, exemplars: Any = None, exemplar_labels: Any = None
    ) -> "ConceptMasks": ...


@dataclass
class ConceptVotes:
    """The 2D-first branch's evidence for one concept (module docstring)."""

    votes: Tensor
    """float32 ``[N]`` in [0, 1]: share of each Gaussian's rendered weight inside the concept masks."""
    seen: Tensor
    """float32 ``[N]``: each Gaussian's total blending weight over the views (0 = no view shows it)."""
    views: list[str]
    """The views segmented."""
    presence: dict[str, float] = field(default_factory=dict)
    """View → SAM 3's presence probability of the concept."""
    instances: dict[str, int] = field(default_factory=dict)
    """View → number of instances found."""

    @property
    def present(self) -> bool:
        """Some view holds an instance of the concept (False: a no-target answer)."""
        return any(n > 0 for n in self.instances.values())

    @property
    def presence_max(self) -> float:
        """The largest presence probability SAM 3 gave over the views (0 without views)."""
        return max(self.presence.values(), default=0.0)

    def selected(self, threshold: float = 0.5, min_seen: float = 1e-3) -> Tensor:
        """LongTensor of the Gaussians whose vote is at least ``threshold`` (and seen at least ``min_seen``)."""
        if not 0.0 < threshold <= 1.0:
            raise Cos3dError(f"the vote threshold must lie in (0, 1], got {threshold}")
        return torch.nonzero((self.votes >= threshold) & (self.seen >= min_seen)).flatten()


def pick_views(engine: "QueryEngine", k: int = 4, *, focus: Tensor | None = None) -> list[str]:
    """``k`` training views: evenly spread over the training split, or, given ``focus`` (Gaussian ids, e.g.
    the field's answer), the ``k`` views where those Gaussians carry the most blending weight."""
    frames = engine.scene.split("train") or list(engine.scene.frames)
    if k < 1:
        raise Cos3dError(f"k (views to segment) must be >= 1, got {k}")
    if focus is None or len(focus) == 0 or len(frames) <= k:
        idx = np.unique(np.linspace(0, len(frames) - 1, min(k, len(frames))).round().astype(int))
        return [frames[i].name for i in idx]
    ind = torch.zeros(engine.num_gaussians, dtype=torch.bool)
    ind[torch.as_tensor(focus, dtype=torch.long)] = True
    mass = []
    for f in frames:
        c = engine.masks.contributions(f.camera)
        g = c.gaussian.cpu()
        mass.append(float(c.weight.float().cpu()[ind[g]].sum()))
    order = np.argsort(-np.asarray(mass), kind="stable")[:k]
    return [frames[i].name for i in sorted(order)]


def concept_votes(
    engine: "QueryEngine",
    segmenter: ConceptSegmenter,
    text: str | None = None,
    *,
    exemplars: Any = None,
    views: Sequence[str] | None = None,
    k: int = 4,
    focus: Tensor | None = None,
) -> ConceptVotes:
    """Segment the concept in ``views`` (default :func:`pick_views` ``(engine, k, focus=focus)``) and vote per
    Gaussian (module docstring). ``exemplars`` are boxes in each view's pixels (rarely the same in every view;
    mostly for one view)."""
    names = list(views) if views is not None else pick_views(engine, k, focus=focus)
    if not names:
        raise Cos3dError("the 2D-first branch needs at least one view")
    n = engine.num_gaussians
    inside = torch.zeros(n)
    total = torch.zeros(n)
    presence: dict[str, float] = {}
    instances: dict[str, int] = {}
    for name in names:
        frame = engine.scene.frame(str(name))
        image = frame.load_image()
        found = segmenter.segment(image, text, exemplars=exemplars)
        presence[str(name)] = float(found.presence)
        instances[str(name)] = len(found)
        c = engine.masks.contributions(frame.camera)
        g = c.gaussian.cpu()
        w = c.weight.float().cpu()
        total.index_add_(0, g, w)
        if len(found):
            region = np.asarray(found.union(), bool)
            if region.shape != (frame.camera.height, frame.camera.width):
                raise Cos3dError(f"concept masks are {region.shape} but view {name} is "
                                 f"{frame.camera.height}x{frame.camera.width}")
            m = torch.from_numpy(region.reshape(-1))[c.pixel.cpu()]
            inside.index_add_(0, g[m], w[m])
    votes = torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros(n))
    return ConceptVotes(votes=votes, seen=total, views=[str(v) for v in names], presence=presence, instances=instances)


def fuse(field_selected: Tensor, votes: ConceptVotes, mode: str = "and", *, threshold: float = 0.5) -> Tensor:
    """Sorted LongTensor of Gaussian ids: the field's selection combined with the 2D-first branch's
    (``"and"``: the field's Gaussians the views confirm; ``"or"``: either; ``"2d"``: the branch alone). An
    absent concept (:attr:`ConceptVotes.present` False) gives an empty answer in every mode."""
    if mode not in FUSE_MODES:
        raise Cos3dError(f"unknown fusion {mode!r}; choose one of {', '.join(FUSE_MODES)}")
    if not votes.present:
        return torch.zeros(0, dtype=torch.long)
    mine = votes.selected(threshold)
    if mode == "2d":
        return torch.sort(mine).values
    f = torch.as_tensor(field_selected, dtype=torch.long).flatten()
    if mode == "or":
        return torch.unique(torch.cat([f, mine]))
    return torch.sort(f[torch.isin(f, mine)]).values


BRANCHES = ("field", "2d", "and", "or")
"""The answers :func:`cos3d.eval.branches2d.compare_branches` scores: the field alone, the 2D-first branch alone, and both fusions."""


def branch_selections(engine: "QueryEngine", segmenter: ConceptSegmenter, text: str, *, k: int = 4,
                      threshold: float = 0.5) -> dict[str, Tensor]:
    """Gaussian ids selected for ``text`` by each of :data:`BRANCHES` (empty = a no-target answer): the field's
    answer (:meth:`QueryEngine.query`), and the 2D-first branch on ``k`` training views spread evenly
    (:func:`pick_views`), alone and fused with the field's."""
    res = engine.query(text, parts=False)
    field_sel = torch.zeros(0, dtype=torch.long) if res.no_target else res.selected
    votes = concept_votes(engine, segmenter, text, k=k)
    out = {"field": field_sel}
    for mode in FUSE_MODES:
        out[mode] = fuse(field_sel, votes, mode, threshold=threshold)
    return out


def fused_presence(votes: ConceptVotes, field_present: bool, *, sure: float = PRESENCE_SURE,
                   absent: float = PRESENCE_ABSENT) -> tuple[bool, str]:
    """The fused branch's no-target decision from SAM 3's presence and the field's decision → ``(present, why)``.

    With ``p`` the largest presence probability over the views (:attr:`ConceptVotes.presence_max`):

    - SAM 3 sure present (an instance in some view and ``p ≥ sure``): present;
    - SAM 3 sure absent (``p < absent``): no target, whatever the field says;
    - otherwise (SAM 3 unsure, or a high presence without an instance above its score threshold): the
      field's decision.
    """
    p = votes.presence_max
    if votes.present and p >= sure:
        return True, f"SAM 3 presence {p:.2f} >= {sure:g} with instances"
    if p < absent:
        return False, f"SAM 3 presence {p:.2f} < {absent:g}"
    return bool(field_present), (f"SAM 3 unsure (presence {p:.2f}); the field says "
                                 f"{'present' if field_present else 'absent'}")
