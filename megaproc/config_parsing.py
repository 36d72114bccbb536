"""Generic machinery behind :mod:`megaproc.config`: typed dataclasses from YAML mappings.

* :func:`load_yaml_recipe` reads a recipe and follows ``extends:`` (relative to its folder);
* :func:`apply_override` applies one dotted ``a.b=value`` override (value parsed as YAML);
* :func:`build_dataclass` builds a dataclass tree from a mapping, refusing unknown keys, wrong
  types and values outside a ``Literal``, naming the key (``config key 'train.seq_len' ...``);
* :func:`require` is the one way a ``validate()`` method refuses a value.

Nothing here knows megaproc's sections; this module imports nothing of megaproc but errors.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from megaproc.errors import ConfigError


def require(condition: bool, key: str, message: str, value: Any = None) -> None:
    """Raise ``ConfigError("config key 'KEY' MESSAGE, got VALUE")`` unless ``condition``."""
    if not condition:
        got = "" if value is None else f", got {value!r}"
        raise ConfigError(f"config key '{key}' {message}{got}")


def require_signs(section: str, obj: Any, positive: tuple[str, ...] = (),
                  non_negative: tuple[str, ...] = ()) -> None:
    """Refuse fields of ``obj`` (a section named ``section``) that must be > 0 or >= 0."""
    for name in positive:
        value = getattr(obj, name)
        require(value > 0, f"{section}.{name}", "must be > 0", value)
    for name in non_negative:
        value = getattr(obj, name)
        require(value >= 0, f"{section}.{name}", "must be >= 0", value)


# ----------------------------------------------------------------------------- types
def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, annotation)
    return isinstance(value, annotation)


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is Literal:
        return "one of " + str(list(typing.get_args(ann)))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(ann))
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def _coerce(value: Any, ann: Any) -> Any:
    """YAML gives ``1e-5`` as a string and ``3`` as an int; accept both where a float is meant."""
    wants_float = ann is float or (typing.get_origin(ann) in (Union, types.UnionType)
                                   and float in typing.get_args(ann))
    if wants_float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if ann is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build_dataclass(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys, types and choices."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{path}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else key
            what = "section" if not path else "key"
            raise ConfigError(f"unknown config {what} '{where}' (valid: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        where = f"{path}.{name}" if path else name
        ann = hints[name]
        if dataclasses.is_dataclass(ann):
            kwargs[name] = build_dataclass(ann, data[name], where)
            continue
        value = _coerce(data[name], ann)
        if not _type_ok(value, ann):
            if typing.get_origin(ann) is Literal:
                raise ConfigError(f"config key '{where}' must be one of "
                                  f"{list(typing.get_args(ann))}, got {value!r}")
            raise ConfigError(f"config key '{where}' has wrong type: expected {_type_name(ann)}, "
                              f"got {type(value).__name__} ({value!r})")
        kwargs[name] = value
    return cls(**kwargs)


def dotted_keys(data: dict, prefix: str = "") -> set[str]:
    """Every ``section.key`` path of a raw mapping (nested mappings of leaves)."""
    keys = set()
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        keys.add(path)
        if isinstance(value, dict) and key != "overrides":
            keys |= dotted_keys(value, path)
    return keys


# ----------------------------------------------------------------------------- recipes
def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "overrides":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_recipe(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a YAML recipe, following ``extends:`` (relative to the recipe's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"config 'extends' cycle at {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level")
    parent = data.pop("extends", None)
    if parent:
        base = load_yaml_recipe(path.parent / parent, _seen + (path.resolve(),))
        data = _deep_merge(base, data)
    return data


def apply_override(data: dict, dotted: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a raw mapping."""
    if "=" not in dotted:
        raise ConfigError(f"override '{dotted}' must look like key.sub=value")
    key, raw = dotted.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{dotted}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value
