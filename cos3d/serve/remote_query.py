"""``cos3d query`` through a running ``cos3d serve``: the same output (table, ``--json``, ``--masks-out``
PNGs, ``--ply-out``) without importing torch or loading the run in this process."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cos3d.core.errors import Cos3dError, ServeError
from cos3d.core.paths import safe_name

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.commands.query import QueryConfig


def usable(cfg: "QueryConfig") -> bool:
    """Whether a server can answer these flags as this process would: a server keeps its own segmenter
    (the run's), so asking for another one (or other SAM weights) is answered in-process."""
    return cfg.segmenter == "auto" and not (cfg.sam2_model or cfg.sam3_model or cfg.sam2_checkpoint)


def _write(path: Path, data: bytes) -> None:
    from cos3d.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def answer_remotely(cfg: "QueryConfig") -> int | None:
    """Answer ``cfg`` through the server that serves ``cfg.run``; None when there is none (or it stopped
    answering: the caller then answers in-process)."""
    from cos3d.serve.client import connect
    from cos3d.commands.query import check_combination, check_outputs

    if not usable(cfg) or cfg.run is None or not Path(cfg.run).is_dir():
        return None
    try:
        remote = connect(cfg.run)
        if remote is None:
            return None
        check_combination(cfg)
        check_outputs(cfg)
        res = remote.query(
            cfg.text, image=cfg.image, view=cfg.view, box=cfg.box, mask=cfg.mask, scribble=cfg.scribble,
            points=cfg.points, click=cfg.click, within=cfg.within, within_object=cfg.within_object, level=cfg.level,
            refine=cfg.refine, lift=None if cfg.lift else False, combine=cfg.combine, parts=cfg.parts, arrays=False,
        )
    except ServeError as e:
        if e.status == 503 and "unreachable" in str(e):
            return None
        raise
    written: list[Path] = []
    if cfg.masks_out is not None:
        views = [v.strip() for item in cfg.views for v in str(item).split(",") if v.strip()] if cfg.views else None
        names = remote.views
        for v in views or []:
            if v not in names:
                raise Cos3dError(f"unknown view {v!r}; the scene's frames are {names[0]}..{names[-1]} ({len(names)} frames)")
        for v in views or remote.test_views:
            data, _ = remote.client.request("POST", remote._path("masks"),
                                            {"query": res.request, "view": v, "protocol": cfg.protocol}, raw=True)
            path = cfg.masks_out / f"{safe_name(v)}.png"  # a frame name is data, not a path (as in process)
            _write(path, data)
            written.append(path)
    if cfg.ply_out is not None:
        remote.export(res, cfg.ply_out, "ply")
    from cos3d.commands.query import report

    report(cfg, res, written)
    if os.environ.get("COS3D_SERVE_VERBOSE"):
        print(f"answered by {remote.client.url} (run {remote.name}, version {res.version})", file=sys.stderr)
    return 0
