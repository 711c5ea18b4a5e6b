"""The machinery under the configs: field definitions with help text, YAML loading, building and dumping."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import re
import types
import typing
import warnings
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value is wrong; the message says which and how to fix it."""


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text (mutable defaults go through default_factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def require(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` (which names the field and the fix) unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def is_time_zone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def is_model_ref(ref: str) -> bool:
    """A local directory, or a hub id shaped ``org/name`` (not a path that merely doesn't exist)."""
    if Path(ref).expanduser().is_dir():
        return True
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", ref) is not None and not Path(ref).parent.exists()


def check_model_ref(name: str, ref: str) -> None:
    """A :class:`ConfigError` naming the field unless ``ref`` is a model :func:`is_model_ref` accepts."""
    if is_model_ref(ref):
        return
    raise ConfigError(f"{name}={ref!r} is neither a directory nor a hub id (org/name). "
                      "Fetch the embedded model with `stonk model fetch smollm2` or pass a path.")





# ------------------------------------------------------------------ types
#: The spellings a boolean field takes (YAML's own booleans arrive as bool already); anything else is an error.
BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
#: The section names a combined config file may have (``configs/smoke.yaml``, ``configs/pipeline.yaml``).
FILE_SECTIONS = ("data", "warmup", "train", "stage1", "stage2", "eval")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def coerce(name: str, tp: Any, value: Any) -> Any:
    """``value`` as the field type ``tp`` where the meaning is unambiguous, else a :class:`ConfigError` naming ``name``.

    YAML reads ``5e-6`` as a string and ``2.0`` as a float, and a quoted ``"false"`` is a non-empty (true)
    string: so numbers written as strings and whole floats for int fields are converted, booleans take only
    true/false, yes/no or on/off, and a string where a list belongs is an error that shows the list form.
    """
    if value is None:
        if allows_none(tp):
            return None
        raise ConfigError(f"{name}: needs a value, not null (empty).")
    base = base_type(tp)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[value.strip().lower()]
        raise ConfigError(f"{name}={value!r}: write true or false (yes/no and on/off also work).")
    if base is int:
        number = _number(value)
        if number is None or not math.isfinite(number) or number != int(number):
            raise ConfigError(f"{name}={value!r}: must be a whole number, such as 4.")
        return int(number)
    if base is float:
        number = _number(value)
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{name}={value!r}: must be a finite number, such as 0.5 or 5e-6.")
        return float(number)
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, datetime.date):  # YAML reads 2010-01-04 as a date
            return value.isoformat()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}={value!r}: must be a text value.")
    if base is list:
        (item,) = typing.get_args(base_type_arg(tp)) or (Any,)
        if isinstance(value, str):
            raise ConfigError(f"{name}={value!r}: must be a list; write [{value}] in YAML, or the values after the "
                              f"flag (--{name} {value}).")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r}: must be a list such as [a, b].")
        return [coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value)] if item is not Any else list(value)
    if base is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r}: must be a mapping such as {{key: value}}.")
        args = typing.get_args(base_type_arg(tp))
        if len(args) != 2:
            return dict(value)
        return {coerce(f"{name} key", args[0], k): coerce(f"{name}.{k}", args[1], v) for k, v in value.items()}
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def base_type_arg(tp: Any) -> Any:
    """``list[str] | None`` -> ``list[str]`` (the generic alias, with its arguments)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def coerce_fields(cfg: Any) -> None:
    """Coerce every field of the dataclass instance ``cfg`` to its declared type (:func:`coerce`), in place.

    Each config's ``__post_init__`` calls this first, so YAML, flags, notebook parameters and code are checked
    alike, before any validation reads a value and before any model loads.
    """
    for name, tp in field_types(type(cfg)).items():
        setattr(cfg, name, coerce(name, tp, getattr(cfg, name)))


# ------------------------------------------------------------------ load / dump


def base_type(tp: Any) -> Any:
    """``int | None`` -> int, ``list[str]`` -> list."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return base_type(args[0])
    return origin or tp


#: The top-level key by which a config file names the file it extends (:func:`load_yaml`).
BASE_KEY = "base"


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a mapping, with its ``base:`` file (if any) merged underneath.

    ``base: learning_real_small.yaml`` (a path relative to the including file) lets a variant state only
    what it changes: the variant's sections are laid over the base's one key at a time, so
    ``warmup: {direction_source: momentum}`` keeps every other warm-up key of the base. A value is
    replaced whole (``reward_weights`` included), never merged deeper. Bases may chain; a cycle is an error.
    """
    p = Path(path)
    if not p.is_file():
        where = f" (the base: of {_seen[-1]})" if _seen else ""
        raise ConfigError(f"config file {p}{where} does not exist.")
    if p.resolve() in _seen:
        chain = " -> ".join(str(s) for s in (*_seen, p.resolve()))
        raise ConfigError(f"{p}: base: files include each other ({chain}); remove one of the base: keys.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e}).") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of field: value at the top level.")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{p}: base: must be the path of another config file, relative to {p.parent}; got {base!r}.")
    merged = load_yaml(p.parent / base, (*_seen, p.resolve()))
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def drop_retired(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` without the keys of fields ``cls`` has retired (its ``RETIRED``: name -> (old default, why)).

    A retired key holding its old default (an old run's ``config.yaml``) is dropped with a warning: the run
    behaves as it did. Any other value asked for what no longer exists: a :class:`ConfigError` that says so.
    ``where`` names the file (or whatever the values came from) in both.
    """
    retired = getattr(cls, "RETIRED", {})
    out = dict(values)
    for name in sorted(set(values) & set(retired)):
        old, why = retired[name]
        value = out.pop(name)
        if _same_value(name, value, old):
            warnings.warn(f"{where}: {name}: {value!r} is ignored: {cls.__name__} no longer has this field ({why}); "
                          f"delete the key.", stacklevel=3)
            continue
        raise ConfigError(f"{where}: {name}={value!r}: {cls.__name__} no longer has this field, it was removed "
                          f"({why}). Delete the key {name}; runs now behave as with {name}={old!r}.")
    return out


def _same_value(name: str, value: Any, old: Any) -> bool:
    """``value`` means ``old`` (read as the old field's type: ``'no'`` is False, as it was for the field)."""
    if old is None:
        return value is None
    try:
        return coerce(name, type(old), value) == old
    except ConfigError:
        return False


def build(cls: type, yaml_path: str | Path | None = None, section: str | None = None, **overrides: Any):
    """Make a config from an optional YAML file (optionally one section of it) plus overrides.

    Unknown keys are an error that lists the valid ones, so a typo never passes silently; keys of retired
    fields are dropped or refused by :func:`drop_retired`.
    """
    values: dict[str, Any] = {}
    if yaml_path:
        data = load_yaml(yaml_path)
        if section is not None:
            stray = sorted(set(data) - set(FILE_SECTIONS))
            if stray:
                raise ConfigError(f"{yaml_path}: key(s) {stray} sit beside the {section}: section and would be ignored; "
                                  f"move them into a section ({', '.join(s for s in FILE_SECTIONS if s in data)}).")
            data = data.get(section, {}) or {}
        values.update(drop_retired(cls, data, str(yaml_path)))
    values.update(drop_retired(cls, {k: v for k, v in overrides.items() if v is not None}, "the given values"))
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        where = f" in {yaml_path}" if yaml_path else ""
        raise ConfigError(f"unknown {cls.__name__} field(s) {sorted(unknown)}{where}; valid: {', '.join(sorted(names))}.")
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
