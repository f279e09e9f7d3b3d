"""One config loader for every frozen dataclass: YAML file + ``key=value`` overrides.

Unknown keys are rejected with the file (or override) and the key named, so a typo never
silently falls back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not fit its dataclass."""


@dataclasses.dataclass(frozen=True)
class _Override:
    """A ``key=value`` value, parsed once its field's type is known (so ``name=007`` stays a string)."""

    text: str


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn YAML / override values into the declared field type (tuples for sequences)."""
    if isinstance(value, _Override):
        args, origin = typing.get_args(tp), typing.get_origin(tp)
        # a string field, Optional[str], or a Literal naming the text: keep the text (tuple[str, ...] is parsed)
        if (tp is str or (origin in (typing.Union, types.UnionType) and str in args)
                or (origin is typing.Literal and value.text in args)):
            return value.text
        value = yaml.safe_load(value.text)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {args}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys raise ``ConfigError``."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain (YAML-safe) dict of a config dataclass; tuples become lists."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b=value`` overrides; values are parsed as YAML (``x=[1,2]``, ``y=true``) unless the
    field is a string."""
    data = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), _Override(raw))
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
         defaults: Mapping[str, Any] | None = None) -> T:
    """Load ``cls`` from a YAML file (optional) plus overrides, on top of ``defaults``."""
    data: dict[str, Any] = dict(to_dict(defaults) if dataclasses.is_dataclass(defaults) else (defaults or {}))
    where = "config"
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:  # missing, a folder, or a binary file
            raise ConfigError(f"{path}: cannot read config file ({getattr(e, 'strerror', None) or e})") from e
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:  # one line naming the file and the place
            mark = getattr(e, "problem_mark", None)
            where_ = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where_} ({getattr(e, 'problem', None) or e})") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = _merge(data, loaded)
        where = str(path)
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, where=where)


def _merge(base: dict, new: Mapping) -> dict:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load_run(cls: type[T], path: str | Path | None, overrides: Sequence[str] = (),
             sections: Sequence[str] = ("models",)) -> T:
    """A run config (``configs/sample_*.yaml``, ``configs/train_*.yaml``) plus overrides, where each of
    ``sections`` may be given as the name of a YAML file relative to the run file (``models: tiny.yaml``), so
    the network presets live in one place. Errors are ``ConfigError`` naming the run file."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config file ({getattr(e, 'strerror', None) or e})") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping with the sections {[f.name for f in dataclasses.fields(cls)]}")
        for name in sections:
            if isinstance(raw.get(name), str):
                part = path.parent / raw[name]
                try:
                    raw[name] = yaml.safe_load(part.read_text()) or {}
                except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                    raise ConfigError(f"{path}: {name}: cannot read {part} ({e})") from e
    try:
        return load(cls, None, overrides, defaults=raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from e
