"""What an export says about itself, read and checked field by field before any data loads: a bare .onnx file's
ltcompress metadata, or the report.json beside a run's or a bundle's models. A model without the metadata is a
usage error (verify its run or bundle instead, exit 2); a field that is there but damaged (not JSON, the wrong
shape or type) is a damaged model file, exit 4, naming the field and the file."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

from ltcompress.config import DataConfig
from ltcompress.errors import UsageError, VerificationError
from ltcompress.values import coerce

FIELDS = {  # the recorded facts: report.json path -> the metadata key that carries it in a bare .onnx
    "config.data": "ltcompress.data",
    "data.input": "ltcompress.input",
    "data.class_names": "ltcompress.class_names",
    "data.held_out": "ltcompress.held_out",
}
NEEDED = ("config.data", "data.input", "data.class_names")
_SPEC_NUMBERS = {"size": int, "channels": int, "source_size": int, "crop_pct": float}
_SPEC_CHOICES = {"source_mode": ("L", "RGB"), "geometry": ("pad", "crop")}


def from_metadata(path: Path, props: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The stage and the report-like facts a bare .onnx carries in its metadata_props, checked."""
    missing = [FIELDS[k] for k in NEEDED if FIELDS[k] not in props]
    if missing:
        raise UsageError(
            f"{path} carries no {', '.join(missing)} metadata, so it cannot say what data it was made "
            f"for; verify its run directory or bundle instead (models exported by older ltcompress "
            f"versions lack it)"
        )
    values = {name: _json(path, key, props.get(key, "null")) for name, key in FIELDS.items()}
    recorded = {
        "config": {"data": values["config.data"]},
        "data": {k.split(".")[1]: values[k] for k in FIELDS if k.startswith("data.")},
        "stages": {},
    }
    check(recorded, lambda name: f"{path}: its metadata {FIELDS[name]}")
    stage = "int8" if props.get("ltcompress.stage", "fp32").startswith("int8") else "fp32"
    return stage, recorded


def _json(path: Path, key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise VerificationError(f"{path}: its metadata {key} is not valid JSON ({exc}); export it again") from None


def check(recorded: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """Every recorded fact verify reads, checked before it loads data; `where(field)` names the field's place."""
    for name, problem in (
        ("config.data", _data_problem(recorded["config"].get("data"))),
        ("data.input", _input_problem(recorded["data"].get("input"))),
        ("data.class_names", _names_problem(recorded["data"].get("class_names"))),
        ("data.held_out", _held_out_problem(recorded["data"].get("held_out"))),
        ("stages", _stages_problem(recorded.get("stages"))),
    ):
        if problem:
            raise VerificationError(f"{where(name)} is damaged: {problem}; export it again, or copy it again")


def _data_problem(value: Any) -> str:
    if not isinstance(value, dict):
        return f"expected the data settings as a mapping, got {type(value).__name__}"
    hints = typing.get_type_hints(DataConfig)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        return f"unknown data settings {', '.join(map(str, unknown))}"
    if not isinstance(value.get("dataset"), str):
        return "no dataset name"
    try:
        for key, item in value.items():
            coerce(item, hints[key], f"data.{key}")
    except UsageError as exc:
        return str(exc)
    return ""


def _input_problem(value: Any) -> str:
    from ltcompress.data import InputSpec

    if not isinstance(value, dict):
        return f"expected the input spec as a mapping, got {type(value).__name__}"
    fields = {f.name for f in dataclasses.fields(InputSpec)}
    required = {f.name for f in dataclasses.fields(InputSpec) if f.default is dataclasses.MISSING}
    if not required <= set(value) <= fields:
        return f"expected the keys {sorted(fields)} (at least {sorted(required)}), got {sorted(value)}"
    for key, kind in _SPEC_NUMBERS.items():
        number = value.get(key, 1)
        if (
            isinstance(number, bool)
            or not isinstance(number, (int, float))
            or number <= 0
            or kind is int
            and number != int(number)
        ):
            return f"{key} {number!r} is not a positive {kind.__name__}"
    for key, choices in _SPEC_CHOICES.items():
        if key in value and value[key] not in choices:
            return f"{key} {value[key]!r} is none of {', '.join(choices)}"
    for key in ("mean", "std"):
        seq = value[key]
        if not (isinstance(seq, list) and len(seq) == value["channels"] and all(_number(v) for v in seq)):
            return f"{key} {seq!r} is not {value['channels']} number(s), one per channel"
    if not all(v > 0 for v in value["std"]):
        return "std has a value that is not positive"
    return ""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _names_problem(value: Any) -> str:
    if not (isinstance(value, list) and value and all(isinstance(n, str) and n.strip() for n in value)):
        return "expected a non-empty list of class names"
    if len(set(value)) != len(value):
        return "a class name repeats"
    return ""


def _stages_problem(value: Any) -> str:
    from ltcompress.metrics import SUMMARY_KEYS

    if not isinstance(value, dict):
        return "expected a mapping of stage -> metrics"
    for stage, metrics in value.items():
        keys = (*SUMMARY_KEYS, "worst_class", "per_class")
        if not (isinstance(metrics, dict) and all(k in metrics for k in keys)):
            return f"stage {stage!r} lacks its metrics ({', '.join(keys)})"
        if not isinstance(metrics["per_class"], dict):
            return f"stage {stage!r}: per_class is not a mapping"
    return ""


def _held_out_problem(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, dict):
        return f"expected a mapping or null, got {type(value).__name__}"
    share, seed = value.get("share"), value.get("seed")
    if share is not None and not (_number(share) and 0 < share < 1):
        return f"share {share!r} is not a fraction between 0 and 1"
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool)):
        return f"seed {seed!r} is not an integer"
    return ""
