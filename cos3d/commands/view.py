"""``cos3d view``: browse a trained run in a web viewer (viser) and query it from the page.

The flags are :class:`cos3d.viewer.server.ViewConfig`'s fields (:mod:`cos3d.core.config`). Examples::

    cos3d view --run runs/tabletop                       # then open http://localhost:8080
    cos3d view --run RUN --port 8090 --host 0.0.0.0      # reachable from other machines (warns)
    cos3d view --run RUN --max-splats 100000             # lighter for a slow browser
"""

from __future__ import annotations

import argparse

HELP = "browse a trained run in a web viewer and query it"


def register(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    from cos3d.core.config import add_arguments, add_config_flag
    from cos3d.viewer.server import ViewConfig

    p = sub.add_parser(
        "view",
        help=HELP,
        description=(
            "Serve a trained run in a viser web viewer: splats, cameras, text / part / image prompts, click "
            "to select, colour modes, the answer's objects and export. Loopback only unless --host says "
            "otherwise. Blocks until Ctrl-C."
        ),
    )
    add_config_flag(p)
    add_arguments(p, ViewConfig, ViewConfig(run=Path("")))
    p.set_defaults(func=run, config_cls=ViewConfig)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cos3d.core.config import config_from_args
    from cos3d.viewer.server import ViewConfig, check_port_free, serve

    cfg = config_from_args(ViewConfig, args, ViewConfig(run=Path("")))
    cfg.validate()
    check_port_free(cfg.host, cfg.port)  # fail before the (slow) load

    import cos3d

    trained = cos3d.load(cfg.run, device=cfg.device)
    serve(trained, host=cfg.host, port=cfg.port, max_splats=cfg.max_splats, show_cameras=cfg.cameras,
          export_dir=cfg.export_dir)
    return 0
