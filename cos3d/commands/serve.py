"""``cos3d serve``: keep trained runs loaded and answer queries over HTTP/JSON.

The flags are :class:`cos3d.serve.config.ServeConfig`'s fields. Examples::

    cos3d serve --run runs/tabletop                         # http://127.0.0.1:8765, /docs, /openapi.json
    cos3d serve --run runs/a --run runs/b --max-loaded 1     # two runs, one loaded at a time
    cos3d serve --run runs/                                  # every run in a folder (and runs added later)
    cos3d serve --run RUN --host 0.0.0.0 --token SECRET      # reachable from other machines: a token is required
    cos3d serve --run RUN --executor ray --replicas 2        # Ray Serve: one deployment per run

While it runs, ``cos3d query ... --run RUN`` and ``cos3d.serve.client.load(RUN)`` answer through it.
"""

from __future__ import annotations

import argparse

HELP = "keep runs loaded and answer queries over HTTP/JSON (cos3d query and cos3d.serve.client use it)"


class _AppendRuns(argparse.Action):
    """``--run A --run B`` and ``--run A,B`` both add to the list."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001, ANN204
        cur = list(getattr(namespace, self.dest, None) or [])
        cur += [v.strip() for v in str(values).split(",") if v.strip()]
        setattr(namespace, self.dest, cur)


def register(sub: argparse._SubParsersAction) -> None:
    from cos3d.core.config import add_arguments, add_config_flag, field_docs
    from cos3d.serve.config import ServeConfig

    p = sub.add_parser(
        "serve",
        help=HELP,
        description=(
            "Serve trained runs over HTTP/JSON (FastAPI on uvicorn): text, image, click and part queries, 2D masks "
            "(PNG), pick/place targets, exports; the schema is at /openapi.json. Loopback only unless --host says "
            "otherwise (then --token is required). Writes a discovery file so that `cos3d query --run RUN` and "
            "cos3d.serve.client use this server. Blocks until Ctrl-C."
        ),
    )
    add_config_flag(p)
    add_arguments(p, ServeConfig, ServeConfig(), exclude=("run",))
    p.add_argument("--run", dest="run", action=_AppendRuns, default=argparse.SUPPRESS, metavar="RUN",
                   help=field_docs(ServeConfig)["run"])
    p.set_defaults(func=run, config_cls=ServeConfig)


def run(args: argparse.Namespace) -> int:
    from cos3d.core.config import config_from_args
    from cos3d.serve.config import ServeConfig
    from cos3d.serve.server import serve

    cfg = config_from_args(ServeConfig, args, ServeConfig())
    serve(cfg, log=lambda m: print(m, flush=True))
    return 0
