"""``cos3d view``: browse a trained run in a viser web viewer and query it from a panel.

The scene is shown as Gaussian splats (at most ``max_splats``, the most opaque ones), the training
cameras as frustums and the scene frame as axes. The GUI panel takes a text prompt (and optionally a
parent, "Part of", for hierarchical queries); each answer tints the selected Gaussians with one colour
per object, draws each object's oriented box and prints a one-line summary.

Layout of this module:

- pure helpers (numpy in, numpy out; no server): :func:`quats_scales_to_covariances`,
  :func:`object_colors`, :func:`tint_rgbs`, :func:`top_opacity_ids`, :func:`splat_arrays`,
  :func:`box_pose`, :func:`frustum_pose`, :func:`guess_up_direction`, :func:`format_answer`;
- the adapter :func:`answer_query`, the **only** place that calls ``trained.query`` (the run's one
  query engine, ``trained.engine``) and reads a ``QueryResult`` / ``Object3D``: it returns the viewer's
  own :class:`Answer`, so API changes in :mod:`cos3d.query` are absorbed there;
- :class:`ViewerApp`: builds the scene and GUI on a ``viser.ViserServer``; its :meth:`ViewerApp.query`
  is what the "Query" button calls (tests call it directly);
- :func:`check_port_free`, :func:`start_server`, :func:`serve`: the ``cos3d view`` plumbing.

Frames: everything is drawn in the scene's world frame (the frame of ``gaussians.means`` and of the
cameras' ``c2w``, OpenCV camera axes, which is also viser's frustum convention).
"""

from __future__ import annotations

import colorsys
import errno
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cos3d.errors import Cos3dError
from cos3d.rotations import quat_to_rotmat

if TYPE_CHECKING:  # pragma: no cover
    import viser

    from cos3d.gaussians import Gaussians
    from cos3d.query.engine import QueryResult
    from cos3d.scene import Camera
    from cos3d.trained import TrainedScene

__all__ = [
    "Answer",
    "ObjectView",
    "SplatArrays",
    "ViewerApp",
    "answer_query",
    "box_pose",
    "check_port_free",
    "format_answer",
    "frustum_pose",
    "guess_up_direction",
    "object_colors",
    "quats_scales_to_covariances",
    "serve",
    "splat_arrays",
    "start_server",
    "tint_rgbs",
    "top_opacity_ids",
]

DEFAULT_MAX_SPLATS = 300_000
"""Splats sent to the browser by default (the most opaque ones)."""


# ----------------------------------------------------------------------------- pure helpers
def _np(x: Any, dtype: Any = np.float32) -> np.ndarray:
    """A numpy copy-or-view of a tensor or array-like."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def quats_scales_to_covariances(quats: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """World covariances ``Σ = R S Sᵀ Rᵀ`` ``[N, 3, 3]`` float32.

    Args:
        quats: ``[N, 4]`` wxyz rotations, not necessarily normalised.
        scales: ``[N, 3]`` standard deviations along the local axes (``Gaussians.scales``, not logs).
    """
    quats, scales = _np(quats, np.float64), _np(scales, np.float64)
    n = quats.shape[0]
    if quats.shape != (n, 4) or scales.shape != (n, 3):
        raise ValueError(f"quats must be [N, 4] and scales [N, 3], got {list(quats.shape)} and {list(scales.shape)}")
    M = quat_to_rotmat(quats) * scales[:, None, :]  # R S (scale the columns)
    return (M @ np.swapaxes(M, 1, 2)).astype(np.float32)


def object_colors(k: int) -> np.ndarray:
    """``[k, 3]`` float32 distinct saturated colours in [0, 1], the same for the same ``k`` (golden-ratio hues)."""
    hues = (0.02 + 0.618033988749895 * np.arange(k)) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues], np.float32).reshape(k, 3)


def tint_rgbs(
    rgbs: np.ndarray,
    rows_per_object: Sequence[np.ndarray],
    colors: np.ndarray,
    *,
    strength: float = 0.7,
    others: float = 1.0,
) -> np.ndarray:
    """Highlight: a copy of ``rgbs`` with object ``k``'s rows blended towards ``colors[k]``.

    Args:
        rgbs: ``[N, 3]`` colours in [0, 1].
        rows_per_object: per object, the row indices (into ``rgbs``) of its Gaussians. Where objects
            overlap the earlier (better) object wins.
        colors: ``[K, 3]`` object colours in [0, 1] (``K >= len(rows_per_object)``).
        strength: blend weight of the object colour (0 = unchanged, 1 = flat colour).
        others: multiplier for the rows of no object (1 = unchanged: only selected rows change;
            < 1 dims the rest of the scene).

    Returns:
        ``[N, 3]`` float32.
    """
    base = np.asarray(rgbs, np.float32)
    out = base * np.float32(others) if others != 1.0 else base.copy()
    colors = np.asarray(colors, np.float32)
    if len(rows_per_object) > len(colors):
        raise ValueError(f"{len(rows_per_object)} objects but only {len(colors)} colours")
    for k in reversed(range(len(rows_per_object))):  # best object last, so it wins overlaps
        rows = np.asarray(rows_per_object[k], np.int64)
        out[rows] = (1.0 - strength) * base[rows] + strength * colors[k]
    return out


def top_opacity_ids(opacities: np.ndarray, max_splats: int) -> np.ndarray:
    """Sorted int64 ids of the ``max_splats`` most opaque Gaussians (all of them when fewer)."""
    op = _np(opacities).reshape(-1)
    n = op.shape[0]
    if max_splats <= 0:
        raise ValueError(f"max_splats must be positive, got {max_splats}")
    if n <= max_splats:
        return np.arange(n, dtype=np.int64)
    keep = np.argpartition(-op, max_splats - 1)[:max_splats]
    return np.sort(keep).astype(np.int64)


@dataclass
class SplatArrays:
    """What ``scene.add_gaussian_splats`` takes, for a subset of a scene's Gaussians."""

    ids: np.ndarray
    """[K] int64 Gaussian ids (rows of the full scene) in display order."""
    centers: np.ndarray
    """[K, 3] float32 world positions."""
    covariances: np.ndarray
    """[K, 3, 3] float32 world covariances."""
    rgbs: np.ndarray
    """[K, 3] float32 DC colours in [0, 1]."""
    opacities: np.ndarray
    """[K, 1] float32."""


def splat_arrays(gaussians: Gaussians, ids: np.ndarray) -> SplatArrays:
    """Splat arrays of ``gaussians`` (a :class:`cos3d.gaussians.Gaussians`) rows ``ids``."""
    import torch

    idx = torch.as_tensor(np.asarray(ids, np.int64), device=gaussians.means.device)
    return SplatArrays(
        ids=np.asarray(ids, np.int64),
        centers=_np(gaussians.means[idx]),
        covariances=quats_scales_to_covariances(gaussians.quats[idx], gaussians.scales[idx]),
        rgbs=_np(gaussians.rgb()[idx]),
        opacities=_np(gaussians.opacities[idx]).reshape(-1, 1),
    )


def rotmat_to_wxyz(R: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation → ``[4]`` wxyz quaternion (via ``viser.transforms``)."""
    import viser.transforms as vtf

    R = np.asarray(R, np.float64)
    u, _, vt = np.linalg.svd(R)  # nearest rotation: tolerate float error in PCA axes
    R = u @ vt
    if np.linalg.det(R) < 0:
        R = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    return np.asarray(vtf.SO3.from_matrix(R).wxyz, np.float64)


def box_pose(center: np.ndarray, R: np.ndarray, extent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An oriented box ``T_world_box`` → ``(wxyz, position, dimensions)`` for ``scene.add_box``.

    Zero extents (one-Gaussian objects) get a tiny positive size so the box stays visible.
    """
    dims = np.maximum(np.asarray(extent, np.float64).reshape(3), 1e-3)
    return rotmat_to_wxyz(R), np.asarray(center, np.float64).reshape(3), dims


def frustum_pose(camera: Camera) -> tuple[float, float, np.ndarray, np.ndarray]:
    """A :class:`cos3d.scene.Camera` → ``(fov_y, aspect, wxyz, position)`` for ``scene.add_camera_frustum``.

    cos3d cameras and viser frustums share the OpenCV axes (+z forward, +y down), so ``T_world_camera``
    is ``camera.c2w`` as is.
    """
    fy = float(camera.K[1, 1])
    fov = 2.0 * float(np.arctan2(camera.height / 2.0, fy))
    c2w = np.asarray(camera.c2w, np.float64)
    return fov, camera.width / camera.height, rotmat_to_wxyz(c2w[:3, :3]), c2w[:3, 3].copy()


def guess_up_direction(c2ws: Sequence[np.ndarray]) -> np.ndarray | None:
    """The world's up as the mean camera up (−y in OpenCV); ``None`` when cameras disagree or are absent."""
    if len(c2ws) == 0:
        return None
    ups = -np.stack([np.asarray(c, np.float64)[:3, 1] for c in c2ws])
    m = ups.mean(0)
    norm = float(np.linalg.norm(m))
    if norm < 0.3:  # cameras rolled every which way: no reliable up
        return None
    return m / norm


def scene_extent(points: np.ndarray) -> float:
    """A robust size of a point set (diagonal of its 2–98 % box), at least 1e-3."""
    p = np.asarray(points, np.float64)
    if len(p) == 0:
        return 1.0
    lo, hi = np.percentile(p, 2, axis=0), np.percentile(p, 98, axis=0)
    return max(float(np.linalg.norm(hi - lo)), 1e-3)


# ----------------------------------------------------------------------------- adapter
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


def _prompt_desc(text: str, within: str | None) -> str:
    return f"{text} within {within}" if within else text


def answer_query(trained: TrainedScene, text: str, *, within: str | None = None) -> Answer:
    """Ask ``trained`` (its one engine, through :meth:`cos3d.trained.TrainedScene.query`) and translate the
    result.

    With :func:`_answer_of`, the only code that calls ``trained.query`` or reads a ``QueryResult`` /
    ``Object3D``.
    ``within`` is a parent prompt, or an object id (digits, optionally ``#``-prefixed, as listed in an
    earlier answer) for ``within_object``. A :class:`Cos3dError` (empty prompt...) becomes
    ``Answer.error``; other exceptions propagate.
    """
    text = (text or "").strip()
    within = (within or "").strip() or None
    desc = _prompt_desc(text, within)
    parent_prompt: str | None = None
    parent_id: int | None = None
    if within is not None:
        w = within.lstrip("#")
        if w.isdigit():
            parent_id = int(w)
        else:
            parent_prompt = within
    t0 = time.perf_counter()
    try:
        res = trained.query(text=text, within=parent_prompt, within_object=parent_id)
    except Cos3dError as e:
        return Answer(prompt=desc, error=str(e), ms=(time.perf_counter() - t0) * 1e3)
    wall = (time.perf_counter() - t0) * 1e3
    return _answer_of(res, wall)


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
    )


def _esc(text: str) -> str:
    """Typed text shown as text in viser's markdown (which renders raw HTML)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_answer(answer: Answer, colors: np.ndarray | None = None) -> str:
    """One markdown line: objects with ids, scores and sizes, or the no-target reason, or the error.

    With ``colors`` ``[K, 3]`` each object is preceded by a coloured square (its highlight colour).
    """
    head = f"**{_esc(answer.prompt) or '(empty)'}**"
    ms = "" if answer.ms is None else f" · {answer.ms:.0f} ms"
    if answer.error is not None:
        return f"{head}: error: {_esc(answer.error)}"
    if answer.no_target or not answer.objects:
        why = _esc(answer.reason) or "nothing selected"
        if why.lower().startswith("no target"):
            return f"{head}: {why}{ms}"
        return f"{head}: no target ({why}){ms}"
    parts = []
    for k, o in enumerate(answer.objects):
        swatch = ""
        if colors is not None and k < len(colors):
            r, g, b = (np.clip(colors[k], 0, 1) * 255).astype(int)
            swatch = f'<span style="color:#{r:02x}{g:02x}{b:02x}">■</span> '
        parts.append(f"{swatch}#{o.id} {o.score:.3f} ({len(o.gaussians)} G)")
    n = len(answer.objects)
    return f"{head}: {n} object{'s' if n != 1 else ''}: " + ", ".join(parts) + ms


def scene_cameras(trained: TrainedScene) -> tuple[list[Camera], str | None]:
    """The run's cameras and, when the scene cannot be read, why (frustums are then skipped)."""
    try:
        return list(trained.scene.cameras), None
    except (Cos3dError, OSError) as e:
        return [], f"cameras not shown: {e}"


# ----------------------------------------------------------------------------- the app
class ViewerApp:
    """The viewer on a running ``viser.ViserServer``: scene, GUI and the query callback.

    Args:
        server: a started ``viser.ViserServer``.
        trained: the run (:class:`cos3d.trained.TrainedScene`: ``.gaussians``, ``.scene.cameras``,
            ``.query(text=..., within=..., within_object=...)``).
        max_splats: splats shown (the most opaque ones).
        show_cameras: whether camera frustums start visible.
        history: answers kept in the "Last answers" list.
    """

    def __init__(
        self,
        server: viser.ViserServer,
        trained: TrainedScene,
        *,
        max_splats: int = DEFAULT_MAX_SPLATS,
        show_cameras: bool = True,
        history: int = 8,
    ) -> None:
        self.server = server
        self.trained = trained
        self.history_size = history
        self.history: list[str] = []
        self.last_answer: Answer | None = None
        self.box_handles: list[Any] = []
        self.overlay_handles: list[Any] = []
        self._lock = threading.Lock()

        g = trained.gaussians
        self.num_gaussians = int(g.means.shape[0])
        ids = top_opacity_ids(g.opacities, max_splats)
        self.splats = splat_arrays(g, ids)
        self.row_of = np.full(self.num_gaussians, -1, np.int64)
        """Gaussian id → row of :attr:`splats` (−1: not shown)."""
        self.row_of[ids] = np.arange(len(ids))
        self.rgbs = self.splats.rgbs.copy()
        """The colours currently shown, [K, 3] float32."""
        self.means = _np(g.means)
        self.extent = scene_extent(self.splats.centers)
        self.cameras, self.cameras_note = scene_cameras(trained)
        self._build_scene(show_cameras)
        self._build_gui(show_cameras)

    # ---- construction
    def _build_scene(self, show_cameras: bool) -> None:
        sc = self.server.scene
        up = guess_up_direction([c.c2w for c in self.cameras])
        if up is not None:
            sc.set_up_direction(up)
        ext = self.extent
        self.frame_handle = sc.add_frame("/world", axes_length=0.1 * ext, axes_radius=0.004 * ext)
        s = self.splats
        self.splat_handle = sc.add_gaussian_splats("/splats", s.centers, s.covariances, s.rgbs, s.opacities)
        self.frustum_handles = []
        for i, cam in enumerate(self.cameras):
            fov, aspect, wxyz, pos = frustum_pose(cam)
            self.frustum_handles.append(
                sc.add_camera_frustum(
                    f"/cameras/{i}", fov, aspect, scale=0.04 * ext, thickness=0.002 * ext,
                    color=(90, 90, 90), wxyz=wxyz, position=pos, visible=show_cameras,
                )
            )
        if self.cameras:
            self.server.initial_camera.position = self.cameras[0].c2w[:3, 3]
            self.server.initial_camera.look_at = np.median(s.centers, axis=0) if len(s.centers) else np.zeros(3)

    def _build_gui(self, show_cameras: bool) -> None:
        gui = self.server.gui
        n_shown = len(self.splats.ids)
        cap = "" if n_shown == self.num_gaussians else f" (the {n_shown:,} most opaque of {self.num_gaussians:,})"
        with gui.add_folder("Query"):
            self.prompt_text = gui.add_text("Prompt", "", hint='a text prompt, e.g. "red mug"')
            self.within_text = gui.add_text(
                "Part of", "", hint='optional parent for a part query ("robot"), or an object id like #123'
            )
            self.query_button = gui.add_button("Query")
            self.clear_button = gui.add_button("Clear")
            self.answer_md = gui.add_markdown("Type a prompt and press **Query**.")
        with gui.add_folder("Display"):
            self.cameras_checkbox = gui.add_checkbox(
                "Show cameras", show_cameras, disabled=not self.cameras, hint=self.cameras_note
            )
            self.dim_checkbox = gui.add_checkbox("Dim the rest", False, hint="darken Gaussians outside the answer")
            gui.add_markdown(f"{n_shown:,} splats{cap}; {len(self.cameras)} cameras.")
        with gui.add_folder("Last answers"):
            self.history_md = gui.add_markdown("(none yet)")

        @self.query_button.on_click
        def _(_event: Any) -> None:
            self.query(self.prompt_text.value, self.within_text.value)

        @self.clear_button.on_click
        def _(_event: Any) -> None:
            self.clear()

        @self.cameras_checkbox.on_update
        def _(_event: Any) -> None:
            self.set_cameras_visible(self.cameras_checkbox.value)

        @self.dim_checkbox.on_update
        def _(_event: Any) -> None:
            if self.last_answer is not None:
                self.show(self.last_answer)

    # ---- actions (callbacks call these; tests too)
    def set_cameras_visible(self, visible: bool) -> None:
        for h in self.frustum_handles:
            h.visible = bool(visible)

    def query(self, text: str, within: str | None = None) -> Answer:
        """Answer ``text`` (optionally within a parent), highlight it and log it; returns the :class:`Answer`."""
        with self._lock:
            desc = _prompt_desc((text or "").strip(), (within or "").strip())
            self.answer_md.content = f"Querying **{_esc(desc)}** …"
            self.query_button.disabled = True
            try:
                answer = answer_query(self.trained, text, within=within)
            except Exception as e:  # keep the viewer alive; the traceback goes to the terminal
                traceback.print_exc()
                answer = Answer(prompt=desc, error=f"{type(e).__name__}: {e}")
            finally:
                self.query_button.disabled = False
            self.show(answer)
            line = self.answer_md.content
            self.history.insert(0, line)
            del self.history[self.history_size :]
            self.history_md.content = "\n".join(f"- {h}" for h in self.history)
            return answer

    def warm_up(self, prompt: str = "object") -> None:
        """Answer a throw-away prompt so the first real query does not pay for building the engine
        (embedder, calibration). Queries wait for it; failures are only reported in the panel."""
        with self._lock:
            self.answer_md.content = "Preparing the query engine …"
            try:
                answer_query(self.trained, prompt)
                self.answer_md.content = "Ready. Type a prompt and press **Query**."
            except Exception as e:  # the first real query will raise it again, with its prompt
                self.answer_md.content = f"Query engine not ready: {_esc(f'{type(e).__name__}: {e}')}"

    def show(self, answer: Answer) -> None:
        """Draw ``answer``: tinted splats, one box (and label) per object, the answer line."""
        self._remove_overlays()
        self.last_answer = answer
        colors = object_colors(len(answer.objects))
        ids = [o.gaussians[(o.gaussians >= 0) & (o.gaussians < self.num_gaussians)] for o in answer.objects]
        rows = [self.row_of[i] for i in ids]
        rows_shown = [r[r >= 0] for r in rows]
        dim = 0.35 if (self.dim_checkbox.value and answer.objects) else 1.0
        self.rgbs = tint_rgbs(self.splats.rgbs, rows_shown, colors, others=dim)
        self.splat_handle.rgbs = self.rgbs
        sc = self.server.scene
        for k, o in enumerate(answer.objects):
            col = tuple(int(v) for v in np.round(colors[k] * 255))
            wxyz, pos, dims = box_pose(*o.box)
            self.box_handles.append(
                sc.add_box(f"/answer/box_{k}", color=col, dimensions=dims, wireframe=True,
                           wxyz=wxyz, position=pos, cast_shadow=False, receive_shadow=False)
            )
            top = pos + 0.5 * dims[2] * np.asarray(o.box[1])[:, 2]
            self.overlay_handles.append(sc.add_label(f"/answer/label_{k}", f"#{o.id} {o.score:.2f}", position=top))
            hidden = ids[k][rows[k] < 0]
            if len(hidden):  # selected but capped out by --max-splats: show their centres
                self.overlay_handles.append(
                    sc.add_point_cloud(f"/answer/points_{k}", self.means[hidden], col,
                                       point_size=0.004 * self.extent)
                )
        self.answer_md.content = format_answer(answer, colors)

    def clear(self) -> None:
        """Back to the plain scene."""
        with self._lock:
            self._remove_overlays()
            self.last_answer = None
            self.rgbs = self.splats.rgbs.copy()
            self.splat_handle.rgbs = self.rgbs
            self.answer_md.content = "Cleared. Type a prompt and press **Query**."

    def _remove_overlays(self) -> None:
        for h in self.box_handles + self.overlay_handles:
            h.remove()
        self.box_handles, self.overlay_handles = [], []


# ----------------------------------------------------------------------------- serving
def _in_use(host: str, port: int) -> Cos3dError:
    return Cos3dError(
        f"port {port} on {host} is already in use; pick another with --port (e.g. --port {port + 1}) "
        "or stop the program using it"
    )


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`Cos3dError` naming the port and ``--port`` unless ``host:port`` can be listened on.

    ``port`` 0 means any free port (always fine). Binds with ``SO_REUSEADDR`` like the server will.
    """
    if not 0 <= port <= 65535:
        raise Cos3dError(f"--port {port}: must be between 1 and 65535 (0 = any free port)")
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise Cos3dError(f"--host {host}: cannot resolve it ({e.strerror}); use e.g. 127.0.0.1 or 0.0.0.0") from None
    fam, typ, proto, _, addr = infos[0]
    with socket.socket(fam, typ, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise _in_use(host, port) from None
            raise Cos3dError(f"cannot listen on {host}:{port} ({e.strerror}); change --port or --host") from None


def start_server(host: str, port: int) -> viser.ViserServer:
    """A started ``viser.ViserServer`` on exactly ``host:port`` (viser itself would move to the next free
    port); raises :class:`Cos3dError` when the port is taken."""
    import viser

    check_port_free(host, port)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    if port != 0 and server.get_port() != port:  # lost a race for the port
        server.stop()
        raise _in_use(host, port)
    return server


def viewer_url(host: str, port: int) -> str:
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def serve(
    trained: TrainedScene,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_splats: int = DEFAULT_MAX_SPLATS,
    show_cameras: bool = True,
    block: bool = True,
) -> ViewerApp:
    """Start the viewer for ``trained``; with ``block`` serve until Ctrl-C, then stop the server."""
    server = start_server(host, port)
    try:
        app = ViewerApp(server, trained, max_splats=max_splats, show_cameras=show_cameras)
    except BaseException:
        server.stop()
        raise
    threading.Thread(target=app.warm_up, name="cos3d-view-warm-up", daemon=True).start()
    if app.cameras_note:
        print(f"cos3d view: {app.cameras_note}")
    print(f"cos3d view: open {viewer_url(host, server.get_port())} in a browser (Ctrl-C to stop)", flush=True)
    if block:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("cos3d view: stopped")
        finally:
            server.stop()
    return app
