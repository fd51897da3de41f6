"""Typed run configuration: dataclasses filled from YAML, then ``a.b=c`` command-line overrides.

Unknown keys and ill-typed values are rejected with a one-line ``UserError`` naming the key, so a
typo never silently falls back to a default. The resolved config is saved with every run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.errors import UserError

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in typing.get_args(tp):
                return None
            raise UserError(f"config key '{key}' cannot be null")
        return _coerce(value, args[0], key)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        args = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            except yaml.YAMLError:
                raise UserError(f"config key '{key}' is not a valid list: {value!r}") from None
        if not isinstance(value, (list, tuple)):
            value = [value]
        fixed = origin is tuple and Ellipsis not in args  # e.g. tuple[float, float]: a (min, max)
        if fixed and len(value) != len(args):
            raise UserError(f"config key '{key}' needs {len(args)} values, got {list(value)!r}")
        types_ = args if fixed else [args[0]] * len(value)
        items = [_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, types_))]
        return tuple(items) if origin is tuple else items
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise UserError(f"config key '{key}' must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise UserError(f"config key '{key}' must be a number, got {value!r}")
        try:
            number = float(value) if tp is float else value
            if tp is int:
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                number = int(as_float)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"config key '{key}' must be {tp.__name__}, got {value!r}") from None
        if not math.isfinite(number):  # a NaN lr or temperature would only show up as NaN loss
            raise UserError(f"config key '{key}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys raise ``UserError``."""
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known, key=str)  # YAML keys may be numbers or null
    if unknown:
        valid = ", ".join(sorted(known))
        raise UserError(f"unknown config key '{prefix}{unknown[0]}' (valid keys here: {valid})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field without default was not given
        raise UserError(f"incomplete config section '{prefix or '<root>'}': {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (lists instead of tuples) suitable for YAML and wandb."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(cfg))))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.base_lr=0.1"`` -> (["optim", "base_lr"], 0.1); values are parsed as YAML scalars."""
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise UserError(f"override '{text}' has an invalid key '{key}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` overrides onto a nested dict (copy); the dataclass check happens later."""
    data = yaml.safe_load(yaml.safe_dump(data)) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path, _children: tuple = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("defaults", None)
    if base is not None:  # single-inheritance: `defaults: other.yaml` relative to this file
        if not isinstance(base, str) or not base:
            raise UserError(f"config file {path}: 'defaults' must name one YAML file, got {base!r}")
        chain = (*_children, path.resolve())
        if (path.parent / base).resolve() in chain:
            raise UserError(f"config file {path}: 'defaults: {base}' inherits from itself")
        parent = read_yaml(path.parent / base, chain)
        data = deep_update(parent, data)
    return data


def deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """YAML file (optional) + overrides -> validated dataclass instance."""
    data = read_yaml(path) if path else {}
    return from_dict(cls, merge_overrides(data, list(overrides)))


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
