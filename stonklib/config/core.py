"""The machinery under the configs: field definitions with help text, YAML loading, building and dumping."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
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


# ------------------------------------------------------------------ load / dump
def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def base_type(tp: Any) -> Any:
    """``int | None`` -> int, ``list[str]`` -> list."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return base_type(args[0])
    return origin or tp


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e}).") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of field: value at the top level.")
    return data


def build(cls: type, yaml_path: str | Path | None = None, section: str | None = None, **overrides: Any):
    """Make a config from an optional YAML file (optionally one section of it) plus overrides.

    Unknown keys are an error that lists the valid ones, so a typo never passes silently.
    """
    values: dict[str, Any] = {}
    if yaml_path:
        data = load_yaml(yaml_path)
        if section is not None:
            data = data.get(section, {}) or {}
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
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
