"""What a served run answers: JSON-able request dicts in, JSON-able dicts (or :class:`Blob` bytes) out.

Both executors call :func:`dispatch` on a :class:`LoadedRun`: the local one in the server's threads
(one request at a time per run: the engine keeps caches that are not thread-safe), the Ray one inside
each run's Serve replica. The web layer (:mod:`cos3d.serve.app`) only validates shapes and maps
errors to status codes.

A *query request* has the keyword arguments of :meth:`cos3d.pipeline.trained.TrainedScene.query`, as JSON:

- ``text``; ``view`` (a scene frame as the reference image) or ``image_b64`` (an uploaded PNG/JPEG) or,
  on a loopback server only, ``image_path`` (a file on the server's machine: a scene frame's own file is
  lifted as ``view``); ``box`` ``[x0, y0, x1, y1]`` or ``"x0,y0,x1,y1"``; ``mask_b64``/``mask_path``,
  ``scribble_b64``/``scribble_path`` (PNG, non-zero = region); ``points`` ``[[x, y], ...]`` or ``"x,y;x,y,0"``
  with optional ``point_labels``;
- ``click``: ``"VIEW:x,y"``, ``[view, x, y]`` or ``{"view": .., "x": .., "y": ..}``;
- ``within`` (parent prompt), ``within_object`` (parent object id), ``level``, ``refine``, ``lift``,
  ``combine`` (``sum``/``and``), ``parts``;
- outputs: ``points`` (objects' points in the answer), ``selected`` (the selected Gaussian ids; default true).

Answers are cached per loaded run (:data:`RESULT_CACHE` entries; ``cos3d serve --result-cache``) by request, so a query followed by its
masks or its export does not answer twice; a reload starts a fresh cache.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cos3d.core.errors import Cos3dError, ServeError

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.query.engine import QueryResult
    from cos3d.pipeline.trained import TrainedScene

QUERY_KEYS = ("text", "image_b64", "image_path", "view", "box", "mask_b64", "mask_path", "scribble_b64",
              "scribble_path", "points", "point_labels", "click", "within", "within_object", "level", "refine",
              "lift", "combine", "parts", "branch")
"""The keys of a query request that change the answer (the cache key is made of these)."""
OPS = ("info", "query", "masks", "export", "pick", "place", "objects")
RESULT_CACHE = 64
"""Answers kept per loaded run."""
EXPORT_FORMATS = {"ply": "application/octet-stream", "spz": "application/octet-stream",
                  "points": "application/octet-stream"}


@dataclass
class Blob:
    """A binary answer (a PNG mask, an exported PLY)."""

    data: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def signature(path: Path) -> tuple:
    """What changes when a run is retrained: ``(mtime_ns, size)`` of run.json, fields.pt, gaussians.ply
    (a missing file counts as ``None``). Cheap: three ``stat`` calls."""
    out = []
    for name in ("run.json", "fields.pt", "gaussians.ply"):
        try:
            st = os.stat(path / name)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


@dataclass
class LoadedRun:
    """A run loaded for serving: the scene, its version and the per-run state of the server."""

    name: str
    path: Path
    scene: "TrainedScene"
    signature: tuple
    """:func:`signature` of the folder when it was loaded (a different one means: retrained)."""
    allow_paths: bool = False
    """Whether requests may name files on this machine (``image_path`` ...): loopback servers only."""
    loaded_at: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    cache_size: int = RESULT_CACHE
    """Answers kept (0: none; every request is answered by the engine)."""
    results: "OrderedDict[str, QueryResult]" = field(default_factory=OrderedDict, repr=False)
    objects: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def version(self) -> str:
        """A short id of :attr:`signature` (answers carry it: a client sees when the run was reloaded)."""
        return hashlib.sha1(repr(self.signature).encode()).hexdigest()[:12]


def load_run(name: str, path: Path, *, device: str = "auto", allow_paths: bool = False, retries: int = 3,
             cache_size: int = RESULT_CACHE) -> LoadedRun:
    """Load ``path`` for serving, warm (engine, refinement index and no-target calibration built or read).

    Run-folder files are replaced whole (:mod:`cos3d.core.atomic`), but a retraining replaces several of them;
    the load is accepted only when the folder's :func:`signature` is the same before and after it (else
    it is retried), so an answer never mixes two versions of a run. (A reader side of a run-folder lock,
    once :mod:`cos3d.pipeline.run_folder` has one, belongs around the load below.)"""
    import cos3d

    last = None
    for _ in range(max(1, retries)):
        before = signature(path)
        ts = cos3d.load(path, device=device)
        engine = ts.engine  # reads the saved query state when it is there
        if not ts.query_state_loaded:
            try:
                ts.save_query_state()  # builds the index and calibration now, not in the first request
            except Cos3dError:
                for lvl in ts.levels:
                    engine.calibration_for(lvl)
        engine.embed_text(["object"])  # the text encoder's first call is slow (~1 s): not in a request
        after = signature(path)
        if after == before:
            return LoadedRun(name=name, path=path, scene=ts, signature=before, allow_paths=allow_paths,
                             cache_size=cache_size)
        last = after
    raise ServeError(f"run {name!r} changed while it was being loaded ({retries} tries; is it being retrained?); "
                     f"retry when training ends (signature {last})", 503)


# ------------------------------------------------------------------ request → engine arguments
def _b64(body: dict, key: str) -> bytes:
    try:
        return base64.b64decode(str(body[key]), validate=True)
    except (binascii.Error, ValueError):
        raise ServeError(f"{key}: not base64 data") from None


def _image(body: dict, key: str, *, binary: bool, allow_paths: bool) -> Any:
    """``<key>_b64`` decoded to an array, or ``<key>_path`` (a path string), or None."""
    b64, path = body.get(f"{key}_b64"), body.get(f"{key}_path")
    if b64 is not None and path is not None:
        raise ServeError(f"give {key}_b64 or {key}_path, not both")
    if path is not None:
        if not allow_paths:
            raise ServeError(f"{key}_path: this server does not read files on its machine (it is not bound to "
                             f"loopback); upload the file as {key}_b64")
        if not Path(str(path)).is_file():
            raise ServeError(f"{key}_path {path}: no such file on the server's machine")
        return str(path)
    if b64 is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(_b64(body, f"{key}_b64")))
        im.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ServeError(f"{key}_b64: not a PNG/JPEG image ({type(e).__name__})") from None
    if binary:
        return np.asarray(im.convert("L")) > 0
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _box(value: Any) -> list[float] | None:
    if value is None:
        return None
    from cos3d.vision.image_prompt import parse_box

    if isinstance(value, str):
        return parse_box(value)
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ServeError(f"box: expected [x0, y0, x1, y1], got {value!r}")
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ServeError(f"box: expected 4 numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise ServeError(f"box: expected 4 finite numbers, got {value!r}")
    return parse_box(",".join(repr(v) for v in vals))


def _click(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value.get("view"), value.get("x"), value.get("y")]
    if isinstance(value, (list, tuple)) and len(value) == 3:
        try:
            return (str(value[0]), float(value[1]), float(value[2]))
        except (TypeError, ValueError):
            pass
    raise ServeError(f'click: expected "VIEW:x,y", [view, x, y] or {{"view", "x", "y"}}, got {value!r}')


def query_kwargs(body: dict, *, allow_paths: bool) -> tuple[str | None, dict[str, Any]]:
    """``(text, keyword arguments of TrainedScene.query)`` of a query request; only what is given (and
    not a default) is passed on."""
    if not isinstance(body, dict):
        raise ServeError(f"a query must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(QUERY_KEYS) - {"points_out", "selected", "timeout_s"})
    if unknown:
        raise ServeError(f"unknown query field(s) {', '.join(unknown)}; known: {', '.join(QUERY_KEYS)}")
    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise ServeError(f"text: expected a string, got {type(text).__name__}")
    kw: dict[str, Any] = {}
    image = _image(body, "image", binary=False, allow_paths=allow_paths)
    if image is not None:
        kw["image"] = image
    from cos3d.vision.image_prompt import ImagePrompt

    region = ImagePrompt.of(
        box=_box(body.get("box")), mask=_image(body, "mask", binary=True, allow_paths=allow_paths),
        scribble=_image(body, "scribble", binary=True, allow_paths=allow_paths), points=body.get("points"),
        point_labels=body.get("point_labels"),
    )
    if region is not None:
        kw["region"] = region  # one value, passed whole to the engine and its segmenter
    if body.get("click") is not None:
        kw["click"] = _click(body["click"])
    for key in ("view", "within", "level", "refine", "lift"):
        if body.get(key) is not None:
            kw[key] = body[key]
    if "view" in kw:
        kw["view"] = str(kw["view"])
    if body.get("within_object") is not None:
        wo = body["within_object"]
        if isinstance(wo, bool) or not isinstance(wo, int):
            raise ServeError(f"within_object: expected an object id (an integer), got {wo!r}")
        kw["within_object"] = wo
    if body.get("combine") not in (None, "sum"):
        kw["combine"] = body["combine"]
    if body.get("parts") is False:
        kw["parts"] = False
    if body.get("branch") not in (None, "field"):
        kw["branch"] = str(body["branch"])
    return text, kw


def cache_key(body: dict) -> str:
    canon = json.dumps({k: body.get(k) for k in QUERY_KEYS if body.get(k) is not None}, sort_keys=True, default=str)
    return hashlib.sha1(canon.encode()).hexdigest()


def answer(run: LoadedRun, body: dict) -> "QueryResult":
    """The answer to a query request (cached per run)."""
    key = cache_key(body)
    hit = run.results.get(key)
    if hit is not None:
        run.results.move_to_end(key)
        return hit
    text, kw = query_kwargs(body, allow_paths=run.allow_paths)
    res = run.scene.query(text, **kw)
    if run.cache_size <= 0:
        return res
    run.results[key] = res
    while len(run.results) > run.cache_size:
        run.results.popitem(last=False)
    return res


def result_dict(run: LoadedRun, res: "QueryResult", body: dict) -> dict:
    d = res.to_dict(points=bool(body.get("points_out", False)))
    if body.get("selected", True):
        d["selected"] = res.selected.detach().cpu().numpy().astype(np.int64).tolist()
    for o, od in zip(res.objects, d["objects"]):
        if body.get("selected", True):
            od["gaussians"] = o.gaussians.detach().cpu().numpy().astype(np.int64).tolist()
    d["run"] = run.name
    d["version"] = run.version
    return d


# ------------------------------------------------------------------ operations
def _info(run: LoadedRun) -> dict:
    ts = run.scene
    out = {"name": run.name, "path": str(run.path), "version": run.version, "loaded_at": run.loaded_at,
           "num_gaussians": int(ts.gaussians.num), "levels": ts.levels, "device": str(ts.device),
           "accepts_paths": run.allow_paths}
    try:
        sc = ts.scene
        out["views"] = [f.name for f in sc.frames]
        out["test_views"] = [f.name for f in sc.split("test")]
    except Cos3dError as e:
        out["views"], out["test_views"], out["scene_error"] = [], [], str(e)
    return out


def _query_of(body: dict) -> dict:
    q = body.get("query")
    if not isinstance(q, dict):
        raise ServeError('expected {"query": {...a query request...}, ...}')
    return q


def _masks(run: LoadedRun, body: dict) -> Blob:
    from PIL import Image

    from cos3d.query.masks2d import check_protocol

    view = body.get("view")
    if view is None:
        raise ServeError("view: which scene frame to render the mask in (a frame name)")
    protocol = str(body.get("protocol", "occlusion"))
    check_protocol(protocol)
    res = answer(run, _query_of(body))
    engine = run.scene.engine
    cam = engine.camera(str(view))
    m = np.zeros((cam.height, cam.width), bool) if res.no_target else engine.mask(res, cam, protocol)
    buf = io.BytesIO()
    Image.fromarray(m.astype(np.uint8) * 255).save(buf, format="PNG")
    return Blob(buf.getvalue(), "image/png", {"X-Cos3d-View": str(view), "X-Cos3d-Protocol": protocol,
                                              "X-Cos3d-No-Target": str(bool(res.no_target)).lower(),
                                              "X-Cos3d-Version": run.version})


def _export(run: LoadedRun, body: dict) -> Blob:
    fmt = str(body.get("format", "ply"))
    if fmt not in EXPORT_FORMATS:
        raise ServeError(f"format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    res = answer(run, _query_of(body))  # a no-target answer exports an empty selection, as cos3d query does
    import torch

    from cos3d.apps.export import write_point_cloud
    from cos3d.data.ply import write_ply, write_spz

    g = run.scene.gaussians.detach().to("cpu")
    sel = res.selected.detach().cpu().long()
    with tempfile.TemporaryDirectory(prefix="cos3d-serve-") as tmp:
        path = Path(tmp) / f"selection.{'ply' if fmt == 'points' else fmt}"
        if fmt == "ply":
            write_ply(path, g.subset(sel))
        elif fmt == "spz":
            write_spz(path, g.subset(sel))
        else:
            label = torch.zeros(g.num, dtype=torch.int32)
            for k, o in enumerate(res.objects, start=1):
                label[o.gaussians.cpu()] = k
            ids = sel.numpy()
            rgb = g.rgb().detach().double().numpy()[ids] if callable(getattr(g, "rgb", None)) else np.full((len(ids), 3), 0.5)
            write_point_cloud(path, g.means.detach().double().numpy()[ids], rgb, label.numpy()[ids])
        data = path.read_bytes()
    return Blob(data, EXPORT_FORMATS[fmt], {"X-Cos3d-Gaussians": str(res.num_gaussians),
                                            "X-Cos3d-Version": run.version})


def _matrix(value: Any, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if value is None:
        return None
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ServeError(f"{key}: expected numbers of shape {list(shape)}") from None
    if (shape and a.shape != shape) or not np.all(np.isfinite(a)):
        raise ServeError(f"{key}: expected finite numbers of shape {list(shape)}, got shape {list(a.shape)}")
    return a


def _targets(run: LoadedRun, body: dict, op: str) -> dict:
    from cos3d.robot import GripperSpec, pick_targets, place_target

    q = _query_of(body)
    text, kw = query_kwargs(q, allow_paths=run.allow_paths)
    args: dict[str, Any] = {}
    T = _matrix(body.get("T_base_scene"), "T_base_scene", (4, 4))
    if T is not None:
        args["T_base_scene"] = T
    if body.get("correspondences") is not None:
        c = body["correspondences"]
        if not isinstance(c, (list, tuple)) or len(c) != 2:
            raise ServeError("correspondences: expected [points_scene [K, 3], points_base [K, 3]]")
        args["correspondences"] = (_matrix(c[0], "correspondences[0]", ()), _matrix(c[1], "correspondences[1]", ()))
    if body.get("up") is not None:
        args["up"] = _matrix(body["up"], "up", (3,))
    if body.get("k") is not None:
        args["k"] = int(body["k"])
    if op == "pick":
        if body.get("approach") is not None:
            args["approach"] = str(body["approach"])
        if body.get("gripper") is not None:
            try:
                args["gripper"] = GripperSpec(**dict(body["gripper"]))
                args["gripper"].validate()
            except TypeError as e:
                raise ServeError(f"gripper: {e}") from None
        if body.get("reach_from") is not None:
            args["reach_from"] = _matrix(body["reach_from"], "reach_from", (3,))
        targets = pick_targets(run.scene, text, **args, **kw)
    else:
        if body.get("clearance") is not None:
            args["clearance"] = float(body["clearance"])
        targets = place_target(run.scene, text, **args, **kw)
    points = bool(body.get("points", False))
    d = targets.to_dict(points=points)
    if op == "pick":
        for t, td in zip(targets, d["targets"]):
            td["grasps"] = [g.to_dict() for g in t.grasps]
            td["gaussians"] = t.gaussians.astype(np.int64).tolist()
    d["query"] = None if targets.query is None else result_dict(run, targets.query, {"selected": False})
    d["run"] = run.name
    d["version"] = run.version
    return d


def _objects(run: LoadedRun, body: dict) -> dict:
    from cos3d.apps.export import decompose, default_vocabulary

    vocab = body.get("vocabulary")
    if isinstance(vocab, str):
        vocab = [v.strip() for v in vocab.split(",")]
    if vocab is not None:
        vocab = [str(v).strip() for v in vocab if str(v).strip()]
        if not vocab:
            raise ServeError("vocabulary is empty; give names separated by commas")
    vocab = vocab or default_vocabulary(run.scene)
    key = json.dumps(vocab)
    if key not in run.objects:
        means = run.scene.gaussians.means.detach().cpu().double().numpy()
        _, _, objs = decompose(run.scene, vocab)
        run.objects[key] = {"run": run.name, "version": run.version, "vocabulary": vocab,
                            "objects": [o.to_dict(means) for o in objs]}
    return run.objects[key]


def dispatch(run: LoadedRun, op: str, body: dict | None) -> dict | Blob:
    """Answer operation ``op`` (:data:`OPS`) of ``body`` on ``run``. The caller holds ``run.lock``.

    Raises :class:`cos3d.core.errors.Cos3dError` (one line) for a bad request."""
    body = body or {}
    if op == "info":
        return _info(run)
    if op == "query":
        return result_dict(run, answer(run, body), body)
    if op == "masks":
        return _masks(run, body)
    if op == "export":
        return _export(run, body)
    if op in ("pick", "place"):
        return _targets(run, body, op)
    if op == "objects":
        return _objects(run, body)
    raise ServeError(f"unknown operation {op!r}; one of {', '.join(OPS)}", 404)
