"""Dataclass configs as the command line, as files and as ``run.json``: one source of truth.

Every ``cos3d`` subcommand is a dataclass whose fields, each documented by the string under it, *are*
its flags. This module derives the rest from the dataclass:

- :func:`add_arguments` adds one argparse flag per field (``max_per_pixel`` → ``--max-per-pixel``;
  a nested config's fields get its name as a prefix, ``--recon.iterations``; a field whose metadata
  says ``flatten`` adds its fields without a prefix). The help text is the field's docstring.
- :func:`load_config_file` reads a YAML or JSON file (or a preset by name from the repository's
  ``cos3d/configs/`` folder (package data, so a wheel install has them)); :func:`from_dict` applies a nested dict onto a config, checking every key
  and value (an unknown key or a wrong type is one :class:`ConfigError` line naming the key).
- :func:`to_dict` writes a config as plain JSON values; ``from_dict(Cls, to_dict(cfg)) == cfg``.
- :func:`config_from_args` resolves ``defaults → --config files in order → flags given``.

Why not tyro or jsonargparse: ``cos3d`` keeps argparse's contract (a bad flag or value is one
``error:`` line and exit status 2, with nested ``prepare`` subcommands and instant ``--help``), and
the derivation it needs is this small module.

Field metadata understood here: ``cli=False`` (not a flag, not in files: e.g. a callback),
``positional=True`` (an optional positional argument, like ``cos3d query``'s prompt),
``flatten=True`` (nested config whose flags carry no prefix), ``exclude=(names...)`` (fields of a
nested config that the parent sets itself, e.g. the seed), ``aliases=("--x",)`` (extra flag names).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from cos3d.core.errors import Cos3dError, brief

__all__ = [
    "ConfigError",
    "PRESETS_DIR",
    "add_arguments",
    "apply_config",
    "config_from_args",
    "field_docs",
    "from_dict",
    "load_config_file",
    "to_dict",
]

C = TypeVar("C")

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs"
"""The repository's ``cos3d/configs/`` folder (package data, so a wheel install has them): ``--config NAME`` loads ``configs/NAME.yaml``."""


class ConfigError(Cos3dError):
    """A bad config value or key; ``key`` is the dotted field name (``recon.iterations``)."""

    def __init__(self, key: str, problem: str, source: str = ""):
        self.key, self.problem, self.source = key, problem, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}")

    def as_flag(self) -> str:
        """The message naming the command-line flag instead of the key."""
        where = f"{self.source}: " if self.source and self.source != "command line" else ""
        return f"{where}{flag_name(self.key)} {self.problem}"


def flag_name(key: str) -> str:
    """``recon.lr_means`` → ``--recon.lr-means``."""
    return "--" + key.replace("_", "-")


# --------------------------------------------------------------------------------------------------
# Reading the dataclass


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal under each field in ``cls``'s source (and its bases')."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in zip(body, body[1:]):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(inspect.cleandoc(b.value.value).split())
    return docs


def _fields(cls: type, exclude: tuple[str, ...] = ()) -> list[tuple[dataclasses.Field, Any]]:
    """``[(field, resolved type)]`` of ``cls`` that take part in flags and files."""
    hints = typing.get_type_hints(cls)
    return [
        (f, hints[f.name])
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", True) and f.init and f.name not in exclude
    ]


def _optional_arm(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; anything else → ``(tp, False)``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    base, optional = _optional_arm(tp)
    if typing.get_origin(base) is Literal:
        name = "one of " + ", ".join(map(str, typing.get_args(base)))
    elif typing.get_origin(base) is tuple:
        name = "a list"
    else:
        name = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}.get(
            base, getattr(base, "__name__", str(base))
        )
    return name + (" or null" if optional else "")


def convert(tp: Any, value: Any, key: str, source: str = "") -> Any:
    """Check and convert ``value`` (from a file, JSON or argparse) to the field type ``tp``."""
    base, optional = _optional_arm(tp)
    bad = ConfigError(key, f"expected {_type_name(tp)}, got {value!r}", source)
    if value is None:
        if optional:
            return None
        raise bad
    origin = typing.get_origin(base)
    if origin is Literal:
        if value not in typing.get_args(base):
            raise bad
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(items)
        else:
            if len(items) != len(args):
                raise ConfigError(key, f"expected {len(args)} values, got {value!r}", source)
            item_types = list(args)
        out = []
        for t, v in zip(item_types, items):
            if isinstance(v, str) and t is not str:
                v = _parse_scalar(t, v.strip(), key, source)
            out.append(convert(t, v.strip() if isinstance(v, str) else v, key, source))
        return tuple(out)
    if base is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise bad
        return value
    if base is Path:
        if not isinstance(value, (str, Path)) or str(value) == "":
            raise bad
        return Path(value)
    raise TypeError(f"config field {key}: unsupported type {tp!r}")


def _parse_scalar(tp: Any, text: str, key: str, source: str) -> Any:
    """A command-line string → a value of the scalar type ``tp`` (then checked by :func:`convert`)."""
    base, optional = _optional_arm(tp)
    if optional and text.lower() in ("none", "null"):
        return None
    try:
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise ConfigError(key, f"expected {_type_name(tp)}, got {text!r}", source) from None
    return text


# --------------------------------------------------------------------------------------------------
# Dicts and files


def to_dict(cfg: Any, _exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A config as plain JSON values (nested configs as dicts, paths as strings, tuples as lists)."""
    out: dict[str, Any] = {}
    for f, _ in _fields(type(cfg), _exclude):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v, tuple(f.metadata.get("exclude", ())))
        elif isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def from_dict(
    cls: type[C],
    data: dict[str, Any],
    *,
    base: C | None = None,
    source: str = "",
    _prefix: str = "",
    _exclude: tuple[str, ...] = (),
) -> C:
    """``base`` (default: ``cls()``'s defaults) with the values of the nested dict ``data`` applied.

    Raises:
        ConfigError: an unknown key or a value of the wrong type, naming the dotted key and ``source``.
    """
    if not isinstance(data, dict):
        raise ConfigError(_prefix.rstrip(".") or "(top level)", f"expected a mapping of keys, got {data!r}", source)
    known = {f.name: (f, tp) for f, tp in _fields(cls, _exclude)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{_prefix}{key}"
        if key not in known:
            raise ConfigError(dotted, f"unknown key; known keys: {', '.join(sorted(known))}", source)
        f, tp = known[key]
        if _is_config(tp):
            sub_base = getattr(base, key) if base is not None else None
            sub_exclude = tuple(f.metadata.get("exclude", ()))
            changes[key] = from_dict(tp, value, base=sub_base, source=source, _prefix=f"{dotted}.", _exclude=sub_exclude)
        else:
            changes[key] = convert(tp, value, dotted, source)
    if base is None:
        required = [f.name for f, _ in known.values() if _required(f) and f.name not in changes]
        if required:
            raise ConfigError(required[0], "is required", source)
        return cls(**changes)
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]


def load_config_file(spec: str | Path) -> tuple[dict[str, Any], str]:
    """``(nested dict, source name)`` of a YAML/JSON file, or of a preset name (``fast`` →
    ``cos3d/configs/fast.yaml``). A ``run.json`` yields its recorded ``config``."""
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = PRESETS_DIR / f"{spec}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.is_dir() else []
            raise Cos3dError(f"--config {spec}: no such file or preset; presets: {', '.join(names) or 'none'}")
    if not path.is_file():
        raise Cos3dError(f"--config {spec}: no such file")
    try:
        text = path.read_text()
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise Cos3dError(f"--config {path}: unreadable ({brief(e)})") from None
    except Exception as e:  # yaml.YAMLError and friends
        raise Cos3dError(f"--config {path}: not valid YAML ({brief(e)})") from None
    if data is None:
        data = {}
    if isinstance(data, dict) and path.name == "run.json" and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise Cos3dError(f"--config {path}: expected a mapping of keys at the top level")
    return data, str(path)


def apply_config(cfg: C, *specs: str | Path) -> C:
    """``cfg`` with each config file or preset applied in order: ``apply_config(TrainConfig(scene=s), "fast")``
    is what ``cos3d train --scene s --fast`` runs."""
    for spec in specs:
        data, source = load_config_file(spec)
        cfg = from_dict(type(cfg), data, base=cfg, source=source)
    return cfg


# --------------------------------------------------------------------------------------------------
# argparse


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    default: Any,
    *,
    prefix: str = "",
    exclude: tuple[str, ...] = (),
) -> None:
    """Add one flag per field of ``cls`` (recursing into nested configs); ``default`` (an instance)
    gives the defaults shown in the help. Flags default to *absent*, so that only flags given on the
    command line override config files (:func:`config_from_args`)."""
    docs = field_docs(cls)
    top = parser if isinstance(parser, argparse.ArgumentParser) else None
    for f, tp in _fields(cls, exclude):
        key = f"{prefix}{f.name}"
        value = getattr(default, f.name)
        if _is_config(tp):
            sub_exclude = tuple(f.metadata.get("exclude", ()))
            if f.metadata.get("flatten"):
                group = top.add_argument_group(docs.get(f.name, f.name)) if top is not None else parser
                add_arguments(group, tp, value, prefix=prefix, exclude=sub_exclude)
            else:
                title = f"{key} ({docs.get(f.name, '')})" if docs.get(f.name) else key
                group = top.add_argument_group(title) if top is not None else parser
                add_arguments(group, tp, value, prefix=f"{key}.", exclude=sub_exclude)
            continue
        names = [flag_name(key), *f.metadata.get("aliases", ())]
        if f.metadata.get("positional"):
            names = [key]
        doc = docs.get(f.name, "")
        shown = "none" if value is None else ",".join(map(str, value)) if isinstance(value, tuple) else value
        if "default" not in doc.lower() and shown not in ("", "none"):
            doc = f"{doc} (default: {shown})".strip()
        help_text = doc.replace("%", "%%")
        kw: dict[str, Any] = dict(dest=key, default=argparse.SUPPRESS, help=help_text)
        if f.metadata.get("positional"):
            kw = dict(nargs="?", default=argparse.SUPPRESS, help=help_text)
        base, _ = _optional_arm(tp)
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is Literal:
            kw["choices"] = list(typing.get_args(base))
            kw["type"] = type(kw["choices"][0])
        else:
            kw["type"] = _argparse_type(tp, key)
            kw["metavar"] = _metavar(base)
        parser.add_argument(*names, **kw)


def _metavar(base: Any) -> str:
    if typing.get_origin(base) is tuple:
        return "A,B,..."
    return {int: "N", float: "X", Path: "PATH", str: "TEXT"}.get(base, "VALUE")


def _argparse_type(tp: Any, key: str):  # noqa: ANN202
    def parse(text: str) -> Any:
        base, _ = _optional_arm(tp)
        try:
            if typing.get_origin(base) is tuple:
                return convert(tp, text, key)
            return convert(tp, _parse_scalar(tp, text, key, ""), key)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(e.problem) from None

    parse.__name__ = _type_name(tp)
    return parse


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """``--config FILE|PRESET`` (repeatable; later files override earlier ones; flags override files)."""
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) if PRESETS_DIR.is_dir() else []
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="a YAML/JSON config file, a run's run.json, or a preset name in cos3d/configs/ "
        f"({', '.join(names) or 'none yet'}); repeatable, later ones win; flags override them",
    )


def config_from_args(cls: type[C], args: argparse.Namespace, default: C, files: list[str] | None = None) -> C:
    """The config of parsed arguments: ``default`` → each file of ``--config`` (and ``files`` first) →
    the flags given on the command line."""
    cfg = apply_config(default, *(files or []), *(getattr(args, "config", None) or []))
    keys = flag_keys(cls)
    given: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest not in keys:
            continue
        node = given
        parts = keys[dest].split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return from_dict(cls, given, base=cfg, source="command line")


def flag_keys(cls: type, flag_prefix: str = "", key_prefix: str = "", exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """``{flag dest: nested key}`` of every leaf field (``recon.iterations`` → itself; a field of a
    ``flatten`` config, ``masks`` → ``models.masks``)."""
    out: dict[str, str] = {}
    for f, tp in _fields(cls, exclude):
        if _is_config(tp):
            sub_flag = flag_prefix if f.metadata.get("flatten") else f"{flag_prefix}{f.name}."
            out.update(flag_keys(tp, sub_flag, f"{key_prefix}{f.name}.", tuple(f.metadata.get("exclude", ()))))
        else:
            out[f"{flag_prefix}{f.name}"] = f"{key_prefix}{f.name}"
    return out
