"""Values that are not configuration themselves: a user's value converted by the type annotation of the field
it sets (settings and method arguments alike), a user's text file decoded, and where the files shipped with the
package live."""

from __future__ import annotations

import codecs
import collections.abc
import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from ltcompress.errors import LTCompressError, UsageError
from ltcompress.registry import did_you_mean


def build_params(cls: type, args: Mapping[str, Any], where: str, unknown: Callable[[str], str], invalid: str) -> Any:
    """A frozen hyper-parameter dataclass from a user's arguments (a method's, a teacher re-balancing's): a
    name it lacks (`unknown(name)`, with did-you-mean and the valid names), a wrong type (`where.name`) or a value
    its `validate()` refuses (`invalid: why`) is exit 2."""
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in args:
        if key not in fields:
            raise UsageError(f"{unknown(key)}.{did_you_mean(key, fields)} Valid: {', '.join(fields) or 'none'}.")
    hints = typing.get_type_hints(cls)
    params = cls(**{key: coerce(value, hints[key], f"{where}.{key}") for key, value in args.items()})
    if hasattr(params, "validate"):
        try:
            params.validate()
        except ValueError as exc:
            raise UsageError(f"{invalid}: {exc}") from None
    return params


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


_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_text(path: Path, error: type[LTCompressError], what: str) -> str:
    """A user's text file as Windows tools write it too: UTF-8 with or without a byte-order mark, or UTF-16 with
    one (Notepad's "Unicode"); CRLF line ends split like LF (str.splitlines). Other bytes are refused naming the
    file (`error`, with `what` it should hold), never read into a class name or a setting."""
    raw = path.read_bytes()
    codec = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise error(
            f"{path} is not UTF-8 or UTF-16 text ({exc.reason} at byte {exc.start}); save it as UTF-8: {what}"
        ) from None
