"""``cos3d query``: answer a text / image / click / part prompt on a trained run.

Examples::

    cos3d query "red mug" --run runs/tabletop
    cos3d query "mugs" --run RUN --json --masks-out masks/ --views 16,17 --protocol occlusion
    cos3d query --run RUN --image RUN_SCENE/color/16.png --box 40,30,80,70      # a scene frame: lifted into 3D
    cos3d query --run RUN --view 16 --box 40,30,80,70                           # the same
    cos3d query --run RUN --image photo.jpg --box 40,30,80,70 --segmenter sam2-hf --sam2-model DIR
    cos3d query "mug" --run RUN --view 16 --box 40,30,80,70 --combine and
    cos3d query --run RUN --click 16:82,57
    cos3d query "the robot's head" --run RUN --ply-out head.ply
    cos3d query "head" --within "robot" --run RUN
    cos3d query "red mug" --run RUN --branch fused --sam3-model DIR             # SAM 3 masks lifted, with the field
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from cos3d.core.errors import Cos3dError, ServeError
from cos3d.core.paths import safe_name

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.query.engine import QueryEngine, QueryResult

HELP = "segment a trained scene by a text, image, click or part prompt"


@dataclass
class QueryConfig:
    """What ``cos3d query`` does: one prompt on a trained run."""

    text: str | None = field(default=None, metadata={"positional": True})
    """Text prompt, e.g. "red mug" (optional with --image or --click)."""
    run: Path | None = None
    """Run folder made by cos3d train (default: the most recently trained run under ./runs)."""
    image: Path | None = None
    """Reference image (PNG/JPG) of an image prompt, with one of --box, --mask, --scribble, --points. A scene
    frame's own file is lifted into 3D through its blending weights (as --view); any other image is embedded."""
    view: str | None = None
    """A scene frame (its name) as the reference image: the prompted region is lifted into 3D through the
    frame's blending weights (reads no ground truth)."""
    box: str | None = None
    """x0,y0,x1,y1 in reference-image pixels."""
    mask: Path | None = None
    """Binary mask PNG of the region in the reference image."""
    scribble: Path | None = None
    """PNG whose non-zero pixels are a scribble on the object."""
    points: str | None = None
    """"x,y;x,y" points on the object (x,y,0 = a background point)."""
    click: str | None = None
    """VIEW:x,y, a pixel in a scene frame: the object under it."""
    combine: Literal["sum", "and"] = "sum"
    """Text + image prompt: sum (normalised sum of the two embeddings) or and (the objects both answers hold)."""
    branch: Literal["field", "2d", "fused"] = "field"
    """How a text prompt is answered: field (the language field, COS3D), 2d (SAM 3 segments the text in a few
    training views and its masks are lifted through the blending weights) or fused (the field's objects cut to
    what the views confirm; presence from SAM 3's presence score and the field's decision)."""
    concept_segmenter: Literal["sam3", "none"] = "sam3"
    """The concept segmenter of --branch 2d/fused: sam3 (SAM 3 through transformers; weights: --sam3-model, else
    the run's, $COS3D_SAM3_MODEL or facebook/sam3) or none."""
    segmenter: Literal["auto", "none", "sam2", "sam2-hf", "sam3"] = "auto"
    """Box/points/scribble -> mask segmenter of image prompts: auto (the run's SAM model when it was trained with
    one and its weights load; else the offline rule, and the answer says so; with --sam2-model, --sam3-model or
    --sam2-checkpoint given, that model), none, or a SAM model (its weights: those flags, or the run's settings)."""
    sam2_model: str | None = None
    """SAM2 through transformers for --segmenter sam2-hf: hub id or save_pretrained folder (default: the run's)."""
    sam3_model: str | None = None
    """SAM 3 for --segmenter sam3 (its tracker) and --branch 2d/fused (its concept model): hub id or
    save_pretrained folder (default: the run's)."""
    sam2_checkpoint: Path | None = None
    """Official SAM2 .pt checkpoint for --segmenter sam2 (default: the run's)."""
    lift: bool = True
    """Lift an image prompt on a scene frame into 3D (--no-lift: embed its region instead; with the oracle-2D
    labels embedder that names the dataset object under it, a ground-truth look-up)."""
    parts: bool = True
    """Read "the handle of the red mug" / "the robot's head" as a part query (--no-parts: one name)."""
    within: str | None = None
    """Parent prompt of a part query, e.g. "head" --within "robot"."""
    within_object: int | None = None
    """Parent object id (as printed by an earlier query) of a part query."""
    level: Literal["s", "m", "l"] | None = None
    """Field level to answer on (default: l; s for part queries)."""
    refine: Literal["fast", "compiled", "numpy", "reference"] = "fast"
    """Refinement implementation (the same selection): fast (compiled loop on large fields, numpy waves on
    small ones), compiled (numba), numpy, or the literal reference loop of COS3D."""
    json: bool = False
    """Print the answer as JSON."""
    masks_out: Path | None = None
    """Write DIR/<frame>.png masks (255 = selected) at the frames' own resolution."""
    views: tuple[str, ...] | None = None
    """Frames for --masks-out, comma separated (default: the scene's test split)."""
    protocol: Literal["occlusion", "selected"] = "occlusion"
    """2D mask protocol: occlusion-aware, or selected-only alpha > 0.7 (COS3D's)."""
    ply_out: Path | None = None
    """Write the selected Gaussians as a PLY."""
    server: bool = True
    """Answer through a running `cos3d serve` that serves --run when there is one (found by its discovery file;
    no torch import here); --no-server answers in this process."""


def register(sub: argparse._SubParsersAction) -> None:
    from cos3d.core.config import add_arguments, add_config_flag

    p = sub.add_parser(
        "query",
        help=HELP,
        description="Answer a prompt on a trained run: 3D objects (table or JSON), optional 2D masks and PLY.",
    )
    add_config_flag(p)
    add_arguments(p, QueryConfig, QueryConfig())
    p.set_defaults(func=run, config_cls=QueryConfig)


def _print_table(res: QueryResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    targets = {"none": "no target", "one": "one target", "many": "many targets"}[res.targets]
    branch = getattr(res, "branch", None)
    how = f", branch {branch}" if branch and branch != "field" else ""
    title = f"{res.query}  ({res.kind}, level {res.level}{how}, {targets})"
    if res.no_target:
        reason = res.reason.removeprefix("no target: ")
        console.print(f"[bold]{title}[/bold]\n[yellow]no target[/yellow]: {reason}")
    else:
        t = Table(title=title, caption=res.reason)
        for col in ("object", "Gaussians", "score", "centroid (m)", "box extent (m)"):
            t.add_column(col, justify="right")
        for o in res.objects:
            t.add_row(str(o.id), str(o.num), f"{o.score:.3f}", " ".join(f"{v:+.3f}" for v in o.centroid),
                      " ".join(f"{v:.3f}" for v in o.box.extent))
        console.print(t)
    tim = ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items())
    console.print(f"[dim]timings (ms): {tim}[/dim]")


def write_masks(engine: QueryEngine, res: QueryResult, out_dir: Path, views: list[str] | None,
                protocol: str) -> list[Path]:
    """Write ``out_dir/<frame>.png`` (uint8, 255 = selected) for each view; returns the paths. A frame
    name is data, not a path: names with separators, ``..`` or other characters are escaped
    (:func:`cos3d.core.paths.safe_name`), so every mask lands in ``out_dir``."""
    import numpy as np
    from PIL import Image

    from cos3d.core.atomic import atomic_path
    from cos3d.core.paths import safe_name

    if views:
        for v in views:
            engine.camera(v)  # unknown view → one-line error
        frames = [engine.scene.frame(v) for v in views]
    else:
        frames = engine.scene.split("test")
    written = []
    for f in frames:
        cam = f.camera
        if res.no_target:
            m = np.zeros((cam.height, cam.width), bool)
        else:
            m = engine.mask(res, cam, protocol)
        path = out_dir / f"{safe_name(f.name)}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(m.astype(np.uint8) * 255).save(tmp, format="PNG")
        written.append(path)
    return written


def write_selection_ply(engine: QueryEngine, res: QueryResult, path: Path) -> None:
    from cos3d.data.ply import write_ply

    write_ply(path, engine.gaussians.subset(res.selected))  # atomic


def check_outputs(cfg: QueryConfig) -> None:
    """Refuse output paths that cannot be written before any work is done."""
    from cos3d.core.atomic import check_writable
    from cos3d.core.errors import Cos3dError

    if cfg.masks_out is not None:
        if cfg.masks_out.exists() and not cfg.masks_out.is_dir():
            raise Cos3dError(f"--masks-out {cfg.masks_out} is a file; give a folder for the mask PNGs")
        check_writable(cfg.masks_out, "--masks-out")
    if cfg.ply_out is not None:
        if cfg.ply_out.is_dir():
            raise Cos3dError(f"--ply-out {cfg.ply_out} is a folder; give a file name such as selection.ply")
        if cfg.ply_out.parent.exists() and not cfg.ply_out.parent.is_dir():
            raise Cos3dError(f"--ply-out {cfg.ply_out}: {cfg.ply_out.parent} is a file, not a folder")
        check_writable(cfg.ply_out, "--ply-out", kind="file")


def resolve_run(run: Path | None) -> Path:
    """``run``, or the most recently trained finished run under ``./runs`` (said in one line)."""
    from cos3d.core.errors import Cos3dError
    from cos3d.pipeline.run_folder import latest_run

    if run is not None:
        if not run.is_dir():
            raise Cos3dError(f"--run {run}: no such run folder (train one with cos3d train)")
        return run
    found = latest_run(Path("runs"))
    if found is None:
        raise Cos3dError(
            "no trained run under ./runs; name one with --run RUN (train one with `cos3d train --scene S`)"
        )
    print(f"run: {found} (the most recently trained under ./runs; --run to choose)", file=sys.stderr)
    return found


def check_prompt(cfg: QueryConfig) -> None:
    """The checks of a prompt that need no run (one-line errors, before anything is loaded)."""
    from cos3d.core.errors import Cos3dError

    if cfg.text is not None and not cfg.text.strip():
        raise Cos3dError('empty text prompt: give a phrase such as "red mug"')
    if cfg.within is not None and not cfg.within.strip():
        raise Cos3dError('--within is empty: give the parent\'s name, e.g. --within "robot"')


def check_combination(cfg: QueryConfig) -> None:
    """Whether the flags make one prompt (one-line errors, before anything is loaded)."""
    from cos3d.core.errors import Cos3dError

    if cfg.text is None and cfg.image is None and cfg.view is None and cfg.click is None:
        raise Cos3dError('nothing to answer: give a text prompt ("red mug"), --image/--view with a region, or --click')
    if cfg.image is not None and cfg.view is not None:
        raise Cos3dError("give the reference image either as --image or as --view (a scene frame), not both")
    if (cfg.image is not None or cfg.view is not None) and all(
            v is None for v in (cfg.box, cfg.mask, cfg.scribble, cfg.points)):
        raise Cos3dError("an image prompt needs a region: add --box x0,y0,x1,y1, --mask M.png, --scribble S.png or --points")
    if cfg.within_object is not None and cfg.within is not None:
        raise Cos3dError("give either --within or --within-object, not both")


def run(args: argparse.Namespace) -> int:
    from cos3d.core.config import config_from_args
    from cos3d.core.errors import Cos3dError

    cfg = config_from_args(QueryConfig, args, QueryConfig())
    check_prompt(cfg)
    if cfg.server and cfg.run is not None:
        rc = answer_remotely(cfg)  # None: no server for this run (or not usable for these flags)
        if rc is not None:
            return rc
    from cos3d.query.prompts import parse_click, parse_views
    from cos3d.vision.image_prompt import ImagePrompt, parse_box

    region = ImagePrompt.of(box=parse_box(cfg.box) if cfg.box is not None else None, mask=cfg.mask,
                            scribble=cfg.scribble, points=cfg.points)
    click = parse_click(cfg.click) if cfg.click is not None else None
    views = parse_views(list(cfg.views)) if cfg.views is not None else None
    check_combination(cfg)
    check_outputs(cfg)
    run_dir = resolve_run(cfg.run)

    import cos3d

    # --segmenter auto with a model named here uses that model (cos3d.vision.models.choose_segmenter)
    overrides = {"sam2_model": cfg.sam2_model, "sam3_model": cfg.sam3_model, "sam2_checkpoint": cfg.sam2_checkpoint}
    trained = cos3d.load(run_dir, segmenter=cfg.segmenter, models=overrides, concept_segmenter=cfg.concept_segmenter)
    engine = trained.engine
    if views:
        for v in views:
            engine.camera(v)  # unknown view → error before any work
    res = engine.query(
        cfg.text, image=cfg.image, view=cfg.view, region=region, click=click, within=cfg.within, within_object=cfg.within_object, level=cfg.level, refine=cfg.refine,
        lift=None if cfg.lift else False, combine=cfg.combine, parts=cfg.parts, branch=cfg.branch,
    )
    if not trained.query_state_loaded:  # first use (a run trained before the state was saved): keep it
        try:
            trained.save_query_state()
        except Cos3dError as e:
            print(f"note: the query index was not saved for the next run ({e})", file=sys.stderr)
    written = []
    if cfg.masks_out is not None:
        written = write_masks(engine, res, cfg.masks_out, views, cfg.protocol)
    if cfg.ply_out is not None:
        write_selection_ply(engine, res, cfg.ply_out)
    report(cfg, res, written)
    return 0


class Answer(Protocol):
    """What :func:`report` prints: a :class:`~cos3d.query.engine.QueryResult` or a served run's answer."""

    num_gaussians: int

    def to_dict(self) -> dict: ...


def report(cfg: QueryConfig, res: Answer, written: list[Path]) -> None:
    """Print an answer as the table or ``--json``, with the masks and PLY written for it (in process or through
    a server)."""
    if cfg.json:
        d = res.to_dict()
        if written:
            d["masks"] = {"dir": str(cfg.masks_out), "protocol": cfg.protocol, "files": [p.name for p in written]}
        if cfg.ply_out is not None:
            d["ply"] = str(cfg.ply_out)
        json.dump(d, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _print_table(res)
        if written:
            print(f"wrote {len(written)} masks ({cfg.protocol}) to {cfg.masks_out}")
        if cfg.ply_out is not None:
            print(f"wrote {res.num_gaussians} Gaussians to {cfg.ply_out}")


# ---- through a running `cos3d serve`: the same output (table, --json, --masks-out PNGs, --ply-out) without
# importing torch or loading the run in this process


def server_usable(cfg: QueryConfig) -> bool:
    """Whether a server can answer these flags as this process would: a server keeps its own segmenter
    (the run's), so asking for another one (or other SAM weights) is answered in-process."""
    return (cfg.segmenter == "auto" and cfg.concept_segmenter != "none"
            and not (cfg.sam2_model or cfg.sam3_model or cfg.sam2_checkpoint))


def _write_bytes(path: Path, data: bytes) -> None:
    from cos3d.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def answer_remotely(cfg: QueryConfig) -> int | None:
    """Answer ``cfg`` through the server that serves ``cfg.run``; None when there is none (or it stopped
    answering: the caller then answers in-process)."""
    from cos3d.serve.client import connect

    if not server_usable(cfg) or cfg.run is None or not Path(cfg.run).is_dir():
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
            refine=cfg.refine, lift=None if cfg.lift else False, combine=cfg.combine, parts=cfg.parts, branch=cfg.branch,
            arrays=False,
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
            data = remote.mask_png(res, v, cfg.protocol)
            path = cfg.masks_out / f"{safe_name(v)}.png"  # a frame name is data, not a path (as in process)
            _write_bytes(path, data)
            written.append(path)
    if cfg.ply_out is not None:
        remote.export(res, cfg.ply_out, "ply")
    report(cfg, res, written)
    if os.environ.get("COS3D_SERVE_VERBOSE"):
        print(f"answered by {remote.client.url} (run {remote.name}, version {res.version})", file=sys.stderr)
    return 0
