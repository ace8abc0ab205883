"""The schema machinery: declaring a key (`setting`, `section`) and building checked,
frozen dataclasses from TOML tables (`build`), every problem reported with its file
and key. Knows no key of its own: the declarations are in settings.py."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError


def setting(default: Any, help: str, *, check: Callable[[Any], str | None] | None = None) -> Any:
    """Declare one configuration key: its default, its documentation and an optional check."""
    metadata = {"help": help, "check": check}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type[Any]) -> Any:
    """Declare a [section] of settings (a dataclass of its own)."""
    return field(default_factory=cls, metadata={"help": "", "check": None})


def check_positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def check_port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number between 0 and 65535"


def check_non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def build(
    cls: type[Any], table: Mapping[str, Any], *, file: str, prefix: str, base: Any = None
) -> Any:
    """Build dataclass `cls` from a TOML table, starting from `base` (or the defaults)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [_unknown_key(key, fields, file=file, prefix=prefix)
                for key in table if key not in fields]
    values: dict[str, Any] = {}
    for name, f in fields.items():
        current = getattr(base, name) if base is not None else None
        if name not in table:
            if current is not None:
                values[name] = current
            continue
        try:
            values[name] = _build_value(cls, f, table[name], current, file=file, prefix=prefix)
        except ConfigError as exc:  # every problem is reported, not only the first
            problems += str(exc).splitlines()
    if problems:
        raise ConfigError("\n".join(problems))
    return cls(**values)


def _build_value(cls: type[Any], f: dataclasses.Field[Any], raw: Any, current: Any, *, file: str,
                 prefix: str) -> Any:
    where = f"{prefix}{f.name}"
    kind = typing.get_type_hints(cls)[f.name]
    if dataclasses.is_dataclass(kind):
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: {where}: expected a table, got {_show(raw)}")
        return build(
            typing.cast(type[Any], kind), raw, file=file, prefix=f"{where}.", base=current
        )
    value = _convert(kind, raw, file=file, where=where)
    if isinstance(value, dict) and isinstance(current, dict):
        value = {**current, **value}
    check = f.metadata.get("check")
    problem = check(value) if check else None
    if problem:
        raise ConfigError(f"{file}: {where}: {problem}")
    return value


def _unknown_key(key: str, fields: Mapping[str, Any], *, file: str, prefix: str) -> str:
    known = ", ".join(sorted(fields))
    message = f"{file}: {prefix}{key}: unknown key (known keys: {known})"
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    return f"{message}; did you mean {close[0]}?" if close else message


def _convert(kind: Any, raw: Any, *, file: str, where: str) -> Any:
    origin = typing.get_origin(kind)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        raise ConfigError(f"{file}: {where}: expected true or false, got {_show(raw)}")
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise ConfigError(f"{file}: {where}: expected an integer, got {_show(raw)}")
    if kind is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        raise ConfigError(f"{file}: {where}: expected a number, got {_show(raw)}")
    if kind is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(f"{file}: {where}: expected a string, got {_show(raw)}")
    if kind is Path:
        if isinstance(raw, str) and raw:
            return Path(raw)
        raise ConfigError(f"{file}: {where}: expected a path, got {_show(raw)}")
    if origin is Literal:
        choices = typing.get_args(kind)
        if raw in choices:
            return raw
        shown = ", ".join(f'"{c}"' for c in choices)
        raise ConfigError(f"{file}: {where}: expected one of {shown}, got {_show(raw)}")
    if origin is tuple:
        item_kind = typing.get_args(kind)[0]
        if not isinstance(raw, list):
            raise ConfigError(f"{file}: {where}: expected a list, got {_show(raw)}")
        return tuple(_convert(item_kind, item, file=file, where=f"{where}[{i}]")
                     for i, item in enumerate(raw))
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: {where}: expected a table, got {_show(raw)}")
        value_kind = typing.get_args(kind)[1]
        return {key: _convert_union(value_kind, item, file=file, where=f"{where}.{key}")
                for key, item in raw.items()}
    if origin in (typing.Union, types.UnionType):
        return _convert_union(kind, raw, file=file, where=where)
    raise TypeError(f"no converter for {kind!r}")  # a programming error in this module


def _convert_union(kind: Any, raw: Any, *, file: str, where: str) -> Any:
    # TOML has no null: an optional key is either absent (its default, None) or a value.
    options = tuple(o for o in typing.get_args(kind) or (kind,) if o is not type(None))
    for option in options:
        try:
            return _convert(option, raw, file=file, where=where)
        except ConfigError:
            continue
    names = " or ".join(_TYPE_NAMES.get(o, str(o)) for o in options)
    raise ConfigError(f"{file}: {where}: expected {names}, got {_show(raw)}")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               Path: "a path"}


def _show(raw: Any) -> str:
    if isinstance(raw, str):
        return f'"{raw}"'
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, dict):
        return "a table"
    if isinstance(raw, list):
        return "a list"
    return repr(raw)


def documented_keys(cls: type[Any], prefix: str = "") -> list[tuple[str, str]]:
    """Every key with its help text, dotted: [("proxy.retry_budget_s", "How long ..."), ...]."""
    hints = typing.get_type_hints(cls)
    keys: list[tuple[str, str]] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += documented_keys(typing.cast(type[Any], hints[f.name]), f"{prefix}{f.name}.")
        else:
            keys.append((f"{prefix}{f.name}", f.metadata["help"]))
    return keys

