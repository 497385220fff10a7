"""The ``cos3d`` command: one subcommand per module in :mod:`cos3d.commands`.

Each command module exposes ``HELP`` (its one-line summary) and ``register(subparsers)``, which adds
its parser (flags derived from its config dataclass, :mod:`cos3d.core.config`) and sets ``func`` and
``config_cls``. Only the selected command registers its flags, so ``cos3d --help`` never imports
torch; heavy imports happen inside the command functions. User errors
(:class:`cos3d.core.errors.Cos3dError`) print one line to stderr and exit with status 2, as argparse does
for a bad flag; a :class:`cos3d.core.config.ConfigError` is printed naming the flag of its key.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys

from cos3d.core.errors import Cos3dError
from cos3d.pipeline.runlock import writer_lock

COMMANDS = ("prepare", "train", "query", "view", "serve", "eval", "export", "demo", "batch", "doctor")

INTERRUPT_HINTS = {
    "train": "finished stages are kept; continue with the same command and --resume",
    "prepare masks": "finished views are kept in the cache; run the same command again to continue",
    "prepare tabletop": "nothing was written to --out (scenes are built aside and moved in whole); run it again",
    "prepare scannet": "nothing was written to --out (scenes are built aside and moved in whole); run it again",
    "prepare images": "finished steps are kept beside --out (.<name>.sfm-work); run the same command again to continue",
    "prepare video": "finished steps are kept beside --out (.<name>.sfm-work); run the same command again to continue",
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


class _Parser(argparse.ArgumentParser):
    """argparse with cos3d's error convention: one line naming the flag and how to see the choices (argparse's
    default prints the whole usage first: sixty lines for ``cos3d train --preset bogus``). Sub-commands'
    parsers are of this class too (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str):  # noqa: ANN201 (NoReturn)
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (only the command ``argv`` names gets its full set of flags)."""
    parser = _Parser(
        prog="cos3d",
        description="Open-vocabulary 3D segmentation with Gaussian splats (COS3D collaborative fields).",
    )
    from cos3d import __version__

    parser.add_argument("--version", action="version", version=f"cos3d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_lazily(sub, {name: f"cos3d.commands.{name}" for name in COMMANDS}, list(argv or []))
    return parser


def _message(e: Cos3dError, args: argparse.Namespace) -> str:
    from cos3d.core.config import ConfigError, flag_keys

    in_file = isinstance(e, ConfigError) and e.source not in ("", "command line")
    if isinstance(e, ConfigError) and not in_file and getattr(args, "config_cls", None) is not None:
        by_key = {key: dest for dest, key in flag_keys(args.config_cls).items()}
        dest = by_key.get(e.key)
        if dest is not None:
            return ConfigError(dest, e.problem, e.source).as_flag()
    return str(e)


def _lock_early(argv: list[str], held: contextlib.ExitStack) -> None:
    """``cos3d train --out RUN``: take RUN's writer lock before the heavy imports (torch), so that a
    second training into the same folder is refused within a fraction of a second. ``train`` takes it
    again (re-entering is free), and also where ``--out`` is left to its default."""
    if _selected(argv, COMMANDS) != "train" or "-h" in argv or "--help" in argv:
        return
    out = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"), None)
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("--out=")), out)
    if out:
        held.enter_context(writer_lock(out, flag="--out", what="train"))


def entrypoint(argv: list[str] | None = None) -> int:
    """Run ``cos3d ARGV``; returns the exit status: 0, 2 for a user error (one line on stderr), 130 when
    interrupted (Ctrl-C at any moment, start-up included: one line, no traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _selected(argv, COMMANDS) or "cos3d"
    args: argparse.Namespace | None = None
    try:
        with contextlib.ExitStack() as held:
            _lock_early(argv, held)
            args = build_parser(argv).parse_args(argv)
            return int(args.func(args) or 0)
    except Cos3dError as e:
        name = args.command if args is not None else command
        print(f"cos3d {name}: error: {_message(e, args) if args is not None else e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = None
        if args is not None:
            command = args.command
            hint = INTERRUPT_HINTS.get(f"{args.command} {getattr(args, 'what', '')}".strip())
        print(f"cos3d {command}: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130


def main() -> None:
    rc = entrypoint()
    if rc == 130:
        # interrupted: the one line is printed; leave at once with 130. A normal interpreter shutdown here ran
        # finalizers of half-imported modules and once ended the process by SIGINT itself (exit -2, seen in CI);
        # a second Ctrl-C must not print a traceback either. The run-folder lock is the OS's (released on exit).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(rc)


if __name__ == "__main__":
    main()
