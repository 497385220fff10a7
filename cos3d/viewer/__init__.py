"""``cos3d view``: browse a trained run in a viser web viewer and query it from the page.

Modules:

- :mod:`cos3d.viewer.helpers` — pure helpers (numpy in, numpy out; no server): splat arrays, colours
  (object colours, contrasting highlights, relevancy heat, instance-feature clusters and PCA, decomposition labels), poses, the first
  view's framing (:func:`~cos3d.viewer.helpers.scene_framing`), the camera on a click ray;
- :mod:`cos3d.viewer.adapter` — the **only** viewer code that calls the run's query engine or reads a
  ``QueryResult``: returns the viewer's own :class:`~cos3d.viewer.adapter.Answer`; exports;
- :mod:`cos3d.viewer.app` — :class:`~cos3d.viewer.app.ViewerApp`: the scene and GUI on a
  ``viser.ViserServer`` and what the page's controls call (tests call the same methods);
- :mod:`cos3d.viewer.server` — :class:`~cos3d.viewer.server.ViewConfig` (``cos3d view``'s flags), the port
  check, the server, the addresses and the warning it prints, :func:`~cos3d.viewer.server.serve`.

What a user runs and reads (README, launch scripts, screenshots) is in the top-level ``viewer/`` folder.
"""

from __future__ import annotations

from cos3d.viewer.adapter import Answer, ObjectView, answer_click, answer_image, answer_query, combine
from cos3d.viewer.app import COLOR_MODES, ViewerApp, format_answer, format_object
from cos3d.viewer.helpers import (
    DEFAULT_MAX_SPLATS,
    Framing,
    SplatArrays,
    box_pose,
    frustum_pose,
    guess_up_direction,
    heatmap_colors,
    instance_colors,
    label_colors,
    object_colors,
    pca_colors,
    quats_scales_to_covariances,
    ray_camera,
    scene_extent,
    scene_framing,
    splat_arrays,
    tint_rgbs,
    top_opacity_ids,
)
from cos3d.viewer.server import (
    ViewConfig,
    check_port_free,
    exposure_warning,
    serve,
    start_server,
    viewer_url,
    viewer_urls,
)

__all__ = [
    "COLOR_MODES",
    "DEFAULT_MAX_SPLATS",
    "Answer",
    "Framing",
    "ObjectView",
    "SplatArrays",
    "ViewConfig",
    "ViewerApp",
    "answer_click",
    "answer_image",
    "answer_query",
    "box_pose",
    "check_port_free",
    "combine",
    "exposure_warning",
    "format_answer",
    "format_object",
    "frustum_pose",
    "guess_up_direction",
    "heatmap_colors",
    "instance_colors",
    "label_colors",
    "object_colors",
    "pca_colors",
    "quats_scales_to_covariances",
    "ray_camera",
    "scene_extent",
    "scene_framing",
    "serve",
    "splat_arrays",
    "start_server",
    "tint_rgbs",
    "top_opacity_ids",
    "viewer_url",
    "viewer_urls",
]
