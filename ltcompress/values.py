"""Values that are not configuration themselves: a user's value converted by the type annotation of the field
it sets (settings and method arguments alike), and where the files shipped with the package live."""

from __future__ import annotations

import collections.abc
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from ltcompress.errors import UsageError


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and where lossless, convert) a value against a field annotation; UsageError otherwise."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, where)
            except UsageError as exc:
                errors.append(exc)
        raise errors[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, Path)):
            return str(value)
    elif origin is tuple:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif origin in (collections.abc.Mapping, dict):
        if isinstance(value, Mapping):
            return dict(value)
    else:
        return value
    want = getattr(hint, "__name__", str(hint))
    raise UsageError(f"config value {where}={value!r} should be of type {want}")


def key_values(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are parsed as YAML scalars (numbers, true/false, null, lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def bundled_dir(subpackage: str) -> Path:
    """The folder of ``ltcompress.<subpackage>`` (presets, edge): inside an installed package, or a source
    checkout's presets/ and export/ (ltcompress.layout makes them the subpackages)."""
    return Path(str(resources.files(f"ltcompress.{subpackage}")))
