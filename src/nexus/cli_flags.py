"""Command-line flags generated from a config dataclass: one source for a flag's name, type,
choices, help and default -- the field.

A field ``micro_batch_size: int = field(default=4, metadata={"help": ..., "flag": "--batch-size"})``
becomes ``--batch-size N`` (the name is ``--micro-batch-size`` without ``"flag"``); ``Literal``
fields get ``choices``, ``bool`` fields ``--x / --no-x``, ``list[str]`` fields take one or more
values. Fields of other types (mappings, lists of lists) are set with ``--set`` only.

Precedence, the same in every command (``nexus run``, ``profile``, ``benchmark`` and ``index``
included): the field's default < the YAML config file < a flag < ``--set KEY=VALUE``. A flag left
out changes nothing; ``--set``, the one spelling that reaches every field (nested ones too), has
the last word.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from nexus.config import deep_merge, parse_overrides


def _flag_type(tp: Any) -> tuple[str, Any] | None:
    """(kind, detail) of a field annotation: scalar/choice/bool/list, or None (not a flag)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(tp) if t is not type(None)]
        if options == [int, float]:  # a count or a share (student depths): 12 or 0.5
            return "scalar", int_or_float
        if len(options) != 1:
            return None
        tp = options[0]
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "choice", typing.get_args(tp)
    if tp is bool:
        return "bool", None
    if tp in (int, float, str):
        return "scalar", tp
    if origin is list and typing.get_args(tp) in ((str,), (int,), (float,)):
        return "list", typing.get_args(tp)[0]
    return None


def int_or_float(text: str) -> int | float:
    """``12`` -> 12, ``0.5`` -> 0.5: the one flag type whose value keeps its kind."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _groups(cls: type) -> list[tuple[type, list[dataclasses.Field]]]:
    """The fields of ``cls`` by the dataclass that introduced them, ``cls``'s own first."""
    owner: dict[str, type] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            for f in dataclasses.fields(klass):
                owner.setdefault(f.name, klass)
    fields = dataclasses.fields(cls)
    classes = [k for k in cls.__mro__ if k in set(owner.values())]
    return [(k, [f for f in fields if owner[f.name] is k]) for k in classes]


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per flag-able field of the dataclass ``cls`` (see the module docstring),
    grouped by the dataclass that defines the field (the phase's own fields first)."""
    hints = typing.get_type_hints(cls)
    for klass, fields in _groups(cls):
        group = parser.add_argument_group(f"{klass.__name__} fields")
        for f in fields:
            _add_field_flag(group, f, hints[f.name])


def _add_field_flag(group: Any, f: dataclasses.Field, tp: Any) -> None:
    kind = _flag_type(tp)
    if kind is None:
        return
    text = f.metadata.get("help", "")
    default = _default(f)
    if default is not None and "default" not in text:
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        text = f"{text} (default: {shown})"
    options: dict[str, Any] = {"dest": f.name, "default": None, "help": text.replace("%", "%%")}
    if kind[0] == "bool":
        options["action"] = argparse.BooleanOptionalAction
    else:
        options["metavar"] = flag_name(f).lstrip("-").replace("-", "_").upper()
    if kind[0] == "choice":
        options.update(choices=kind[1], metavar=None)
    elif kind[0] == "list":
        options.update(nargs="+", type=kind[1])
    elif kind[0] == "scalar":
        options["type"] = kind[1]
    group.add_argument(flag_name(f), **options)


def add_set_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (value parsed as YAML); wins over the file and the flags",
    )


def config_overrides(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags given on the command line, then the ``--set`` values over them."""
    flags = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    return deep_merge(flags, parse_overrides(args.set))
