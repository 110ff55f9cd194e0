"""Typed configuration: dataclasses loaded from YAML, overridden from the CLI, saved beside outputs.

Each phase defines its own dataclass (fields documented with ``field(metadata={"help": ...})``);
this module only knows how to fill one strictly from a mapping:

* an unknown key is an error that names the key and the file (typos never pass silently);
* values are checked against the field types (``int`` accepts ``3``, not ``"3"``; ``float``
  accepts ints);
* nested dataclasses are filled recursively;
* ``--set a.b=value`` overrides parse ``value`` as YAML, so ``3``, ``1e-4``, ``true`` and
  ``[1, 2]`` mean what they look like.

The resolved config is written as YAML next to every output, and its hash marks which config
produced an artifact (phase markers, checkpoints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nexus.errors import NexusError
from nexus.utils import atomic_write_text

T = TypeVar("T")


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, bad syntax or a non-mapping is a NexusError.

    ``extends: FILE`` (a path relative to this file, e.g. ``default.yaml``) starts from that
    file's mapping and merges this one over it, section by section, so a preset states only
    what it changes."""
    path = Path(path)
    if not path.is_file():
        raise NexusError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise NexusError(f"malformed YAML in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NexusError(
            f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}"
        )
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise NexusError(f"{path}: 'extends' must name a YAML file, not {base!r}")
    parent = (path.parent / base).resolve()
    if parent in _seen or parent == path.resolve():
        raise NexusError(f"{path}: 'extends: {base}' makes a cycle")
    return deep_merge(read_yaml(parent, (*_seen, path.resolve())), data)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and lightly convert) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except NexusError as exc:
                errors.append(str(exc))
        raise NexusError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise NexusError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise NexusError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise NexusError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise NexusError(f"{where}: expected a mapping, got {value!r}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise NexusError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise NexusError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise NexusError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise NexusError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise NexusError(
            f"unknown config key '{unknown[0]}' in {where} (valid keys: {', '.join(sorted(fields))})"
        )
    kwargs = {name: _coerce(value, hints[name], f"{where}: '{name}'") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ checks raise ValueError
        raise NexusError(f"invalid config in {where}: {exc}") from None


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<config>") -> T:
    """Build the dataclass ``cls`` from ``data``, strictly (see the module docstring)."""
    return _from_dict(cls, data, source)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``["lr=1e-4", "data.seq_len=256"]`` into a nested mapping, values parsed as YAML."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise NexusError(f"override {pair!r} must look like key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return result


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    *,
    section: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Load ``cls`` from a YAML file (optionally one top-level ``section`` of it), then overrides.

    ``overrides`` holds values given on the command line; keys whose value is ``None`` are
    ignored so unset flags do not clobber the file.
    """
    data: dict[str, Any] = {}
    where = "command-line options"
    if path is not None:
        raw = read_yaml(path)
        where = str(path)
        if section is not None:
            raw = raw.get(section) or {}
            where = f"{path} (section '{section}')"
            if not isinstance(raw, dict):
                raise NexusError(f"section '{section}' of {path} must be a mapping")
        data = raw
    clean = {k: v for k, v in (overrides or {}).items() if v is not None}
    # A mapping field (e.g. domain_weights) merges over its default, as a nested section does:
    # `--set domain_weights.chat=2` changes one weight and keeps the others.
    hints = typing.get_type_hints(cls)
    defaults = {
        f.name: f.default_factory()
        for f in dataclasses.fields(cls)
        if f.default_factory is not dataclasses.MISSING and typing.get_origin(hints[f.name]) is dict
    }
    return from_dict(cls, deep_merge(deep_merge(defaults, data), clean), where)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serializable mapping of a config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config's values (key order does not matter)."""
    blob = json.dumps(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_resolved(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to an output (atomically) and return its path."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
