"""``cos3d view``: browse a trained run in a web viewer (viser) and query it from a panel.

Examples::

    cos3d view --run runs/tabletop                       # then open http://localhost:8080
    cos3d view --run RUN --port 8090 --host 0.0.0.0      # reachable from other machines
    cos3d view --run RUN --max-splats 100000             # lighter for a slow browser
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "browse a trained run in a web viewer and query it"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "view",
        help=HELP,
        description="Serve a trained run in a viser web viewer: splats, cameras, a query panel. Blocks until Ctrl-C.",
    )
    p.add_argument("--run", required=True, type=Path, help="run folder made by cos3d train")
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default: 8080; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 for other machines)")
    p.add_argument("--max-splats", type=int, default=300_000, metavar="N",
                   help="show at most N Gaussians, the most opaque ones (default: 300000)")
    p.add_argument("--no-cameras", action="store_true", help="start with the camera frustums hidden")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cos3d.errors import Cos3dError
    from cos3d.viewer import check_port_free, serve

    if args.max_splats <= 0:
        raise Cos3dError(f"--max-splats {args.max_splats}: must be a positive number of Gaussians")
    check_port_free(args.host, args.port)  # fail before the (slow) load

    import cos3d

    trained = cos3d.load(args.run)
    serve(trained, host=args.host, port=args.port, max_splats=args.max_splats, show_cameras=not args.no_cameras)
    return 0
