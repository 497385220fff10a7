"""The viewer's adapter to a trained run: the **only** viewer code that calls the run's query engine
(``trained.query`` / ``trained.engine``) or reads a ``QueryResult`` / ``Object3D``.

It returns the viewer's own :class:`Answer` (numpy arrays, plain numbers), so API changes in
:mod:`cos3d.query` are absorbed here. Exports go through :mod:`cos3d.data.ply` / :mod:`cos3d.apps.export`
(atomic writes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.viewer.helpers import _np, ray_camera
from cos3d.vision.image_prompt import ImagePrompt

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.data.scene import Camera
    from cos3d.pipeline.trained import TrainedScene
    from cos3d.query.engine import QueryResult


@dataclass
class ObjectView:
    """One object of an answer, as the viewer draws it."""

    id: int
    gaussians: np.ndarray
    """[K] int64 Gaussian ids."""
    score: float
    centroid: np.ndarray
    """[3] world."""
    box: tuple[np.ndarray, np.ndarray, np.ndarray]
    """``(center [3], R [3, 3], extent [3])`` of ``T_world_box``."""
    name: str = ""
    """What the object is called: the text prompt that found it, else the nearest name of the scene's
    vocabulary (:func:`name_objects`); "" when neither is known."""

    @property
    def label(self) -> str:
        """``name`` or, without one, ``#id``."""
        return self.name or f"#{self.id}"

    @property
    def size(self) -> np.ndarray:
        """[3] the oriented box's extent (scene units, metres for metric scenes)."""
        return np.asarray(self.box[2], np.float64).reshape(3)

    def to_dict(self) -> dict:
        center, R, extent = self.box
        return {"id": self.id, "name": self.name, "score": round(float(self.score), 4), "num_gaussians": int(len(self.gaussians)),
                "centroid": [float(v) for v in self.centroid],
                "box": {"center": [float(v) for v in center], "R": np.asarray(R, float).tolist(),
                        "extent": [float(v) for v in extent]}}


@dataclass
class Answer:
    """A query answer in the viewer's terms (see :func:`answer_query`)."""

    prompt: str
    objects: list[ObjectView] = field(default_factory=list)
    selected: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """[S] int64 Gaussian ids."""
    no_target: bool = False
    reason: str = ""
    ms: float | None = None
    """Engine time (``timings["total"]``), else the wall time of the call."""
    error: str | None = None
    """A user error (bad prompt...) instead of an answer."""
    kind: str = "text"
    """text, part, image, click, box (dragged in the 3D view), or selection (clicks added/removed by hand)."""
    text: str | None = None
    """The text prompt, when there was one (the relevancy colour mode shows it)."""
    score: float | None = None
    """The presence statistic of the best candidate (``QueryResult.score``), when the prompt has one."""
    threshold: float | None = None
    """What ``score`` was compared with (``QueryResult.threshold``)."""

    def to_dict(self) -> dict:
        """JSON-able: the prompt, what was found and the objects (no Gaussian ids)."""
        return {"prompt": self.prompt, "kind": self.kind, "no_target": self.no_target, "reason": self.reason,
                "error": self.error, "num_gaussians": int(len(self.selected)),
                "objects": [o.to_dict() for o in self.objects],
                "frame": "scene (the run's world frame, the frame of gaussians.ply)"}


BRANCHES = ("field", "2d", "fused")
"""The text-query branches (``cos3d.query.engine.QUERY_BRANCHES``; the viewer's Branch dropdown)."""


def _prompt_desc(text: str, within: str | None) -> str:
    return f"{text} within {within}" if within else text


def _ask(trained: TrainedScene, desc: str, kind: str, text: str | None = None, *, rename: bool = False,
         **kw: Any) -> Answer:
    t0 = time.perf_counter()
    try:
        res = trained.query(text=text, **kw)
    except Cos3dError as e:
        return Answer(prompt=desc, error=str(e), ms=(time.perf_counter() - t0) * 1e3, kind=kind, text=text)
    ans = _answer_of(res, (time.perf_counter() - t0) * 1e3)
    ans.kind, ans.text = kind, text
    if rename:
        ans.prompt = desc
    name_objects(trained, ans.objects, text if kind in ("text", "part") else None, kw.get("level"))
    return ans


def answer_query(trained: TrainedScene, text: str, *, within: str | None = None, branch: str = "field") -> Answer:
    """Ask ``trained`` (its one engine, through :meth:`cos3d.pipeline.trained.TrainedScene.query`) a text prompt.

    ``within`` is a parent prompt, or an object id (digits, optionally ``#``-prefixed, as listed in an
    earlier answer) for ``within_object``. A :class:`Cos3dError` (empty prompt...) becomes
    ``Answer.error``; other exceptions propagate. ``branch``: ``field``, ``2d`` (SAM 3's concept masks lifted)
    or ``fused`` (:meth:`cos3d.query.engine.QueryEngine.query`'s ``branch``).
    """
    text = (text or "").strip()
    within = (within or "").strip() or None
    if branch != "field":
        desc = f"{text} [{branch}]"
        if within is not None:
            return Answer(prompt=desc, error=f"the {branch} branch answers a text prompt alone (clear 'Part of')",
                          kind="text", text=text)
        return _ask(trained, desc, "text", text, branch=branch)
    parent_prompt: str | None = None
    parent_id: int | None = None
    if within is not None:
        w = within.lstrip("#")
        if w.isdigit():
            parent_id = int(w)
        else:
            parent_prompt = within
    return _ask(trained, _prompt_desc(text, within), "part" if within else "text", text,
                within=parent_prompt, within_object=parent_id)


def answer_click(trained: TrainedScene, origin: Sequence[float], direction: Sequence[float], *,
                 pixel: tuple[float, float] | None = None, level: str | None = None) -> Answer:
    """The object under a click in the 3D view: the world ray ``origin + t·direction`` (a viser scene
    click) becomes the centre pixel of a small camera on that ray (:func:`ray_camera`), answered with
    the engine's click semantics (the Gaussian with the largest blending weight there, grown in instance
    space) at field ``level`` (``s``: a part, ``l``: the whole object; default the engine's).
    ``pixel``: where the click was in the browser's view (its canvas pixels), named in the answer."""
    cam = ray_camera(origin, direction)
    c = (cam.width - 1) / 2.0
    desc = "click" if pixel is None else f"click at ({pixel[0]:.0f}, {pixel[1]:.0f}) px"
    if level:
        desc += f" · level {level}"
    kw: dict[str, Any] = {"click": (cam, c, c)}
    if level:
        kw["level"] = level
    return _ask(trained, desc, "click", rename=pixel is not None or bool(level), **kw)


def answer_box(trained: TrainedScene, camera: Camera, box: Sequence[float], *, level: str | None = None,
               screen: tuple[float, float, float, float] | None = None) -> Answer:
    """A box dragged in the 3D view: ``box`` ``x0, y0, x1, y1`` in the pixels of ``camera`` (the browser's
    current view, :func:`cos3d.viewer.helpers.view_camera`), a box prompt on that view's render lifted
    into 3D through that view's own blending weights
    (:meth:`cos3d.query.engine.QueryEngine.lift_camera`). ``screen``: the box in the browser's canvas
    pixels, named in the answer."""
    b = [float(v) for v in box]
    shown = screen if screen is not None else tuple(b)
    desc = "box ({:.0f}, {:.0f})–({:.0f}, {:.0f}) px in the view".format(*shown)
    if level:
        desc += f" · level {level}"
    t0 = time.perf_counter()
    try:
        prompt = ImagePrompt.of(box=b)
        assert prompt is not None
        res = trained.engine.lift_camera(camera, prompt, level=level or None, desc=desc)
    except Cos3dError as e:
        return Answer(prompt=desc, error=str(e), ms=(time.perf_counter() - t0) * 1e3, kind="box")
    ans = _answer_of(res, (time.perf_counter() - t0) * 1e3)
    ans.kind, ans.prompt = "box", desc
    name_objects(trained, ans.objects, None, level)
    return ans


def levels(trained: TrainedScene) -> list[str]:
    """The run's field levels, small to large (``s``, ``m``, ``l`` where trained)."""
    try:
        have = list(trained.fields)
    except (AttributeError, Cos3dError):
        return []
    order = {"s": 0, "m": 1, "l": 2}
    return sorted(have, key=lambda k: (order.get(k, 3), k))


def vocabulary(trained: TrainedScene, *, parts: bool = False) -> list[str]:
    """The names objects are called by when no text prompt found them: the scene's object names (the
    vocabulary ``cos3d export`` labels with), and with ``parts`` its part names too ("head", "handle");
    [] when the scene has none."""
    names: list[str] = []
    try:
        labels = trained.scene.labels
        part_info = trained.scene.parts if parts else {}
    except (AttributeError, Cos3dError, OSError):
        return []
    for _, nm in sorted(getattr(labels, "items", dict)()):
        if nm and nm[0] not in names:
            names.append(nm[0])
    for _, info in sorted(getattr(part_info, "items", dict)()):
        nm = getattr(info, "names", None)
        if nm and nm[0] not in names:
            names.append(nm[0])
    return names


def name_objects(trained: TrainedScene, objects: list[ObjectView], text: str | None = None,
                 level: str | None = None) -> None:
    """Give each object a name, in place: ``text`` (the prompt that found them), else the vocabulary name
    (:func:`vocabulary`; part names too on a part level such as ``s``) whose embedding is closest to the
    object's mean language feature on ``level`` (default the engine's) — an open-vocabulary label read from
    the field, not from any ground-truth map. Leaves names empty when the run has no engine or no
    vocabulary."""
    if not objects:
        return
    if text:
        for o in objects:
            o.name = text
        return
    try:
        import torch

        eng = trained.engine
        lvl = level if level and level in eng.levels else eng.level
        vocab = vocabulary(trained, parts=lvl != eng.level)
        if not vocab:
            return
        lang = eng.level_state(lvl).language
        E = torch.nn.functional.normalize(eng.embed_text(vocab).float(), dim=1)
    except (AttributeError, Cos3dError):
        return
    for o in objects:
        ids = torch.as_tensor(np.asarray(o.gaussians, np.int64))
        if ids.numel() == 0:
            continue
        m = torch.nn.functional.normalize(lang[ids].float().mean(0), dim=0)
        o.name = vocab[int(torch.argmax(E @ m))]


def answer_image(trained: TrainedScene, image: str | np.ndarray, region: ImagePrompt | None,
                 text: str | None = None) -> Answer:
    """An image prompt: ``image`` is a scene frame's name (its colour image is the reference) or an
    uploaded uint8 ``[H, W, 3]`` array; ``region`` where on it (a box, points...; passed whole to the engine);
    an optional ``text`` combines with it."""
    if region is None:
        return Answer(prompt="image", error="draw a box or give points on the image first", kind="image")
    if isinstance(image, str):
        ref: Any = trained.scene.frame(image).image_path
        src = f"frame {image}"
    else:
        ref, src = np.asarray(image, np.uint8), "uploaded image"
    text = (text or "").strip() or None
    desc = (f"{text} + " if text else "") + f"{src} [{region.kind}]"
    return _ask(trained, desc, "image", text, image=ref, region=region)


def _answer_of(res: QueryResult, wall_ms: float) -> Answer:
    """A :class:`QueryResult` in the viewer's terms; ``wall_ms`` stands in for a missing total time."""
    objects = [
        ObjectView(
            id=int(o.id),
            gaussians=_np(o.gaussians, np.int64).reshape(-1),
            score=float(o.score),
            centroid=_np(o.centroid, np.float64).reshape(3),
            box=(_np(o.box.center, np.float64), _np(o.box.R, np.float64), _np(o.box.extent, np.float64)),
        )
        for o in res.objects
    ]
    ms = res.timings.get("total")
    return Answer(
        prompt=res.query,
        objects=objects,
        selected=_np(res.selected, np.int64).reshape(-1),
        no_target=bool(res.no_target),
        reason=res.reason,
        ms=float(ms) if ms is not None else wall_ms,
        score=_opt_float(getattr(res, "score", None)),
        threshold=_opt_float(getattr(res, "threshold", None)),
    )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def combine(current: Answer | None, new: Answer, op: str) -> Answer:
    """Edit a selection by hand: ``op`` ``"add"`` (shift-click) puts ``new``'s objects into ``current``,
    ``"remove"`` (alt-click) takes out the objects of ``current`` that share Gaussians with ``new``'s.
    An error or empty ``new`` leaves ``current`` unchanged (the error is kept for display)."""
    if op not in ("add", "remove"):
        raise ValueError(f"op must be 'add' or 'remove', got {op!r}")
    base = current if current is not None and current.error is None else Answer(prompt="selection", kind="selection")
    if new.error is not None or not new.objects:
        return replace(base, error=new.error, reason=new.reason or base.reason)
    if op == "add":
        have = {o.id for o in base.objects}
        objs = list(base.objects) + [o for o in new.objects if o.id not in have]
    else:
        hit = np.concatenate([o.gaussians for o in new.objects])
        objs = [o for o in base.objects if not np.isin(o.gaussians, hit).any()]
    sel = np.unique(np.concatenate([o.gaussians for o in objs])) if objs else np.zeros(0, np.int64)
    verb = "added" if op == "add" else "removed"
    return Answer(prompt=f"selection ({len(objs)} object{'s' if len(objs) != 1 else ''})", objects=objs,
                  selected=sel.astype(np.int64), reason=f"{verb} by hand", ms=new.ms, kind="selection")


# ----------------------------------------------------------------------------- colour modes
def relevancy(trained: TrainedScene, text: str) -> np.ndarray:
    """Raw relevancy ``[N]`` float32 of every Gaussian to a text prompt (the engine's LERF relevancy)."""
    eng = trained.engine
    return _np(eng.relevancy(eng.embed_text([text]))[0])


def instance_features(trained: TrainedScene, level: str = "l") -> np.ndarray:
    """``[N, d]`` float32 instance features of one level (default the object level)."""
    fields = trained.fields
    lv = level if level in fields else next(iter(fields))
    return _np(fields[lv].instance)


def scene_decomposition(trained: TrainedScene) -> tuple[np.ndarray, list[str], list[ObjectView]]:
    """The scene-wide decomposition (:func:`cos3d.apps.export.decompose` over the training names):
    ``(label [N] int32, 0 = none; names [K + 1], names[0] = ""; the objects as :class:`ObjectView`, named by
    the vocabulary entry that selected each, boxed)``. One query per name: the viewer app computes it once."""
    from cos3d.apps.export import decompose, default_vocabulary
    from cos3d.query.objects import oriented_box

    label, _, objs = decompose(trained, default_vocabulary(trained))
    means = _np(trained.gaussians.means, np.float64)
    views = []
    for o in objs:
        ids = np.sort(np.asarray(o.gaussians, np.int64))
        if len(ids) == 0:
            continue
        pts = means[ids]
        b = oriented_box(pts)
        views.append(ObjectView(id=int(ids[0]), gaussians=ids, score=float(o.score), centroid=pts.mean(0),
                                box=(np.asarray(b.center, np.float64), np.asarray(b.R, np.float64),
                                     np.asarray(b.extent, np.float64)), name=o.names[0]))
    return label, [""] + [o.names[0] for o in objs], views


def selection_mask(trained: TrainedScene, selected: np.ndarray, frame: str) -> np.ndarray:
    """bool ``[H, W]``: the occlusion-aware 2D mask of Gaussian ids ``selected`` in a scene frame."""
    import torch

    eng = trained.engine
    return np.asarray(eng.masks.mask(torch.as_tensor(np.asarray(selected, np.int64)), eng.camera(frame),
                                     "occlusion"), bool)


def frame_image(trained: TrainedScene, frame: str) -> np.ndarray:
    """uint8 ``[H, W, 3]`` colour image of a scene frame."""
    img = np.asarray(trained.scene.frame(frame).load_image())
    if img.dtype != np.uint8:
        img = np.clip(np.round(img * 255.0 if img.max() <= 1.0 else img), 0, 255).astype(np.uint8)
    return img


# ----------------------------------------------------------------------------- export
def export_selection(trained: TrainedScene, answer: Answer, out_dir: Path, stem: str) -> Path:
    """The selected Gaussians as a 3DGS ``.ply`` (``object`` column: 1.. per object, 0 = selected but in no
    object) — written atomically by :func:`cos3d.data.ply.write_ply`."""
    import torch

    from cos3d.data.ply import write_ply

    if len(answer.selected) == 0:
        raise Cos3dError("nothing selected to export: query or click something first")
    ids = np.asarray(answer.selected, np.int64)
    label = np.zeros(trained.gaussians.num, np.int32)
    for k, o in reversed(list(enumerate(answer.objects, start=1))):
        label[o.gaussians] = k
    g = trained.gaussians.detach().to("cpu").subset(torch.as_tensor(ids))
    return write_ply(Path(out_dir) / f"{stem}.ply", g, features=False, extra_columns={"object": label[ids]})


def export_objects(answer: Answer, out_dir: Path, stem: str) -> Path:
    """The answer's objects (ids, scores, Gaussian counts, centroids, oriented boxes) as JSON, atomically."""
    from cos3d.core.atomic import write_json

    if answer.error is not None and not answer.objects:
        raise Cos3dError(f"the last answer is an error ({answer.error}); nothing to export")
    path = Path(out_dir) / f"{stem}.json"
    write_json(path, answer.to_dict())
    return path


def export_labels(trained: TrainedScene, out_dir: Path) -> list[Path]:
    """The per-Gaussian labels of the scene-wide decomposition, by ``cos3d export``'s own writer
    (:func:`cos3d.apps.export.export_run`: ``labels.ply`` / ``labels.npz`` / ``labels.json``)."""
    from cos3d.apps.export import ExportConfig, export_run

    run = getattr(trained, "run_dir", None)
    if run is None:
        raise Cos3dError("this scene has no run folder; labels are exported from a run (cos3d export --run RUN)")
    summary = export_run(ExportConfig(run=Path(run), out=Path(out_dir), labels=True), log=lambda *_: None)
    return [Path(p) for p in summary["files"]]
