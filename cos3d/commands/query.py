"""``cos3d query``: answer a text / image / click / part prompt on a trained run.

Examples::

    cos3d query "red mug" --run runs/tabletop
    cos3d query "mugs" --run RUN --json --masks-out masks/ --views 16,17 --protocol occlusion
    cos3d query --run RUN --image RUN_SCENE/color/16.png --box 40,30,80,70
    cos3d query --run RUN --click 16:82,57
    cos3d query "head" --within "robot" --run RUN --ply-out head.ply
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from cos3d.query.engine import QueryEngine, QueryResult

HELP = "segment a trained scene by a text, image, click or part prompt"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help=HELP,
        description="Answer a prompt on a trained run: 3D objects (table or JSON), optional 2D masks and PLY.",
    )
    p.add_argument("text", nargs="?", default=None, help='text prompt, e.g. "red mug" (optional with --image/--click)')
    p.add_argument("--run", required=True, type=Path, help="run folder made by cos3d train")
    g = p.add_argument_group("image prompt (a reference image and one region prompt)")
    g.add_argument("--image", type=Path, default=None, help="reference image (PNG/JPG)")
    g.add_argument("--box", default=None, help="x0,y0,x1,y1 in reference-image pixels")
    g.add_argument("--mask", dest="mask_png", type=Path, default=None, help="binary mask PNG of the region")
    g.add_argument("--scribble", type=Path, default=None, help="PNG whose non-zero pixels are a scribble on the object")
    g.add_argument("--points", default=None, help='"x,y;x,y" points on the object (x,y,0 = background point)')
    p.add_argument("--click", default=None, help="VIEW:x,y — a pixel in a scene frame; returns the object under it")
    p.add_argument("--within", default=None, help='parent prompt for a part query, e.g. "head" --within "robot"')
    p.add_argument("--within-object", default=None, type=int, metavar="ID",
                   help="parent object id (as printed by an earlier query) for a part query")
    p.add_argument("--level", default=None, help="field level to answer on (default: l; s for part queries)")
    p.add_argument("--refine", default="fast", choices=("fast", "reference"), help="refinement implementation")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument("--masks-out", type=Path, default=None, help="write DIR/<frame>.png masks (255 = selected)")
    p.add_argument("--views", action="append", default=None,
                   help="frames for --masks-out, comma separated (default: the scene's test split)")
    p.add_argument("--protocol", default="occlusion", choices=("occlusion", "selected"),
                   help="2D mask protocol: occlusion-aware (default) or selected-only alpha > 0.7 (COS3D)")
    p.add_argument("--ply-out", type=Path, default=None, help="write the selected Gaussians as a PLY")
    p.set_defaults(func=run)


def _print_table(res: QueryResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = f"{res.query}  ({res.kind}, level {res.level})"
    if res.no_target:
        console.print(f"[bold]{title}[/bold]\n[yellow]no target[/yellow]: {res.reason}")
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
    """Write ``out_dir/<frame>.png`` (uint8, 255 = selected) for each view; returns the paths."""
    import numpy as np
    from PIL import Image

    from cos3d.atomic import atomic_path

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
        path = out_dir / f"{f.name}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(m.astype(np.uint8) * 255).save(tmp, format="PNG")
        written.append(path)
    return written


def write_selection_ply(engine: QueryEngine, res: QueryResult, path: Path) -> None:
    from cos3d.ply import write_ply

    write_ply(path, engine.gaussians.subset(res.selected))  # atomic


def run(args: argparse.Namespace) -> int:
    from cos3d.errors import Cos3dError
    from cos3d.query.prompts import parse_box, parse_click, parse_views

    if args.text is not None and not args.text.strip():
        raise Cos3dError('empty text prompt: give a phrase such as "red mug"')
    if not args.run.is_dir():
        raise Cos3dError(f"--run {args.run}: no such run folder (train one with cos3d train)")
    box = parse_box(args.box) if args.box is not None else None
    click = parse_click(args.click) if args.click is not None else None
    views = parse_views(args.views)
    if args.within_object is not None and args.within is not None:
        raise Cos3dError("give either --within or --within-object, not both")

    import cos3d

    engine = cos3d.load(args.run).engine
    if views:
        for v in views:
            engine.camera(v)  # unknown view → error before any work
    res = engine.query(
        args.text, image=args.image, box=box, mask=args.mask_png, scribble=args.scribble, points=args.points,
        click=click, within=args.within, within_object=args.within_object, level=args.level, refine=args.refine,
    )
    written = []
    if args.masks_out is not None:
        written = write_masks(engine, res, args.masks_out, views, args.protocol)
    if args.ply_out is not None:
        write_selection_ply(engine, res, args.ply_out)
    if args.json:
        d = res.to_dict()
        if written:
            d["masks"] = {"dir": str(args.masks_out), "protocol": args.protocol, "files": [p.name for p in written]}
        if args.ply_out is not None:
            d["ply"] = str(args.ply_out)
        json.dump(d, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _print_table(res)
        if written:
            print(f"wrote {len(written)} masks ({args.protocol}) to {args.masks_out}")
        if args.ply_out is not None:
            print(f"wrote {res.num_gaussians} Gaussians to {args.ply_out}")
    return 0
