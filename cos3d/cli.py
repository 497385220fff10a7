"""The ``cos3d`` command: one subcommand per module in :mod:`cos3d.commands`.

Each command module exposes ``HELP`` (its one-line summary) and ``register(subparsers)``, which adds
its parser (flags derived from its config dataclass, :mod:`cos3d.config`) and sets ``func`` and
``config_cls``. Only the selected command registers its flags, so ``cos3d --help`` never imports
torch; heavy imports happen inside the command functions. User errors
(:class:`cos3d.errors.Cos3dError`) print one line to stderr and exit with status 2, as argparse does
for a bad flag; a :class:`cos3d.config.ConfigError` is printed naming the flag of its key.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cos3d.errors import Cos3dError

COMMANDS = ("prepare", "train", "query", "view", "serve", "eval", "export", "demo", "batch", "doctor")

INTERRUPT_HINTS = {
    "train": "finished stages are kept; continue with the same command and --resume",
    "prepare masks": "finished views are kept in the cache; run the same command again to continue",
    "prepare tabletop": "nothing was written to --out (scenes are built aside and moved in whole); run it again",
    "prepare scannet": "nothing was written to --out (scenes are built aside and moved in whole); run it again",
    "demo": "finished steps are kept; continue with `cos3d demo --resume`",
    "batch train": "each scene's finished stages are kept; run the same command again with --resume",
    "batch eval": "finished scenes' results are kept; run the same command again",
}
"""What an interrupted command keeps and how to continue, per command (``prepare`` per subcommand)."""


def _selected(argv: list[str], choices: tuple[str, ...]) -> str | None:
    """The first argument that names one of ``choices`` (the subcommand), if any."""
    for a in argv:
        if a in choices:
            return a
        if not a.startswith("-"):
            return None
    return None


def register_lazily(sub: argparse._SubParsersAction, modules: dict[str, str], argv: list[str]) -> None:
    """Register the selected one of ``{name: module}`` in full, the others by their help line only."""
    chosen = _selected(argv, tuple(modules))
    for name, modname in modules.items():
        mod = importlib.import_module(modname)
        if name == chosen:
            mod.register(sub)
        else:
            sub.add_parser(name, help=mod.HELP)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (only the command ``argv`` names gets its full set of flags)."""
    parser = argparse.ArgumentParser(
        prog="cos3d",
        description="Open-vocabulary 3D segmentation with Gaussian splats (COS3D collaborative fields).",
    )
    from cos3d import __version__

    parser.add_argument("--version", action="version", version=f"cos3d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_lazily(sub, {name: f"cos3d.commands.{name}" for name in COMMANDS}, list(argv or []))
    return parser


def _message(e: Cos3dError, args: argparse.Namespace) -> str:
    from cos3d.config import ConfigError, flag_keys

    in_file = isinstance(e, ConfigError) and e.source not in ("", "command line")
    if isinstance(e, ConfigError) and not in_file and getattr(args, "config_cls", None) is not None:
        by_key = {key: dest for dest, key in flag_keys(args.config_cls).items()}
        dest = by_key.get(e.key)
        if dest is not None:
            return ConfigError(dest, e.problem, e.source).as_flag()
    return str(e)


def entrypoint(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except Cos3dError as e:
        print(f"cos3d {args.command}: error: {_message(e, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = INTERRUPT_HINTS.get(f"{args.command} {getattr(args, 'what', '')}".strip())
        print(f"cos3d {args.command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130
    return int(rc or 0)


def main() -> None:
    sys.exit(entrypoint())


if __name__ == "__main__":
    main()
