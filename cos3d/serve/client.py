"""Query a run through a running ``cos3d serve``, with the calls of ``cos3d.load(...)``, without torch.

::

    from cos3d.serve import client

    scene = client.load("runs/tabletop")          # a server serving that run (found by its discovery file),
                                                  # else cos3d.load in this process (fallback=True)
    res = scene.query("red coffee mug")            # also image=, view=, box=, mask=, points=, click=, within=
    print(res.targets, res.reason, [o.centroid for o in res.objects])
    mask = res.mask("16")                          # [H, W] bool, rendered by the server
    from cos3d.robot import pick_targets
    targets = pick_targets(scene, "red coffee mug", T_base_scene=T)   # the same call as in-process

    scene = client.Client("http://robot-pc:8765", token="SECRET").load("tabletop")   # by URL and name

A :class:`RemoteScene` answers :meth:`~RemoteScene.query` with a :class:`RemoteResult` that has the
fields of :class:`cos3d.query.engine.QueryResult` as numpy (``selected`` int64 ids, objects with ``id``,
``gaussians``, ``score``, ``centroid``, ``box`` (``center``, ``R``, ``extent``), ``points`` when asked for
with ``points=True``). :func:`cos3d.robot.pick_targets` and :func:`~cos3d.robot.place_target` accept a
``RemoteScene`` and return the same :class:`~cos3d.robot.Targets` (computed on the server). Server errors
raise :class:`cos3d.core.errors.ServeError` (its one line, ``status`` the HTTP code); a server that cannot be
reached raises it with status 503.

This module imports numpy, Pillow (masks) and the standard library only: a fresh process answers in
about the time of one HTTP round trip.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from cos3d.core.errors import ServeError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["Client", "RemoteObject", "RemoteResult", "RemoteScene", "connect", "load"]

DEFAULT_TIMEOUT = 120.0


def _list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


class Client:
    """One server, by URL (``token``: its bearer token, when it has one)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, local: bool | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        host = urllib.parse.urlparse(self.url).hostname or ""
        self.local = host in ("127.0.0.1", "localhost", "::1") if local is None else local
        """Whether the server runs on this machine (then files are passed by path, not uploaded)."""

    # ---- HTTP
    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False,
                timeout: float | None = None) -> Any:
        """``method path`` with a JSON ``body``; the decoded JSON answer (``raw``: ``(bytes, headers)``)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                payload, headers = r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                msg = json.loads(text).get("error") or text
            except (ValueError, AttributeError):
                msg = text.strip() or e.reason
            raise ServeError(str(msg), e.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            if data is not None and len(data) > 1 << 20 and isinstance(reason, (BrokenPipeError, ConnectionResetError)):
                raise ServeError(f"the server closed the connection while a {len(data) / 2**20:.1f} MiB request was "
                                 "sent: over its upload limit (cos3d serve --max-upload-mb)?", 413) from None
            raise ServeError(f"cos3d server {self.url} unreachable ({reason})", 503) from None
        if raw:
            return payload, headers
        return json.loads(payload)

    def health(self, timeout: float = 2.0) -> dict:
        return self.request("GET", "/health", timeout=timeout)

    def runs(self) -> list[dict]:
        """The runs the server serves (name, path, loaded, version)."""
        return self.request("GET", "/runs")["runs"]

    def load(self, run: str | os.PathLike) -> "RemoteScene":
        """The run named ``run`` on this server, or the run whose folder ``run`` is."""
        name = str(run)
        p = Path(run)
        if os.sep in name or p.exists():
            resolved = str(p.resolve())
            named = [r["name"] for r in self.runs() if r["path"] == resolved]
            if named:
                name = named[0]
            elif (p / "run.json").is_file():
                name = p.resolve().name  # a run in a folder the server serves
        info = self.request("GET", f"/runs/{urllib.parse.quote(name, safe='')}")
        return RemoteScene(self, name, info)


@dataclass
class RemoteBox:
    """An oriented box: ``x = center + R @ x_box``, ``|x_box_i| <= extent_i / 2``."""

    center: np.ndarray
    R: np.ndarray
    extent: np.ndarray

    def to_dict(self) -> dict:
        return {"center": _list(self.center), "R": _list(self.R), "extent": _list(self.extent)}


@dataclass
class RemoteObject:
    """One object of a served answer (the fields of :class:`cos3d.query.objects.Object3D`)."""

    id: int
    num: int
    score: float
    centroid: np.ndarray
    box: RemoteBox
    gaussians: np.ndarray | None = None
    points: np.ndarray | None = None

    def to_dict(self, points: bool = False) -> dict:
        d = {"id": self.id, "num_gaussians": self.num, "score": self.score, "centroid": _list(self.centroid),
             "box": self.box.to_dict()}
        if points and self.points is not None:
            d["points"] = _list(self.points)
        return d


@dataclass
class RemoteResult:
    """A served answer (the fields of :class:`cos3d.query.engine.QueryResult`)."""

    query: str
    kind: str
    level: str
    no_target: bool
    targets: str
    reason: str
    score: float | None
    threshold: float | None
    objects: list[RemoteObject]
    selected: np.ndarray
    timings: dict[str, float]
    version: str = ""
    """The run's version that answered (it changes when the run is retrained and reloaded)."""
    request: dict = field(default_factory=dict, repr=False)
    scene: "RemoteScene | None" = field(default=None, repr=False, compare=False)

    @property
    def num_gaussians(self) -> int:
        return int(len(self.selected))

    @classmethod
    def from_dict(cls, d: dict, request: dict, scene: "RemoteScene | None", arrays: bool = True) -> "RemoteResult":
        """From the server's JSON; ``arrays=False`` keeps lists (no numpy import: what ``cos3d query`` prints)."""
        if arrays:
            import numpy as np

            f64, i64 = (lambda v: np.asarray(v, np.float64)), (lambda v: np.asarray(v, np.int64))  # noqa: E731
            f32 = lambda v: np.asarray(v, np.float32)  # noqa: E731
        else:
            f64 = i64 = f32 = list
        objs = []
        for o in d.get("objects", []):
            b = o["box"]
            objs.append(RemoteObject(
                id=int(o["id"]), num=int(o["num_gaussians"]), score=float(o["score"]), centroid=f64(o["centroid"]),
                box=RemoteBox(f64(b["center"]), f64(b["R"]), f64(b["extent"])),
                gaussians=i64(o["gaussians"]) if "gaussians" in o else None,
                points=f32(o["points"]) if "points" in o else None,
            ))
        return cls(query=d["query"], kind=d["kind"], level=d["level"], no_target=bool(d["no_target"]),
                   targets=d["targets"], reason=d["reason"], score=d.get("score"), threshold=d.get("threshold"),
                   objects=objs, selected=i64(d.get("selected", [])),
                   timings=dict(d.get("timings", {})), version=d.get("version", ""), request=request, scene=scene)

    def to_dict(self, points: bool = False) -> dict:
        """The JSON of ``cos3d query --json`` (as :meth:`QueryResult.to_dict`)."""
        return {"query": self.query, "kind": self.kind, "level": self.level, "no_target": self.no_target,
                "targets": self.targets, "reason": self.reason, "score": self.score, "threshold": self.threshold,
                "num_gaussians": self.num_gaussians, "objects": [o.to_dict(points=points) for o in self.objects],
                "timings": self.timings}

    def mask(self, camera: str, protocol: str = "occlusion") -> np.ndarray:
        """bool ``[H, W]`` mask of the selection in the scene frame named ``camera`` (rendered by the server)."""
        if self.scene is None:
            raise ValueError("this RemoteResult has no scene to render it")
        return self.scene.mask(self, camera, protocol)


def _file_or_array(value: Any, key: str, local: bool, binary: bool) -> dict:
    """A request's ``<key>_path`` (a local server reads the file) or ``<key>_b64`` (uploaded)."""
    if isinstance(value, (str, os.PathLike)):
        p = Path(value)
        if not p.is_file():
            raise ServeError(f"--{key} {value}: no such file")
        if local:
            return {f"{key}_path": str(p.resolve())}
        return {f"{key}_b64": base64.b64encode(p.read_bytes()).decode()}
    import numpy as np
    from PIL import Image

    a = np.asarray(value)
    if binary:
        a = (a != 0).astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        raise ServeError(f"{key}: expected a uint8 [H, W, 3] image, got {a.dtype}")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return {f"{key}_b64": base64.b64encode(buf.getvalue()).decode()}


class RemoteScene:
    """A run served by a ``cos3d serve`` (build with :func:`load` or :meth:`Client.load`)."""

    def __init__(self, client: Client, name: str, info: dict):
        self.client = client
        self.name = name
        self.info = info
        self.run_dir = Path(info.get("path", name))
        self.levels: list[str] = list(info.get("levels", []))
        self.views: list[str] = list(info.get("views", []))
        """The scene's frame names (``mask`` renders in these)."""
        self.test_views: list[str] = list(info.get("test_views", []))
        self.accepts_paths = bool(info.get("accepts_paths", client.local))
        """Whether the server reads files by path (a loopback server on this machine); else they are uploaded."""

    def __repr__(self) -> str:
        return f"RemoteScene({self.name!r} at {self.client.url}, {self.info.get('num_gaussians')} Gaussians)"

    def _path(self, op: str) -> str:
        return f"/runs/{urllib.parse.quote(self.name, safe='')}/{op}"

    def request(
        self,
        text: str | None = None,
        *,
        image: Any = None,
        view: str | None = None,
        box: Sequence[float] | str | None = None,
        mask: Any = None,
        scribble: Any = None,
        points: Any = None,
        point_labels: Sequence[int] | None = None,
        click: Any = None,
        within: "str | RemoteResult | None" = None,
        within_object: "int | RemoteObject | None" = None,
        level: str | None = None,
        refine: str | None = None,
        lift: bool | None = None,
        combine: str = "sum",
        parts: bool = True,
        branch: str = "field",
    ) -> dict:
        """The JSON query request of :meth:`query`'s arguments."""
        r: dict[str, Any] = {}
        if text is not None:
            r["text"] = text
        if image is not None:
            r.update(_file_or_array(image, "image", self.accepts_paths, binary=False))
        for key, v in (("mask", mask), ("scribble", scribble)):
            if v is not None:
                r.update(_file_or_array(v, key, self.accepts_paths, binary=True))
        if view is not None:
            r["view"] = str(view)
        if box is not None:
            r["box"] = box if isinstance(box, str) else [float(v) for v in box]
        if points is not None:
            r["points"] = points if isinstance(points, str) else [[float(v) for v in p] for p in points]
        if point_labels is not None:
            r["point_labels"] = [int(v) for v in point_labels]
        if click is not None:
            if isinstance(click, str):
                r["click"] = click
            elif hasattr(click, "view") and hasattr(click, "x"):
                r["click"] = [str(click.view), float(click.x), float(click.y)]
            else:
                v, x, y = click
                r["click"] = [str(v), float(x), float(y)]
        if within is not None:
            if isinstance(within, RemoteResult):
                if "text" not in within.request or len(within.request) != 1:
                    raise ValueError("within= an earlier answer works for text answers only; give its text")
                within = within.request["text"]
            r["within"] = within
        if within_object is not None:
            r["within_object"] = int(within_object.id if isinstance(within_object, RemoteObject) else within_object)
        for key, v in (("level", level), ("refine", refine), ("lift", lift)):
            if v is not None:
                r[key] = v
        if combine != "sum":
            r["combine"] = combine
        if parts is False:
            r["parts"] = False
        if branch != "field":
            r["branch"] = branch
        return r

    def query(self, text: str | None = None, *, points_out: bool = False, arrays: bool = True, **kw: Any) -> RemoteResult:
        """Answer one prompt on the server (the arguments of :meth:`cos3d.pipeline.trained.TrainedScene.query`;
        ``points_out``: also fetch each object's points; ``arrays=False``: lists instead of numpy arrays)."""
        req = self.request(text, **kw)
        body = dict(req, points_out=True) if points_out else req
        d = self.client.request("POST", self._path("query"), body)
        return RemoteResult.from_dict(d, req, self, arrays=arrays)

    def mask(self, result: RemoteResult | dict, view: str, protocol: str = "occlusion") -> np.ndarray:
        """bool ``[H, W]`` mask of an answer (or a query request) in the frame ``view``."""
        import numpy as np
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.mask_png(result, view, protocol)))) > 0

    def mask_png(self, result: RemoteResult | dict, view: str, protocol: str = "occlusion") -> bytes:
        """The PNG bytes of an answer's mask in the frame ``view``, as the server wrote them."""
        req = result.request if isinstance(result, RemoteResult) else dict(result)
        data, _ = self.client.request("POST", self._path("masks"),
                                      {"query": req, "view": str(view), "protocol": protocol}, raw=True)
        return data

    def export(self, result: RemoteResult | dict, path: str | os.PathLike, format: str = "ply") -> Path:
        """Write an answer's selection to ``path``: ``ply`` (3DGS), ``spz`` or ``points`` (labelled point cloud)."""
        req = result.request if isinstance(result, RemoteResult) else dict(result)
        data, _ = self.client.request("POST", self._path("export"), {"query": req, "format": format}, raw=True)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def objects(self, vocabulary: Sequence[str] | None = None) -> dict:
        """The scene-wide objects (``cos3d export``'s decomposition): names, scores, boxes."""
        q = "" if vocabulary is None else "?vocabulary=" + urllib.parse.quote(",".join(vocabulary))
        return self.client.request("GET", self._path("objects") + q)

    def remote_targets(self, op: str, prompt: Any, *, T_base_scene: Any = None, correspondences: Any = None,
                       approach: str | None = None, k: int | None = None, gripper: Any = None, up: Any = None,
                       clearance: float | None = None, points: bool = True, reach_from: Any = None,
                       **query: Any) -> Any:
        """``cos3d.robot.pick_targets`` / ``place_target`` on the server (``op``: ``pick`` or ``place``),
        rebuilt as :class:`cos3d.robot.Targets`."""
        import dataclasses

        import numpy as np

        from cos3d.robot.grasp import Grasp
        from cos3d.robot.targets import Box, PickTarget, PlaceTarget, Targets

        if isinstance(prompt, RemoteResult):
            req = dict(prompt.request)
        elif prompt is None or isinstance(prompt, str):
            req = self.request(prompt, **query)
        else:
            raise TypeError(f"prompt must be text or a RemoteResult, got {type(prompt).__name__}")
        body: dict[str, Any] = {"query": req, "points": points}
        if T_base_scene is not None:
            body["T_base_scene"] = np.asarray(T_base_scene, np.float64).tolist()
        if correspondences is not None:
            body["correspondences"] = [np.asarray(c, np.float64).tolist() for c in correspondences]
        if up is not None:
            body["up"] = np.asarray(up, np.float64).tolist()
        if k is not None:
            body["k"] = int(k)
        if op == "pick":
            if approach is not None:
                body["approach"] = approach
            if gripper is not None:
                body["gripper"] = dataclasses.asdict(gripper) if dataclasses.is_dataclass(gripper) else dict(gripper)
            if reach_from is not None:
                body["reach_from"] = np.asarray(reach_from, np.float64).reshape(3).tolist()
        elif clearance is not None:
            body["clearance"] = float(clearance)
        d = self.client.request("POST", self._path(op), body)

        def box(b: dict) -> Box:
            return Box(np.asarray(b["center"], np.float64), np.asarray(b["R"], np.float64),
                       np.asarray(b["extent"], np.float64))

        def grasp(g: dict | None) -> Grasp | None:
            if g is None:
                return None
            return Grasp(T_base_grasp=np.asarray(g["T_base_grasp"], np.float64), approach=g["approach"],
                         width=g["width"], object_width=g["object_width"], quality=g["quality"],
                         feasible=g["feasible"], collision_free=g["collision_free"], collisions=g["collisions"],
                         score=g["score"])

        items = []
        for t in d["targets"]:
            if op == "pick":
                items.append(PickTarget(
                    object_id=t["object_id"], score=t["score"], centroid=np.asarray(t["centroid"], np.float64),
                    box=box(t["box"]), points=np.asarray(t.get("points", []), np.float32).reshape(-1, 3),
                    gaussians=np.asarray(t.get("gaussians", []), np.int64), grasp=grasp(t["grasp"]),
                    grasps=[grasp(g) for g in t.get("grasps", [])], occluded_fraction=t["occluded_fraction"],
                    flags=list(t["flags"]), notes=list(t["notes"])))
            else:
                items.append(PlaceTarget(
                    object_id=t["object_id"], score=t["score"], kind=t["kind"],
                    T_base_place=np.asarray(t["T_base_place"], np.float64), surface_height=t["surface_height"],
                    rim_height=t["rim_height"], radius=t["radius"], box=box(t["box"]), flags=list(t["flags"]),
                    notes=list(t["notes"])))
        q = None if d.get("query") is None else RemoteResult.from_dict(d["query"], req, self)
        return Targets(items, reason=d["reason"], no_target=d["no_target"], query=q)


def connect(run: str | os.PathLike, *, check: bool = True) -> RemoteScene | None:
    """The running server for the run folder ``run`` (found by its discovery file), or None."""
    from cos3d.serve import discovery

    found = discovery.find(run)
    if found is None:
        return None
    from cos3d.serve.config import is_loopback

    entry, name = found
    c = Client(entry.url, entry.token, local=is_loopback(entry.host))  # only a loopback server reads local paths
    try:
        info = c.request("GET", f"/runs/{urllib.parse.quote(name, safe='')}", timeout=DEFAULT_TIMEOUT)
    except ServeError as e:
        if e.status == 503 and "unreachable" in str(e):
            return None  # the process lives but does not answer (starting, or a reused pid)
        raise
    return RemoteScene(c, name, info)


def load(run: str | os.PathLike, *, url: str | None = None, token: str | None = None, fallback: bool = True,
         **kwargs: Any) -> Any:
    """``cos3d.load(run)``'s counterpart: the run on a server (``url``, else the one the discovery file
    names for ``run``); without one, ``cos3d.load(run, **kwargs)`` in this process (imports torch) unless
    ``fallback`` is False (then :class:`ServeError` 503)."""
    if url is not None:
        return Client(url, token).load(run)
    remote = connect(run)
    if remote is not None:
        return remote
    if not fallback:
        raise ServeError(f"no running cos3d serve serves {run}; start one with `cos3d serve --run {run}`", 503)
    import cos3d

    return cos3d.load(run, **kwargs)
