"""Typed config dataclasses to and from plain data (YAML / JSON mappings), field by field.

Configs are data: values are checked against the dataclasses' type hints, and unknown keys and
values of the wrong type are errors (:class:`ConfigError`) that name the key. A key that was
renamed (listed in the dataclass's ``RENAMED_KEYS``, old name -> new name) is an error that names
both. Also the deep merge of overrides and the ``section.key=value`` assignments of the command lines.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A config file or mapping that does not fit the dataclass tree."""


def to_dict(obj: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON-able data (without non-YAML fields)."""
    out = {}
    for f in dataclasses.fields(obj):
        if not f.metadata.get("yaml", True):
            continue
        value = getattr(obj, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Validate ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} ({value!r})")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return value
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}
    prefix = f"{where}." if where else ""
    renamed = sorted(set(data) & set(_renamed_keys(cls)))
    if renamed:
        raise ConfigError("; ".join(f"config key {prefix}{old} was renamed {prefix}{_renamed_keys(cls)[old]}" for old in renamed) + ": use the new name")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value or {}, key)
        else:
            kwargs[name] = _check_type(value, hint, key)
    return cls(**kwargs)


def _renamed_keys(cls: type) -> dict[str, str]:
    """Old key -> new key of a config dataclass (its ``RENAMED_KEYS``; none when it has none)."""
    return getattr(cls, "RENAMED_KEYS", {})


def with_current_keys(cls: type, data: Any) -> Any:
    """A copy of ``data`` (plain data of the dataclass ``cls``'s tree) with renamed keys under their
    new names. For records an earlier version wrote (a run's recorded config), which are compared
    with today's config, not loaded as configs."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return copy.deepcopy(data)
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _renamed_keys(cls).get(key, key)
        out[name] = with_current_keys(hints.get(name), value)
    return out


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "model_cfg":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "mase.mode=fc_clip"]`` -> nested overrides for :func:`load_config`.

    Values are read as YAML scalars or flow collections (``[200, 300]``), i.e. data only.

    Raises:
        ConfigError: an assignment without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"bad override {item!r}: expected section.key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"bad override {item!r}: {exc}") from exc
        if isinstance(parsed, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; numbers are meant.
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"bad override {item!r}: {part} is set to a value and a section")
        node[parts[-1]] = parsed
    return out
