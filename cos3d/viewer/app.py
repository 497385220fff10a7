"""The viewer app: the scene and the GUI on a running ``viser.ViserServer``, and what the GUI calls.

:class:`ViewerApp` draws the run's Gaussians as splats, the training cameras as frustums (sized to the
scene), the world axes, and opens on a view framing the scene (:func:`cos3d.viewer.helpers.scene_framing`).
Its public methods are what the page's controls call, and what the tests call directly:
:meth:`~ViewerApp.query` (text, "part of"), :meth:`~ViewerApp.query_image` (a frame or an uploaded
image with a box or points), :meth:`~ViewerApp.click` (a ray from a click in the 3D view; ``"add"`` /
``"remove"`` for shift- / alt-click), :meth:`~ViewerApp.set_color_mode`, :meth:`~ViewerApp.focus`,
:meth:`~ViewerApp.show_frame` (a training frame with the answer's 2D mask), :meth:`~ViewerApp.export`.
In the 3D view a click segments the object under the cursor at the chosen level (s: a part, l: the whole
object) and **ctrl-drag** draws a box: a box prompt on the current view's render, lifted into 3D through
that view's own blending weights (:meth:`~ViewerApp.box_select`).
Controls run them on one worker thread (:meth:`~ViewerApp.submit`), off viser's event loop, with a
spinning progress bar and the elapsed seconds in the panel meanwhile.

**Shared mode**: one answer, colour mode and object list for every open tab (a session everybody sees);
camera moves (reset view, go to camera, focus) move only the tab that asked, and a box or click is read in
the camera of the tab it was made in.
"""

from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cos3d.core.errors import Cos3dError
from cos3d.viewer import adapter
from cos3d.viewer.adapter import Answer, ObjectView
from cos3d.vision.image_prompt import ImagePrompt
from cos3d.viewer.helpers import (
    DEFAULT_MAX_SPLATS,
    _np,
    ImagePlane,
    box_pose,
    colorbar_image,
    contrast_colors,
    display_box,
    draw_prompt,
    frustum_pose,
    heatmap_colors,
    image_plane_beside,
    instance_colors,
    label_colors,
    object_colors,
    parse_box,
    rotmat_to_wxyz,
    scene_framing,
    splat_arrays,
    tint_rgbs,
    top_opacity_ids,
    view_camera,
)

if TYPE_CHECKING:  # pragma: no cover
    import viser

    from cos3d.data.scene import Camera
    from cos3d.pipeline.trained import TrainedScene

COLOR_MODES = ("RGB", "Instance features (clusters)", "Relevancy (last prompt)", "Objects (scene-wide)")
"""The colour modes of the "Colour" dropdown, in order."""
UPLOADED = "(uploaded image)"
SHARED_NOTE = "Shared session: every open tab sees the same answer and colours; cameras are per tab."
WORK_NAMES = {"query": "querying", "set_color_mode": "colouring", "click": "segmenting the click",
              "box_select": "lifting the box", "export": "exporting", "show_frame": "loading the frame",
              "list_objects": "listing the objects", "rect_select": "lifting the box",
              "uploaded": "reading the upload", "redraw": "redrawing", "query_image_from_gui": "image prompt"}
"""The busy line's words for the worker's jobs (default: the function's name)."""


def _esc(text: str) -> str:
    """Typed text shown as text in viser's markdown (which renders raw HTML)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _swatch(color: np.ndarray) -> str:
    r, g, b = (np.clip(np.asarray(color), 0, 1) * 255).astype(int)
    return f'<span style="color:#{r:02x}{g:02x}{b:02x}">■</span> '


def format_answer(answer: Answer, colors: np.ndarray | None = None) -> str:
    """One markdown line: objects with names, scores and sizes, or "not here" with the reason and the best
    candidate's score against the threshold, or the error; the latency last.

    With ``colors`` ``[K, 3]`` each object is preceded by a coloured square (its highlight colour).
    """
    head = f"**{_esc(answer.prompt) or '(empty)'}**"
    ms = "" if answer.ms is None else f" · {answer.ms:.0f} ms"
    if answer.error is not None:
        return f"{head}: error: {_esc(answer.error)}"
    if answer.no_target or not answer.objects:
        why = _esc(answer.reason) or "nothing selected"
        if not why.lower().startswith("no target"):
            why = f"no target: {why}"
        top = ""
        if answer.score is not None and f"{answer.score:.3f}" not in why:
            thr = "" if answer.threshold is None else f" (needs {answer.threshold:.3f})"
            top = f"; top candidate scored {answer.score:.3f}{thr}"
        return f"{head}: **not here** — {why}{top}{ms}"
    parts = []
    for k, o in enumerate(answer.objects):
        swatch = _swatch(colors[k]) if colors is not None and k < len(colors) else ""
        name = f"{_esc(o.name)} " if o.name else ""
        parts.append(f"{swatch}{name}#{o.id} {o.score:.3f} ({len(o.gaussians)} G)")
    n = len(answer.objects)
    return f"{head}: {n} object{'s' if n != 1 else ''}: " + ", ".join(parts) + ms


def format_object(o: ObjectView, color: np.ndarray | None = None) -> str:
    """The object list's row: ``name #id · score · Gaussians · size (cm for metre scenes)``."""
    w, h, d = (float(v) for v in o.size)
    sw = _swatch(color) if color is not None else ""
    name = f"{_esc(o.name)} " if o.name else ""
    return (f"{sw}**{name}#{o.id}** · score {o.score:.3f} · {len(o.gaussians):,} Gaussians · "
            f"{w:.3f}×{h:.3f}×{d:.3f}")


def scene_cameras(trained: TrainedScene) -> tuple[list[Camera], list[str], str | None]:
    """The run's cameras, their frame names and, when the scene cannot be read, why (frustums are then
    skipped)."""
    try:
        frames = list(trained.scene.frames)
        return [f.camera for f in frames], [f.name for f in frames], None
    except (Cos3dError, OSError, AttributeError) as e:
        try:
            cams = list(trained.scene.cameras)
            return cams, [str(i) for i in range(len(cams))], None
        except (Cos3dError, OSError, AttributeError):
            return [], [], f"cameras not shown: {e}"


class ViewerApp:
    """The viewer on a running ``viser.ViserServer``: scene, GUI and the callbacks.

    Args:
        server: a started ``viser.ViserServer``.
        trained: the run (:class:`cos3d.pipeline.trained.TrainedScene`).
        max_splats: splats shown (the most opaque ones); the panel shows the count.
        show_cameras: whether camera frustums start visible.
        export_dir: where the Export buttons write (default ``RUN/export``, else ``./cos3d-export``).
        history: answers kept in the "Last answers" list.
    """

    def __init__(
        self,
        server: viser.ViserServer,
        trained: TrainedScene,
        *,
        max_splats: int = DEFAULT_MAX_SPLATS,
        show_cameras: bool = True,
        export_dir: Path | None = None,
        history: int = 8,
    ) -> None:
        self.server = server
        self.trained = trained
        self.history_size = history
        self.history: list[str] = []
        self.last_answer: Answer | None = None
        self.last_text: str | None = None
        self.color_mode = COLOR_MODES[0]
        self.box_handles: list[Any] = []
        self.overlay_handles: list[Any] = []
        self.object_handles: list[Any] = []
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cos3d-view")
        self._base_cache: dict[str, np.ndarray] = {}
        self.uploaded: np.ndarray | None = None
        self.reference: ImagePlane | None = None
        """Where the uploaded reference image is shown in the 3D scene (ctrl-drag a box on it)."""
        self.reference_handles: list[Any] = []
        self.levels = adapter.levels(trained) or ["l"]
        self._decomposition: tuple[np.ndarray, list[str], list[ObjectView]] | None = None
        """The scene-wide decomposition (:meth:`decomposition`), computed on first use."""
        self.decomposition_labels = np.zeros(0, np.int32)
        """Per Gaussian: its object in the decomposition (0 = none); filled by the "Objects" colour mode."""
        self.decomposition_names: list[str] = [""]
        self.scene_objects: list[ObjectView] = []
        """The scene-wide objects of "List objects" (:meth:`list_objects`)."""
        self.hidden = np.zeros(0, np.int64)
        """Rows of :attr:`splats` hidden by the object list's checkboxes."""
        self.object_list_handles: list[Any] = []
        self._rel_values: tuple[str, np.ndarray] | None = None
        run = getattr(trained, "run_dir", None)
        self.export_dir = Path(export_dir) if export_dir is not None else (
            Path(run) / "export" if run is not None else Path("cos3d-export"))

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
        self.cameras, self.frame_names, self.cameras_note = scene_cameras(trained)
        self.framing = scene_framing(self.splats.centers, [c.c2w for c in self.cameras])
        self.extent = self.framing.extent
        self._build_scene(show_cameras)
        self._build_gui(show_cameras)

    # ------------------------------------------------------------------ construction
    def _build_scene(self, show_cameras: bool) -> None:
        sc = self.server.scene
        fr = self.framing
        if fr.up is not None:
            sc.set_up_direction(fr.up)
        self.frame_handle = sc.add_frame("/world", axes_length=fr.axes_length, axes_radius=0.04 * fr.axes_length)
        s = self.splats
        self.splat_handle = sc.add_gaussian_splats("/splats", s.centers, s.covariances, s.rgbs, s.opacities)
        self.frustum_handles = []
        for i, cam in enumerate(self.cameras):
            fov, aspect, wxyz, pos = frustum_pose(cam)
            h = sc.add_camera_frustum(
                f"/cameras/{self.frame_names[i]}", fov, aspect, scale=fr.frustum_scale,
                thickness=1.5, thickness_units="screen", color=(120, 120, 130), wxyz=wxyz, position=pos, visible=show_cameras,
            )
            name = self.frame_names[i]
            h.on_click(lambda _e, name=name: self._later(self.show_frame, name))
            self.frustum_handles.append(h)
        ic = self.server.initial_camera
        ic.position = tuple(float(v) for v in fr.position)
        ic.look_at = tuple(float(v) for v in fr.look_at)
        if fr.up is not None:
            ic.up = tuple(float(v) for v in fr.up)
        ic.near = max(1e-4, 0.01 * fr.extent)
        ic.far = 1000.0 * fr.extent

        sc.on_click()(lambda e: self._on_click(e, "replace"))
        sc.on_click(modifier="shift")(lambda e: self._on_click(e, "add"))
        sc.on_click(modifier="alt")(lambda e: self._on_click(e, "remove"))
        sc.on_rect_select(modifier="cmd/ctrl")(self._on_rect)

    # ------------------------------------------------------------------ the 3D view's pointer
    def _on_click(self, e: Any, mode: str) -> None:
        """A scene click: the ray, where it was in the tab's canvas (pixels) and the chosen level."""
        pixel = None
        try:
            cam = e.client.camera
            pixel = (float(e.screen_pos[0]) * cam.image_width, float(e.screen_pos[1]) * cam.image_height)
        except (AttributeError, AssertionError, TypeError, IndexError):
            pass
        self._later(self.click, e.ray_origin, e.ray_direction, mode, pixel, self.level_dropdown.value)

    def _on_rect(self, e: Any) -> None:
        """A ctrl-drag in the 3D view: the box on the tab's current view (its camera at the moment)."""
        cam = e.client.camera
        self._later(self.rect_select, cam.wxyz, cam.position, cam.fov, int(cam.image_width),
                    int(cam.image_height), e.screen_min, e.screen_max, self.level_dropdown.value)

    def rect_select(self, wxyz: Any, position: Any, fov: float, width: int, height: int,
                    screen_min: tuple[float, float], screen_max: tuple[float, float],
                    level: str | None = None) -> Answer:
        """A rectangle dragged in a tab's view (viser camera ``wxyz``, ``position``, vertical ``fov``, canvas
        ``width`` × ``height``; corners as fractions of the canvas): on the uploaded reference image shown in
        the scene (its centre on the image) it is a box on that image (:meth:`reference_box`); anywhere else
        a box on the view itself, lifted into 3D (:meth:`box_select`)."""
        (u0, v0), (u1, v1) = screen_min, screen_max
        screen = (u0 * width, v0 * height, u1 * width, v1 * height)
        if self.reference is not None:
            full = view_camera(wxyz, position, fov, width, height, max_side=max(width, height))
            corners = np.array([[screen[0], screen[1]], [screen[2], screen[1]], [screen[2], screen[3]],
                                [screen[0], screen[3]], [0.5 * (screen[0] + screen[2]), 0.5 * (screen[1] + screen[3])]])
            px = self.reference.pixels_of_screen(full, corners)
            c = px[4]
            if np.isfinite(px).all() and 0 <= c[0] <= self.reference.width and 0 <= c[1] <= self.reference.height:
                lo, hi = px[:4].min(0), px[:4].max(0)
                box = [max(0.0, float(lo[0])), max(0.0, float(lo[1])), min(float(self.reference.width), float(hi[0])),
                       min(float(self.reference.height), float(hi[1]))]
                return self.reference_box(box)
        camera = view_camera(wxyz, position, fov, width, height)
        box = [u0 * camera.width, v0 * camera.height, u1 * camera.width, v1 * camera.height]
        return self.box_select(camera, box, screen, level)

    def reference_box(self, box: list[float]) -> Answer:
        """A box ``x0, y0, x1, y1`` (pixels) on the uploaded reference image: an image prompt with that box
        (and the text *Prompt*, when given); the box is also written into the panel's *Box* field."""
        with self._lock:
            if self.uploaded is None:
                raise Cos3dError("upload a reference image first (Image prompt → Upload image)")
            _set(self.box_text, ",".join(f"{v:.0f}" for v in box))
            return self.query_image(self.uploaded, ImagePrompt.of(box=box), text=self.prompt_text.value or None)

    def _build_gui(self, show_cameras: bool) -> None:
        gui = self.server.gui
        n_shown = len(self.splats.ids)
        cap = "" if n_shown == self.num_gaussians else f" (the {n_shown:,} most opaque of {self.num_gaussians:,})"
        self.busy_md = gui.add_markdown("Ready.")
        self.progress = gui.add_progress_bar(100.0, animated=True, visible=False)
        with gui.add_folder("Query"):
            self.prompt_text = gui.add_text("Prompt", "", hint='a text prompt, e.g. "red mug"')
            self.within_text = gui.add_text(
                "Part of", "", hint='optional parent for a part query ("robot"), or an object id like #123'
            )
            self.branch_dropdown = gui.add_dropdown(
                "Branch", adapter.BRANCHES, initial_value=adapter.BRANCHES[0],
                hint="field: the language field · 2d: SAM 3's concept masks lifted · fused: both")
            self.query_button = gui.add_button("Query")
            self.clear_button = gui.add_button("Clear")
            self.answer_md = gui.add_markdown("Type a prompt and press **Query**, or click an object.")
            default_level = "l" if "l" in self.levels else self.levels[-1]
            self.level_dropdown = gui.add_dropdown(
                "Level", self.levels, initial_value=default_level,
                hint="what a click or a dragged box selects: s = a part, l = the whole object")
            gui.add_markdown("*Click*: select the object under the cursor · *shift-click*: add · *alt-click*: "
                             "remove · *ctrl-drag*: draw a box around a thing")
        with gui.add_folder("Answer"):
            self.objects_md = gui.add_markdown("(no objects)")
            self.objects_folder = gui.add_folder("Focus", expand_by_default=True)
        with gui.add_folder("Objects", expand_by_default=False):
            self.list_button = gui.add_button("List objects", hint="name the scene's objects (scene-wide) to "
                                                                   "browse, select and show/hide")
            self.object_list_md = gui.add_markdown("(not listed yet)")
            self.object_list_folder = gui.add_folder("Show / select", expand_by_default=True)
        with gui.add_folder("Image prompt", expand_by_default=False):
            options = [*self.frame_names, UPLOADED] if self.frame_names else [UPLOADED]
            self.frame_dropdown = gui.add_dropdown("Frame", options, initial_value=options[0])
            self.upload_button = gui.add_upload_button("Upload image", mime_type="image/*")
            self.box_text = gui.add_text("Box", "", hint="x0,y0,x1,y1 in the image's pixels")
            self.points_text = gui.add_text("Points", "", hint="x,y;x,y in pixels (object points)")
            self.image_query_button = gui.add_button("Query image")
            first = self._first_frame_image()
            self.frame_image = gui.add_image(first if first is not None else np.zeros((8, 8, 3), np.uint8),
                                             label="frame")
            self.frame_md = gui.add_markdown(
                (f"Frame **{_esc(options[0])}**: type a box on it, or pick another frame (or click a camera)."
                 if first is not None else "Pick a frame (or click a camera) to see it with the answer's mask."))
        with gui.add_folder("Colour"):
            self.color_dropdown = gui.add_dropdown("Colour by", COLOR_MODES, initial_value=COLOR_MODES[0])
            self.dim_checkbox = gui.add_checkbox("Dim the rest", False, hint="darken Gaussians outside the answer")
            self.threshold_slider = gui.add_slider(
                "Relevancy ≥", 0.0, 1.0, 0.01, 0.0,
                hint="relevancy mode: Gaussians below this raw relevancy are greyed out")
            self.colorbar = gui.add_image(colorbar_image(), label="relevancy")
            self.colorbar_md = gui.add_markdown("Relevancy colour bar: blue low → red high.")
        with gui.add_folder("Export", expand_by_default=False):
            self.export_ply_button = gui.add_button("Selection (.ply)")
            self.export_json_button = gui.add_button("Objects (.json)")
            self.export_labels_button = gui.add_button("Labels (scene-wide)")
            self.export_md = gui.add_markdown(f"Writes into `{_esc(str(self.export_dir))}`.")
        with gui.add_folder("Display"):
            self.reset_button = gui.add_button("Reset view", hint="back to the first view of the scene")
            cam_opts = self.frame_names or ["(no cameras)"]
            self.goto_dropdown = gui.add_dropdown("Camera", cam_opts, initial_value=cam_opts[0])
            self.goto_button = gui.add_button("Go to camera", disabled=not self.frame_names,
                                              hint="look through the chosen training camera")
            self.cameras_checkbox = gui.add_checkbox(
                "Show cameras", show_cameras, disabled=not self.cameras, hint=self.cameras_note
            )
            self.count_md = gui.add_markdown(f"{n_shown:,} splats{cap}; {len(self.cameras)} cameras.")
            gui.add_markdown(SHARED_NOTE)
        with gui.add_folder("Last answers", expand_by_default=False):
            self.history_md = gui.add_markdown("(none yet)")

        self.query_button.on_click(
            lambda _e: self._later(self.query, self.prompt_text.value, self.within_text.value,
                                   self.branch_dropdown.value))
        self.clear_button.on_click(lambda _e: self._later(self.clear))
        self.image_query_button.on_click(lambda _e: self._later(self._query_image_from_gui))
        self.frame_dropdown.on_update(lambda _e: self._later(self._frame_picked))
        self.upload_button.on_upload(lambda _e: self._later(self._uploaded, self.upload_button.value))
        self.color_dropdown.on_update(  # a change from the page (one made by set_color_mode is already drawn)
            lambda _e: None if self.color_dropdown.value == self.color_mode
            else self._later(self.set_color_mode, self.color_dropdown.value))
        self.dim_checkbox.on_update(lambda _e: self._later(self.redraw))
        self.threshold_slider.on_update(
            lambda _e: self._later(self.redraw) if self.color_mode == COLOR_MODES[2] else None)
        self.cameras_checkbox.on_update(lambda _e: self.set_cameras_visible(self.cameras_checkbox.value))
        self.export_ply_button.on_click(lambda _e: self._later(self.export, "ply"))
        self.export_json_button.on_click(lambda _e: self._later(self.export, "json"))
        self.export_labels_button.on_click(lambda _e: self._later(self.export, "labels"))
        self.list_button.on_click(lambda _e: self._later(self.list_objects))
        self.reset_button.on_click(lambda e: self.reset_view(e.client))
        self.goto_button.on_click(lambda e: self.go_to_camera(self.goto_dropdown.value, e.client))

    def _first_frame_image(self) -> np.ndarray | None:
        """The first scene frame's image (the image panel shows it before one is picked), or None."""
        if not self.frame_names:
            return None
        try:
            return adapter.frame_image(self.trained, self.frame_names[0])
        except (Cos3dError, OSError, AttributeError):
            return None

    # ------------------------------------------------------------------ the worker
    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the app's worker thread (one at a time, in order), with a spinning progress
        bar and ``⏳ what … 3.2 s`` (ticking) in the panel meanwhile, then ``Done: what in 3.4 s``; errors are
        shown there (and printed), never raised into viser."""
        raw = getattr(fn, "__name__", "work").strip("_")
        name = WORK_NAMES.get(raw, raw.replace("_", " "))

        def work() -> Any:
            t0 = time.perf_counter()
            stop = threading.Event()

            def tick() -> None:
                while not stop.wait(0.5):
                    self.busy_md.content = f"⏳ {_esc(name)} … {time.perf_counter() - t0:.1f} s"

            self.busy_md.content = f"⏳ {_esc(name)} … 0.0 s"
            self.progress.visible = True
            ticker = threading.Thread(target=tick, name="cos3d-view-tick", daemon=True)
            ticker.start()
            for b in self._buttons():
                b.disabled = True
            try:
                out = fn(*args)
                stop.set()
                ticker.join()
                self.busy_md.content = f"Ready. Done: {_esc(name)} in {time.perf_counter() - t0:.1f} s."
                return out
            except Exception as e:  # keep the viewer alive; the traceback goes to the terminal
                stop.set()
                ticker.join()
                if not isinstance(e, Cos3dError):
                    traceback.print_exc()
                self.busy_md.content = f"Error: {_esc(f'{e}' if isinstance(e, Cos3dError) else f'{type(e).__name__}: {e}')}"
                return None
            finally:
                stop.set()
                self.progress.visible = False
                for b in self._buttons():
                    b.disabled = False

        try:
            return self._pool.submit(work)
        except RuntimeError:  # closed (the server is stopping): nothing runs any more
            done: Future = Future()
            done.set_result(None)
            return done

    def _later(self, fn: Callable[..., Any], *args: Any) -> None:
        """:meth:`submit` for GUI callbacks (which must return None)."""
        self.submit(fn, *args)

    def _buttons(self) -> list[Any]:
        return [self.query_button, self.image_query_button, self.export_ply_button, self.export_json_button,
                self.export_labels_button]

    def close(self) -> None:
        """Stop the worker (after the work queued so far)."""
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ queries
    def query(self, text: str, within: str | None = None, branch: str = "field") -> Answer:
        """Answer ``text`` (optionally within a parent; ``branch``: field, 2d or fused), highlight it and log it;
        returns the :class:`Answer`."""
        with self._lock:
            desc = f"{(text or '').strip()} within {within.strip()}" if (within or "").strip() else (text or "").strip()
            self.answer_md.content = f"Querying **{_esc(desc)}** …"
            try:
                answer = adapter.answer_query(self.trained, text, within=within, branch=branch)
            except Exception as e:  # keep the viewer alive; the traceback goes to the terminal
                traceback.print_exc()
                answer = Answer(prompt=desc, error=f"{type(e).__name__}: {e}")
            if answer.error is None and (text or "").strip():
                self.last_text = text.strip()
                self._rel_values = None
            return self._record(answer)

    def query_image(self, image: str | np.ndarray, region: ImagePrompt | None = None,
                    text: str | None = None) -> Answer:
        """An image prompt: a frame name (or an uploaded uint8 ``[H, W, 3]`` image) with a region (box / points)."""
        with self._lock:
            answer = adapter.answer_image(self.trained, image, region, text=text)
            self._draw_prompt_image(image, region, answer)
            return self._record(answer)

    def click(self, origin: Any, direction: Any, mode: str = "replace",
              pixel: tuple[float, float] | None = None, level: str | None = None) -> Answer:
        """A click in the 3D view (a world ray): select the object under it (``"replace"``), add it to the
        selection (``"add"``, shift-click) or remove it (``"remove"``, alt-click). ``pixel``: where the click
        was in the tab's view (canvas pixels; named in the answer); ``level``: ``s`` a part, ``l`` the whole
        object (default the engine's)."""
        with self._lock:
            answer = adapter.answer_click(self.trained, origin, direction, pixel=pixel, level=level)
            if mode in ("add", "remove"):
                answer = adapter.combine(self.last_answer, answer, mode)
            elif mode != "replace":
                raise ValueError(f"mode must be replace, add or remove, got {mode!r}")
            return self._record(answer)

    def box_select(self, camera: Camera, box: Any, screen: tuple[float, float, float, float] | None = None,
                   level: str | None = None) -> Answer:
        """A box drawn in the 3D view: ``box`` ``x0, y0, x1, y1`` in the pixels of ``camera`` (the tab's view,
        :func:`cos3d.viewer.helpers.view_camera`) is a box prompt on that view's render, lifted into 3D
        through that view's blending weights (:func:`cos3d.viewer.adapter.answer_box`). ``screen``: the
        box in the tab's canvas pixels (named in the answer); ``level`` as for :meth:`click`."""
        with self._lock:
            self.answer_md.content = "Lifting the box into 3D …"
            return self._record(adapter.answer_box(self.trained, camera, box, level=level, screen=screen))

    def _record(self, answer: Answer) -> Answer:
        self.show(answer)
        self.history.insert(0, self.answer_md.content)
        del self.history[self.history_size :]
        self.history_md.content = "\n".join(f"- {h}" for h in self.history)
        return answer

    def warm_up(self, prompt: str = "object") -> None:
        """Answer a throw-away prompt so the first real query does not pay for building the engine
        (embedder, calibration). Queries wait for it; failures are only reported in the panel."""
        with self._lock:
            self.answer_md.content = "Preparing the query engine …"
            try:
                adapter.answer_query(self.trained, prompt)
                self.answer_md.content = "Ready. Type a prompt and press **Query**, or click an object."
            except Exception as e:  # the first real query will raise it again, with its prompt
                self.answer_md.content = f"Query engine not ready: {_esc(f'{type(e).__name__}: {e}')}"

    # ------------------------------------------------------------------ drawing
    def _base_colors(self) -> np.ndarray:
        """The splats' colours under the current colour mode (before the answer's tint)."""
        mode = self.color_mode
        if mode == COLOR_MODES[0]:
            return self.splats.rgbs
        if mode not in self._base_cache:
            ids = self.splats.ids
            if mode == COLOR_MODES[1]:
                cols = instance_colors(adapter.instance_features(self.trained)[ids])
            elif mode == COLOR_MODES[2]:
                return self._relevancy_colors()
            else:
                label, self.decomposition_names, _ = self.decomposition()
                self.decomposition_labels = label
                cols = label_colors(label[ids], self.splats.rgbs)
            self._base_cache[mode] = cols
        return self._base_cache[mode]

    def _relevancy_colors(self) -> np.ndarray:
        """The relevancy heat of the last text prompt (blue low → red high, over the shown splats' range);
        splats below the "Relevancy ≥" slider are greyed out (their RGB, darkened)."""
        if not self.last_text:
            raise Cos3dError("no text prompt yet: query one, then colour by its relevancy")
        if self._rel_values is None or self._rel_values[0] != self.last_text:
            self._rel_values = (self.last_text, adapter.relevancy(self.trained, self.last_text)[self.splats.ids])
        v = self._rel_values[1]
        lo, hi = float(v.min()), float(v.max())
        cols = heatmap_colors(v, lo, hi)
        t = float(self.threshold_slider.value)
        below = v < t
        cols[below] = 0.3 * self.splats.rgbs[below]
        shown = int((~below).sum())
        self.colorbar_md.content = (
            f"Relevancy of **{_esc(self.last_text)}**: blue {lo:.2f} → red {hi:.2f} (raw relevancy)"
            + (f"; {shown:,} of {len(v):,} splats ≥ {t:.2f}, the rest greyed." if t > 0 else "."))
        return cols

    def set_color_mode(self, mode: str) -> None:
        """Colour the splats by ``mode`` (one of :data:`COLOR_MODES`) and redraw the answer on top."""
        if mode not in COLOR_MODES:
            raise ValueError(f"unknown colour mode {mode!r}; choose from {COLOR_MODES}")
        with self._lock:
            old = self.color_mode
            self.color_mode = mode
            try:
                self.redraw()
            except Exception:
                self.color_mode = old
                if self.color_dropdown.value != old:
                    _set(self.color_dropdown, old)
                raise
            if self.color_dropdown.value != mode:  # called from code: the page shows the mode too
                _set(self.color_dropdown, mode)
            if mode == COLOR_MODES[2]:
                self.count_md.content = f"Relevancy of **{_esc(self.last_text or '')}**: blue low, red high (colour bar under Colour)."
            elif mode == COLOR_MODES[3]:
                names = self.decomposition_names[1:]
                cols = object_colors(len(names))
                self.count_md.content = "Objects: " + ", ".join(
                    f"{_swatch(c)}{_esc(n)}" for n, c in zip(names, cols)) if names else "no objects found"

    def redraw(self) -> None:
        """Redraw with the current colour mode and answer."""
        if self.last_answer is not None:
            self.show(self.last_answer)
        else:
            self.rgbs = self._base_colors().copy()
            self.splat_handle.rgbs = self.rgbs

    def show(self, answer: Answer) -> None:
        """Draw ``answer``: splats tinted (RGB/instance modes) in a colour that contrasts with each object's own
        colours (:func:`~cos3d.viewer.helpers.contrast_colors`: a red can turns cyan or yellow, never red),
        one box per object (upright for an object resting on a surface) labelled with its name and score,
        the object list with a focus button each, and the answer line."""
        self._remove_overlays()
        self.last_answer = answer
        ids = [o.gaussians[(o.gaussians >= 0) & (o.gaussians < self.num_gaussians)] for o in answer.objects]
        rows = [self.row_of[i] for i in ids]
        rows_shown = [r[r >= 0] for r in rows]
        colors = contrast_colors([self.splats.rgbs[r] for r in rows_shown]) if answer.objects \
            else object_colors(0)
        dim = 0.35 if (self.dim_checkbox.value and answer.objects) else 1.0
        base = self._base_colors()
        if self.color_mode in COLOR_MODES[:2]:
            self.rgbs = tint_rgbs(base, rows_shown, colors, others=dim)
        else:
            self.rgbs = base * np.float32(dim) if dim != 1.0 else base.copy()
        self.splat_handle.rgbs = self.rgbs
        sc = self.server.scene
        for k, o in enumerate(answer.objects):
            r8, g8, b8 = (int(v) for v in np.round(colors[k] * 255))
            col = (r8, g8, b8)
            pts = self.means[ids[k]] if len(ids[k]) else np.asarray(o.box[0], np.float64).reshape(1, 3)
            shown_box = display_box(pts, o.box, self.framing.up)
            wxyz, pos, dims = box_pose(*shown_box)
            self.box_handles.append(
                sc.add_box(f"/answer/box_{k}", color=col, dimensions=dims, wireframe=True,
                           wxyz=wxyz, position=pos, cast_shadow=False, receive_shadow=False)
            )
            up = np.asarray(self.framing.up if self.framing.up is not None else (0.0, 0.0, 1.0), np.float64)
            half = 0.5 * float(np.abs(up @ np.asarray(shown_box[1], np.float64)) @ dims)  # the box's half height
            top = pos + (half + 0.02 * self.extent) * up
            self.overlay_handles.append(
                sc.add_label(f"/answer/label_{k}", f"{o.label} {o.score:.2f}", position=top))
            hidden = ids[k][rows[k] < 0]
            if len(hidden):  # selected but capped out by --max-splats: show their centres
                self.overlay_handles.append(
                    sc.add_point_cloud(f"/answer/points_{k}", self.means[hidden], col,
                                       point_size=0.004 * self.extent)
                )
        self.answer_md.content = format_answer(answer, colors)
        self.objects_md.content = (
            "\n".join(f"- {format_object(o, colors[k])}" for k, o in enumerate(answer.objects))
            if answer.objects else "(no objects)"
        )
        with self.objects_folder:
            for k, o in enumerate(answer.objects[:20]):
                b = self.server.gui.add_button(f"Focus {o.name} #{o.id}" if o.name else f"Focus #{o.id}")
                b.on_click(self._focus_callback(k))
                self.object_handles.append(b)

    def focus(self, k: int, client: Any = None) -> None:
        """Point a tab's camera (``client``; default every connected tab) at object ``k`` of the last answer."""
        if self.last_answer is None or not 0 <= k < len(self.last_answer.objects):
            raise Cos3dError(f"no object {k} in the last answer")
        o = self.last_answer.objects[k]
        center = np.asarray(o.box[0], np.float64)
        r = max(float(np.linalg.norm(o.size)), 0.05 * self.extent)
        for c in self._clients(client):
            cam = c.camera
            d = np.asarray(cam.position, np.float64) - np.asarray(cam.look_at, np.float64)
            d = d / max(float(np.linalg.norm(d)), 1e-12)
            with c.atomic():
                cam.look_at = center
                cam.position = center + d * 2.0 * r / np.tan(0.5 * cam.fov)

    def _clients(self, client: Any) -> list[Any]:
        return [client] if client is not None else list(self.server.get_clients().values())

    def reset_view(self, client: Any = None) -> None:
        """Back to the first view (:attr:`framing`) in a tab (``client``; default every connected tab)."""
        fr = self.framing
        for c in self._clients(client):
            with c.atomic():
                if fr.up is not None:
                    c.camera.up_direction = fr.up
                c.camera.position = fr.position
                c.camera.look_at = fr.look_at

    def go_to_camera(self, name: str, client: Any = None) -> None:
        """Look through training camera ``name`` in a tab (``client``; default every connected tab): its
        position, viewing direction, up and vertical field of view."""
        if name not in self.frame_names:
            raise Cos3dError(f"no camera named {name!r}; pick one of the scene's frames")
        cam = self.cameras[self.frame_names.index(name)]
        fov, _, _, pos = frustum_pose(cam)
        c2w = np.asarray(cam.c2w, np.float64)
        look = pos + c2w[:3, 2] * max(0.3 * self.extent, 1e-3)
        for c in self._clients(client):
            with c.atomic():
                c.camera.up_direction = -c2w[:3, 1]
                c.camera.position = pos
                c.camera.look_at = look
                c.camera.fov = fov

    # ------------------------------------------------------------------ the scene's objects
    def decomposition(self) -> tuple[np.ndarray, list[str], list[ObjectView]]:
        """:func:`cos3d.viewer.adapter.scene_decomposition` of this viewer's scene, computed once (one query
        per name) and shared by the "Objects" colour mode and the object list."""
        if self._decomposition is None:
            self._decomposition = adapter.scene_decomposition(self.trained)
        return self._decomposition

    def list_objects(self) -> list[ObjectView]:
        """Name the scene's objects (the scene-wide decomposition over its vocabulary, as the "Objects" colour
        mode and ``cos3d export --labels``), and list them in the panel: a show/hide checkbox and a select
        button each."""
        with self._lock:
            self.object_list_md.content = "Naming the scene's objects (one query per name) …"
            objs = self.decomposition()[2]
            for h in self.object_list_handles:
                h.remove()
            self.object_list_handles = []
            self.scene_objects = objs
            self.hidden = np.zeros(0, np.int64)
            self._apply_hidden()
            gui = self.server.gui
            with self.object_list_folder:
                for k, o in enumerate(objs):
                    cb = gui.add_checkbox(f"{o.label} ({len(o.gaussians):,} G)", True,
                                          hint="uncheck to hide this object's splats")
                    cb.on_update(self._visible_callback(k, cb))
                    b = gui.add_button(f"Select {o.label}")
                    b.on_click(self._select_callback(k))
                    self.object_list_handles += [cb, b]
            self.object_list_md.content = (f"{len(objs)} objects: " + ", ".join(_esc(o.label) for o in objs)
                                           if objs else "no objects found")
            return objs

    def _focus_callback(self, k: int) -> Callable[[Any], None]:
        def cb(e: Any) -> None:
            self.focus(k, e.client)
        return cb

    def _visible_callback(self, k: int, box: Any) -> Callable[[Any], None]:
        def cb(_e: Any) -> None:
            self.set_object_visible(k, bool(box.value))
        return cb

    def _select_callback(self, k: int) -> Callable[[Any], None]:
        def cb(_e: Any) -> None:
            self._later(self.select_object, k)
        return cb

    def select_object(self, k: int) -> Answer:
        """Make listed object ``k`` (:meth:`list_objects`) the answer."""
        with self._lock:
            if not 0 <= k < len(self.scene_objects):
                raise Cos3dError(f"no listed object {k}: press List objects first")
            o = self.scene_objects[k]
            return self._record(Answer(prompt=o.label, objects=[o], selected=np.sort(o.gaussians), kind="object",
                                       reason="picked from the object list"))

    def set_object_visible(self, k: int, visible: bool) -> None:
        """Show or hide listed object ``k``'s splats (hidden: opacity 0 in every tab)."""
        if not 0 <= k < len(self.scene_objects):
            raise Cos3dError(f"no listed object {k}: press List objects first")
        rows = self.row_of[self.scene_objects[k].gaussians]
        rows = rows[rows >= 0]
        self.hidden = np.setdiff1d(self.hidden, rows) if visible else np.union1d(self.hidden, rows)
        self._apply_hidden()

    def _apply_hidden(self) -> None:
        op = self.splats.opacities.copy()
        op[self.hidden] = 0.0
        self.splat_handle.opacities = op

    def clear(self) -> None:
        """Back to the plain scene (in the current colour mode)."""
        with self._lock:
            self._remove_overlays()
            self.last_answer = None
            self.rgbs = self._base_colors().copy()
            self.splat_handle.rgbs = self.rgbs
            self.answer_md.content = "Cleared. Type a prompt and press **Query**, or click an object."
            self.objects_md.content = "(no objects)"

    def _remove_overlays(self) -> None:
        for h in self.box_handles + self.overlay_handles + self.object_handles:
            h.remove()
        self.box_handles, self.overlay_handles, self.object_handles = [], [], []

    def set_cameras_visible(self, visible: bool) -> None:
        for h in self.frustum_handles:
            h.visible = bool(visible)

    # ------------------------------------------------------------------ frames and image prompts
    def show_frame(self, name: str) -> np.ndarray:
        """Show training frame ``name`` in the panel with the last answer's 2D mask (occlusion-aware)
        overlaid in red; it becomes the image prompt's frame. Returns the image shown."""
        with self._lock:
            img = adapter.frame_image(self.trained, name)
            mask = None
            sel = self.last_answer.selected if self.last_answer is not None else np.zeros(0, np.int64)
            if len(sel):
                mask = adapter.selection_mask(self.trained, sel, name)
            shown = draw_prompt(img, mask=mask)
            self.frame_image.image = shown
            n = 0 if mask is None else int(mask.sum())
            self.frame_md.content = f"Frame **{_esc(name)}** ({img.shape[1]}×{img.shape[0]})" + (
                f": the answer covers {n:,} pixels (red)." if mask is not None else ".")
            if self.frame_dropdown.value != name and name in self.frame_names:
                self.frame_dropdown.value = name
            return shown

    def _frame_picked(self) -> None:
        v = self.frame_dropdown.value
        if v != UPLOADED:
            self.show_frame(v)
        elif self.uploaded is not None:
            self.frame_image.image = self.uploaded

    def _uploaded(self, file: Any) -> None:
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(file.content)) as im:
                image = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - any decoding failure is the user's file
            raise Cos3dError(f"{file.name}: not an image this viewer can read ({e})") from None
        self.upload(image, file.name)

    def upload(self, image: np.ndarray, name: str = "image") -> ImagePlane:
        """Take ``image`` (uint8 ``[H, W, 3]``) as the reference image: shown in the panel and in the 3D
        scene beside the content, facing the first view (:func:`~cos3d.viewer.helpers.image_plane_beside`),
        where a ctrl-drag draws a box on it (:meth:`rect_select`)."""
        with self._lock:
            img = np.ascontiguousarray(np.asarray(image, np.uint8)[..., :3])
            if img.ndim != 3 or min(img.shape[:2]) < 2:
                raise Cos3dError(f"{name}: not an RGB image ({list(img.shape)})")
            self.uploaded = img
            h, w = img.shape[:2]
            for hd in self.reference_handles:
                hd.remove()
            plane = image_plane_beside(self.framing, w, h)
            sc = self.server.scene
            self.reference_handles = [
                sc.add_image("/reference/image", img, plane.render_width, plane.render_height,
                             wxyz=rotmat_to_wxyz(plane.R), position=plane.center, cast_shadow=False,
                             receive_shadow=False),
                sc.add_label("/reference/label", "reference image: ctrl-drag a box on it",
                             position=plane.center - plane.R[:, 1] * 0.6 * plane.render_height),
            ]
            self.reference = plane
            self.frame_image.image = img
            self.frame_md.content = (f"Uploaded **{_esc(name)}** ({w}×{h}): shown in the 3D view beside the scene; "
                                     "ctrl-drag a box on it there (or type one) to prompt with it.")
            if self.frame_dropdown.value != UPLOADED:
                self.frame_dropdown.value = UPLOADED
            return plane

    def _query_image_from_gui(self) -> Answer:
        v = self.frame_dropdown.value
        if v == UPLOADED:
            if self.uploaded is None:
                raise Cos3dError("upload an image first (or pick a scene frame)")
            image: str | np.ndarray = self.uploaded
            h, w = self.uploaded.shape[:2]
        else:
            image = v
            h, w = adapter.frame_image(self.trained, v).shape[:2]
        try:
            box = parse_box(self.box_text.value, w, h)
            points = _parse_points(self.points_text.value)
        except ValueError as e:
            raise Cos3dError(str(e)) from None
        region = ImagePrompt.of(box=box, points=points)
        return self.query_image(image, region, text=self.prompt_text.value or None)

    def _draw_prompt_image(self, image: str | np.ndarray, region: ImagePrompt | None, answer: Answer) -> None:
        box = None if region is None else region.box
        points = None if region is None else region.points
        try:
            img = adapter.frame_image(self.trained, image) if isinstance(image, str) else np.asarray(image, np.uint8)
            mask = None
            if isinstance(image, str) and len(answer.selected):
                mask = adapter.selection_mask(self.trained, answer.selected, image)
            self.frame_image.image = draw_prompt(img, box=box, points=points, mask=mask)
        except Cos3dError:
            pass

    # ------------------------------------------------------------------ export
    def export(self, what: str) -> list[Path]:
        """Write ``what`` into :attr:`export_dir`: ``"ply"`` the selection (3DGS .ply), ``"json"`` the
        answer's objects, ``"labels"`` the scene-wide per-Gaussian labels (``cos3d export``'s writer)."""
        with self._lock:
            a = self.last_answer
            if what in ("ply", "json") and (a is None or (not len(a.selected) and a.error is None and what == "ply")):
                raise Cos3dError("nothing selected to export: query or click something first")
            stem = "selection_" + time.strftime("%Y%m%d-%H%M%S")
            if what == "ply":
                paths = [adapter.export_selection(self.trained, a, self.export_dir, stem)]
            elif what == "json":
                paths = [adapter.export_objects(a, self.export_dir, stem)]
            elif what == "labels":
                self.export_md.content = "Labelling the scene (every training name is queried) …"
                paths = adapter.export_labels(self.trained, self.export_dir)
            else:
                raise ValueError(f"unknown export {what!r}; choose ply, json or labels")
            self.export_md.content = "Wrote " + ", ".join(f"`{_esc(p.name)}`" for p in paths) + \
                f" into `{_esc(str(self.export_dir))}`."
            return paths


def _set(handle: Any, value: Any) -> None:
    """Set a GUI input's value from code (viser's typing marks ``value`` read-only; it is settable)."""
    handle.value = value


def _parse_points(text: str) -> np.ndarray | None:
    """``"x,y;x,y"`` → ``[K, 2]`` float64; ``""`` → None. Raises ValueError naming the bad point."""
    text = (text or "").strip()
    if not text:
        return None
    pts = []
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        try:
            x, y = (float(t) for t in item.split(","))
        except ValueError:
            raise ValueError(f"point {item!r}: give x,y in pixels, points separated by ';'") from None
        pts.append((x, y))
    return np.array(pts, np.float64).reshape(-1, 2) if pts else None
