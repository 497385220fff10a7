"""The ``cos3d`` command: one subcommand per module in :mod:`cos3d.commands`.

Each command module exposes ``register(subparsers)`` which adds its parser and sets ``func``.
Heavy imports (torch, pybullet, models) happen inside the command functions so that ``--help`` and
argument errors are instant. User errors (:class:`cos3d.errors.Cos3dError`) print one line to stderr
and exit with status 2, as argparse does for a bad flag.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from cos3d.errors import Cos3dError

COMMANDS = ("prepare", "train", "query", "view", "eval", "export", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cos3d",
        description="Open-vocabulary 3D segmentation with Gaussian splats (COS3D collaborative fields).",
    )
    from cos3d import __version__

    parser.add_argument("--version", action="version", version=f"cos3d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        modname = f"cos3d.commands.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(sub)
    return parser


def entrypoint(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except Cos3dError as e:
        print(f"cos3d {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cos3d {args.command}: interrupted; finished stages are kept, re-run with --resume", file=sys.stderr)
        return 130
    return int(rc or 0)


def main() -> None:
    sys.exit(entrypoint())


if __name__ == "__main__":
    main()
