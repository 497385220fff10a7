"""Image prompts: a reference image with a box / mask / scribble / points (one
:class:`~cos3d.vision.image_prompt.ImagePrompt`) → one embedding.

The prompt becomes a mask (:func:`prompt_mask`), the mask goes through the embedder's own crop
(:meth:`Embedder.embed_image_prompt`), and the result lives in the same space as the mask
embeddings, so the query engine uses it exactly like a text embedding (README "Models and the oracle-2D protocol").

Prompt → mask:

============  =====================================  =============================================
prompt        with a SAM segmenter                   offline (``segmenter=None``)
============  =====================================  =============================================
mask          the mask itself                        the mask itself
box           SAM2 box prompt (+ points if given)    the box region (∩ the points' region if given)
points        SAM2 point prompt (labels 1/0)         merged superpixels around the positive points,
                                                     minus those under negative points
scribble      SAM2 with ≤ 8 points sampled on it     merged superpixels under the scribble
============  =====================================  =============================================

Coordinates are pixels, ``x`` right and ``y`` down; a box is ``[x0, y0, x1, y1]`` with exclusive ends
(:mod:`cos3d.vision.masks`). Bad prompts (box outside the image, empty mask, a mask of another size)
raise :class:`~cos3d.core.errors.Cos3dError` naming the problem.

A SAM segmenter is any :class:`PromptSegmenter`: :class:`~cos3d.vision.sam2_masks.SAM2PromptSegmenter`
(``sam2`` package), :class:`~cos3d.vision.sam2_hf.HFSamPromptSegmenter` (SAM2 through ``transformers``)
or :class:`~cos3d.vision.sam2_hf.SAM3TrackerPromptSegmenter` (SAM 3's tracker); build one by name with
:func:`cos3d.vision.registry.create_prompt_segmenter` or from a :class:`~cos3d.vision.models.ModelsConfig`
(``create_prompt_segmenter``), and hand it to :class:`cos3d.query.engine.QueryEngine` (``segmenter=``);
:func:`cos3d.vision.models.choose_segmenter` decides which one a query on a run uses (``--segmenter auto``).

The ``labels`` embedder sees no pixels: pass ``names=[...]`` with an image prompt, or it raises.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.vision.base import Embedder, check_image
from cos3d.vision.image_prompt import ImagePrompt

if TYPE_CHECKING:  # pragma: no cover
    import torch


@runtime_checkable
class PromptSegmenter(Protocol):
    """Box / point prompts on one reference image → one mask: the interactive 2D segmenter of image prompts."""

    def segment(
        self,
        image: np.ndarray,
        *,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        level: str | None = None,
    ) -> tuple[np.ndarray, float]:
        """``(mask bool [H, W], score)`` for ``image`` (uint8 ``[H, W, 3]``); points pixel ``[K, 2]`` (x, y)
        with labels 1 = object / 0 = background, ``box`` ``[4]`` x0, y0, x1, y1; ``level`` s/m/l picks one
        of several candidate masks."""
        ...


def describe_segmenter(segmenter: object) -> str:
    """A segmenter's name for notes: its ``model_id`` when it has one, else its class name."""
    return str(getattr(segmenter, "model_id", None) or type(segmenter).__name__)


def _check_box(box: Any, w: int, h: int) -> np.ndarray:
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4 or not np.all(np.isfinite(b)):
        raise Cos3dError(f"box must be 4 finite numbers x0, y0, x1, y1, got {box!r}")
    x0, y0, x1, y1 = b
    if x1 <= x0 or y1 <= y0:
        raise Cos3dError(f"box {b.tolist()} is empty: need x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise Cos3dError(f"box {b.tolist()} lies (partly) outside the {w}x{h} reference image")
    return b


def _check_points(points: Any, labels: Any, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1 and p.size == 2:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] == 0 or not np.all(np.isfinite(p)):
        raise Cos3dError(f"points must be [K, 2] pixel (x, y), got shape {p.shape}")
    outside = (p[:, 0] < 0) | (p[:, 0] >= w) | (p[:, 1] < 0) | (p[:, 1] >= h)
    if outside.any():
        raise Cos3dError(f"points {p[outside].tolist()[:3]} lie outside the {w}x{h} reference image")
    lab = np.ones(len(p), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    if lab.shape[0] != p.shape[0] or not np.isin(lab, (0, 1)).all():
        raise Cos3dError(f"point_labels must be K values in {{0, 1}} (1 = object, 0 = background), got {labels!r}")
    if not (lab == 1).any():
        raise Cos3dError("points need at least one positive (label 1) point on the object")
    return p, lab


def _check_mask(mask: Any, w: int, h: int, what: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2 or m.shape != (h, w):
        raise Cos3dError(
            f"{what} is {m.shape[1] if m.ndim == 2 else '?'}x{m.shape[0] if m.ndim else '?'} "
            f"(shape {m.shape}) but the reference image is {w}x{h}"
        )
    m = m.astype(bool)
    if not m.any():
        raise Cos3dError(f"{what} is empty: mark at least one pixel")
    return m


def _scribble_mask(scribble: Any, w: int, h: int) -> np.ndarray:
    s = np.asarray(scribble)
    if s.ndim == 2 and s.shape == (h, w) and (s.dtype == bool or s.shape[1] != 2):
        return _check_mask(s, w, h, "scribble")
    # a polyline [K, 2] of pixel (x, y)
    from skimage.draw import line

    p = np.asarray(s, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] == 0:
        raise Cos3dError(
            f"scribble must be a bool [H, W] image of the stroke or a [K, 2] polyline, got shape {p.shape}"
        )
    _check_points(p, None, w, h)
    out = np.zeros((h, w), bool)
    q = np.round(p).astype(int)
    out[q[0, 1], q[0, 0]] = True
    for a, b in zip(q[:-1], q[1:]):
        rr, cc = line(a[1], a[0], b[1], b[0])
        out[rr, cc] = True
    return out


def prompt_mask(image: np.ndarray, prompt: ImagePrompt, *, segmenter: PromptSegmenter | None = None) -> np.ndarray:
    """bool ``[H, W]`` mask of the region ``prompt`` marks on ``image`` (uint8 ``[H, W, 3]``); see the module
    table. Mask / scribble files and point text are read here (:meth:`ImagePrompt.loaded`).

    ``segmenter`` is a :class:`PromptSegmenter` (SAM2, SAM2 through transformers, SAM 3's tracker); None
    uses the offline rules. A mask prompt never goes through the segmenter.
    """
    from cos3d.vision.classical_masks import region_around

    image = check_image(image, "reference image")
    h, w = image.shape[:2]
    if not isinstance(prompt, ImagePrompt):
        raise TypeError(f"prompt must be an ImagePrompt, got {type(prompt).__name__}")
    prompt = prompt.loaded()
    box, mask, scribble, points, point_labels = (prompt.box, prompt.mask, prompt.scribble, prompt.points,
                                                 prompt.point_labels)
    given = [k for k, v in (("box", box), ("mask", mask), ("scribble", scribble), ("points", points)) if v is not None]
    if not given:
        raise Cos3dError("an image prompt needs a box, a mask, a scribble or points")
    if mask is not None:
        if len(given) > 1:
            raise Cos3dError(f"a mask prompt stands alone; also got {', '.join(g for g in given if g != 'mask')}")
        return _check_mask(mask, w, h)
    b = None if box is None else _check_box(box, w, h)
    pts, lab = (None, None) if points is None else _check_points(points, point_labels, w, h)
    scr = None if scribble is None else _scribble_mask(scribble, w, h)

    if segmenter is not None:
        if not isinstance(segmenter, PromptSegmenter):
            raise TypeError(f"segmenter must be a PromptSegmenter (a .segment method), got {type(segmenter).__name__}")
        sp, sl = pts, lab
        if scr is not None:
            ys, xs = np.nonzero(scr)
            idx = np.linspace(0, len(xs) - 1, min(8, len(xs))).round().astype(int)
            extra = np.stack([xs[idx], ys[idx]], 1).astype(np.float64)
            sp = extra if sp is None else np.concatenate([sp, extra])
            sl = np.ones(len(extra), np.int64) if sl is None else np.concatenate([sl, np.ones(len(extra), np.int64)])
        out, _ = segmenter.segment(image, points=sp, point_labels=sl, box=b)
        out = np.asarray(out, bool)
        if out.shape != (h, w):
            raise ValueError(f"the segmenter returned a mask of shape {out.shape}; the image is {(h, w)}")
        if out.any():
            return out
        warnings.warn("SAM returned an empty mask for the image prompt; using the offline rule instead", stacklevel=2)

    seeds = np.zeros((h, w), bool)
    neg = np.zeros((h, w), bool)
    if pts is not None:
        q = pts.astype(int)
        seeds[q[lab == 1, 1], q[lab == 1, 0]] = True
        neg[q[lab == 0, 1], q[lab == 0, 0]] = True
    if scr is not None:
        seeds |= scr
    if b is not None:
        x0, y0 = int(np.floor(b[0])), int(np.floor(b[1]))
        x1, y1 = int(np.ceil(b[2])), int(np.ceil(b[3]))
        rect = np.zeros((h, w), bool)
        rect[y0:y1, x0:x1] = True
        if seeds.any():
            region = region_around(image, seeds, negative=neg) & rect
            if region.any():
                return region
        return rect
    region = region_around(image, seeds, negative=neg)
    return region if region.any() else seeds


def embed_image_prompt(
    embedder: Embedder,
    image: np.ndarray,
    prompt: ImagePrompt,
    *,
    segmenter: PromptSegmenter | None = None,
    names: list[str] | None = None,
) -> "torch.Tensor":
    """``[D]`` unit embedding of an image prompt, in ``embedder``'s space (see :func:`prompt_mask`).

    ``names`` is required by the ``labels`` embedder (it cannot see pixels) and ignored by the others.
    """
    m = prompt_mask(image, prompt, segmenter=segmenter)
    return embedder.embed_image_prompt(np.asarray(image), m, names=names)


def combine_embeddings(embeddings: Sequence["torch.Tensor"], weights: Sequence[float] | None = None) -> "torch.Tensor":
    """Normalised (weighted) sum of unit embeddings ``[D]`` each (e.g. text + image prompt) → ``[D]`` unit."""
    import torch

    if len(embeddings) == 0:
        raise Cos3dError("combine_embeddings needs at least one embedding")
    embs = [torch.as_tensor(e, dtype=torch.float32).reshape(-1) for e in embeddings]
    d = embs[0].shape[0]
    for e in embs:
        if e.shape[0] != d:
            raise Cos3dError(f"cannot combine embeddings of different widths: {[x.shape[0] for x in embs]}")
    wts = [1.0] * len(embs) if weights is None else [float(x) for x in weights]
    if len(wts) != len(embs):
        raise Cos3dError(f"got {len(wts)} weights for {len(embs)} embeddings")
    total = sum(wt * torch.nn.functional.normalize(e, dim=0) for wt, e in zip(wts, embs))
    if float(total.norm()) < 1e-8:
        raise Cos3dError("the combined prompt embedding is zero (the prompts cancel out)")
    return torch.nn.functional.normalize(total, dim=0)
