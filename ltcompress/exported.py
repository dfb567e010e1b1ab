"""Exports that already exist. verify_export(), behind `ltcompress verify`, measures one again without
training (a run directory, an edge bundle or a bare .onnx file that carries its metadata): the ONNX models under
ONNX Runtime on a dataset's test split, per class and per shot group, with gates. (`verify.py` is the pipeline's
own verify stage, which this reuses.)

Use it when the data moved on (a new test set), when a gate changed, or to check that a bundle copied to
another machine still scores what its report says.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ltcompress import config as config_mod
from ltcompress.config import CompressConfig
from ltcompress.errors import UsageError, VerificationError
from ltcompress.results import Judged

if TYPE_CHECKING:  # imported where used: `import ltcompress` stays light (the CLI's --help)
    from ltcompress.data import LTData
    from ltcompress.gates import Gate
    from ltcompress.metrics import Flips, Groups, StageMetrics
    from ltcompress.results import Verdict

log = logging.getLogger("ltcompress")
# (fp32 file, int8 file) in a run directory and in a bundle
LAYOUTS = {"run": ("student.onnx", "student.int8.onnx"), "bundle": ("model.onnx", "model.int8.onnx")}


@dataclass(frozen=True)
class VerifyResult(Judged):
    """What verify_export() measured; `passed` is False when a gate failed."""

    path: Path
    layout: str  # run, bundle or model
    models: Mapping[str, Path]  # fp32 (and int8) -> file
    data: Mapping[str, Any]  # the data settings measured with (JSON)
    verdict: Verdict
    metrics: Mapping[str, StageMetrics]  # fp32 (and int8) -> metrics
    flips: Mapping[str, Flips]
    recorded: Mapping[str, StageMetrics] = field(repr=False)  # the same stages from the export's own report
    report_matches_model: bool | None = None  # the models carry this report's hash (None: either predates it)

    def to_dict(self) -> dict[str, Any]:
        """All of it as JSON (--json, --output)."""
        return {
            "path": str(self.path.resolve()),
            "layout": self.layout,
            "models": {k: str(p) for k, p in self.models.items()},
            "data": dict(self.data),
            "passed": self.passed,
            "gates": [g.to_dict() for g in self.gates],
            "failed_gates": [g.to_dict() for g in self.failed_gates],
            "stages": {k: m.to_dict() for k, m in self.metrics.items()},
            "flips": {k: f.to_dict() for k, f in self.flips.items()},
            "recorded_stages": {k: m.to_dict() for k, m in self.recorded.items()},
            "report_matches_model": self.report_matches_model,
        }


Headers = dict[str, tuple[list[int], dict[str, str]]]  # stage -> (input dims, metadata_props)


def locate(path: str | Path) -> tuple[str, dict[str, Path], dict[str, Any], Headers]:
    """(layout, {stage: model file}, recorded report, each model's header) for a run directory, a bundle, or one
    .onnx file (whose metadata stands in for the report). Each model is read once, here, so a damaged one is
    named before minutes of data loading."""
    from ltcompress.inference import onnx_header
    from ltcompress.recorded import check, from_metadata

    folder = Path(path)
    if folder.is_file():
        header = onnx_header(folder)
        stage, recorded = from_metadata(folder, header[1])  # checked field by field
        return "model", {stage: folder}, recorded, {stage: header}
    for layout, (fp32, int8) in LAYOUTS.items():
        if (folder / fp32).is_file():
            models = {"fp32": folder / fp32, **({"int8": folder / int8} if (folder / int8).is_file() else {})}
            if not (folder / "report.json").is_file():
                break
            report = folder / "report.json"
            recorded = read_report(report)
            check(recorded, partial(_in_report, report))  # before any data loads
            return layout, models, recorded, {stage: onnx_header(p) for stage, p in models.items()}
    raise UsageError(
        f"{folder} is neither a finished run directory (student.onnx, report.json) nor an edge bundle "
        f"(model.onnx, report.json); pass runs/<name>, runs/<name>/bundle or an exported .onnx file"
    )


def _in_report(report: Path, name: str) -> str:
    return f"{report}: its {name}"


def report_matches(headers: Headers, recorded: dict[str, Any]) -> bool | None:
    """Whether the models carry the hash of this report's results (None when either side predates it)."""
    from ltcompress.results import results_sha256

    if not all(k in recorded for k in ("config", "stages", "gates")):
        return None
    want = results_sha256(recorded["config"], recorded["stages"], recorded["gates"])
    stamps = {props.get("ltcompress.report_sha256") for _, props in headers.values()}
    return None if stamps == {None} else stamps == {want}


def read_report(path: Path) -> dict[str, Any]:
    """An export's report.json: exit 7 when the disk cannot give it, 4 when its content is damaged."""
    from ltcompress.rundir import read_errors

    with read_errors(path, "copy it again from its run"):
        report = json.loads(path.read_bytes().decode("utf-8"))
    missing = [k for k in ("config", "data", "stages") if not isinstance(report, dict) or k not in report]
    if missing:
        raise VerificationError(
            f"{path} is not an ltcompress report (no {', '.join(missing)}); copy it again from its run"
        )
    document: dict[str, Any] = report
    return document


def data_overrides(recorded: dict[str, Any], dataset: str | None, data_dir: str | None) -> dict[str, Any]:
    """The data settings the export was verified with, as dotted keys, with the user's changes on top."""
    saved = recorded["config"]
    flat = {f"data.{k}": v for k, v in saved["data"].items()}
    if dataset is not None and dataset != saved["data"]["dataset"]:
        flat = {
            "data.dataset": dataset,
            "data.input_size": saved["data"]["input_size"],
            "data.channels": saved["data"]["channels"],
        }  # another dataset: only the model's input carries over
    if data_dir is not None:
        flat["data.data_dir"] = data_dir
    return flat


def verify_export(
    path: str | Path,
    dataset: str | None = None,
    *,
    gates: Sequence[str] = (),
    data_dir: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    json_out: str | Path | None = None,
) -> VerifyResult:
    """Re-measure the export at `path` on `dataset` (default: the one it was trained on) and evaluate `gates`.

    Only ONNX stages exist here (fp32, and int8 when the export has one); there is no torch model, so gates on
    teacher/student or on agreement are usage errors. `json_out` writes the result (never over an existing file).
    """
    from ltcompress import gates as gate_mod
    from ltcompress.rundir import write_json

    folder = Path(path)
    layout, models, recorded, headers = locate(folder)
    matches = report_matches(headers, recorded) if layout != "model" else None
    if matches is False:
        log.warning(
            "%s: the model file(s) do not carry this report's hash (ltcompress.report_sha256): the report "
            "describes another export; the recorded numbers below are not this model's",
            folder,
        )
    parsed = [gate_mod.parse(g) for g in gates]
    out = _check_request(parsed, overrides, json_out)
    cfg = config_mod.resolve(None, {**data_overrides(recorded, dataset, data_dir), **(overrides or {})})
    data, groups = _data(cfg, recorded, next(iter(headers.values()))[0])  # every model takes the same input
    gate_mod.check_applicable(parsed, groups, tuple(models), data.class_names)
    from ltcompress.metrics import StageMetrics

    verdict, stages, flips = _measure(models, data, groups, parsed, cfg.run.eval_batch_size)
    recorded_stages = {k: StageMetrics.from_dict(v) for k, v in recorded.get("stages", {}).items() if k in stages}
    data_settings = dataclasses.asdict(cfg.data)
    result = VerifyResult(folder, layout, models, data_settings, verdict, stages, flips, recorded_stages, matches)
    if out is not None:
        write_json(out, result.to_dict())
    return result


def _check_request(
    gates: Sequence[Gate], overrides: Mapping[str, Any] | None, json_out: str | Path | None
) -> Path | None:
    """What verify cannot do (gate on agreement, change training settings, overwrite a file); the --output path."""
    for gate in gates:
        if gate.metric == "agreement":
            raise UsageError(
                f"gate {gate.expr!r}: agreement needs the torch student, which verify does not load; "
                f"gate on accuracy, drop() or flip() instead"
            )
    other = [k for k in (overrides or {}) if not k.startswith(("data.", "run."))]
    if other:
        raise UsageError(f"verify takes data.* and run.* settings only (got {', '.join(other)}): it trains nothing")
    out = Path(json_out) if json_out is not None else None
    if out is not None and out.exists():
        raise UsageError(f"{out} already exists; choose another --json path (nothing is overwritten)")
    return out


def _data(cfg: CompressConfig, recorded: dict[str, Any], dims: list[int]) -> tuple[LTData, Groups]:
    """The data as the export saw it (its input, its held-out slice) and its shot groups."""
    from ltcompress import data as data_stage
    from ltcompress.rundir import cache_root

    data = _as_exported(data_stage.load(cfg.data, cache_root(cfg.run.cache_dir)), recorded, dims)
    held = recorded["data"].get("held_out") or {}
    if held.get("share") and cfg.data.dataset == recorded["config"]["data"]["dataset"]:
        data = data_stage.hold_out(data, held["share"], held["seed"])  # the training counts the groups came from
    return data, data_stage.shot_groups(data.class_counts, cfg.data.many_threshold, cfg.data.few_threshold)


def _measure(
    models: dict[str, Path], data: LTData, groups: Groups, gates: Sequence[Gate], batch: int
) -> tuple[Verdict, dict[str, StageMetrics], dict[str, Flips]]:
    """Every model under ONNX Runtime on the test split: metrics, flips and the gates' verdict."""
    from ltcompress import gates as gate_mod
    from ltcompress import verify as verify_stage
    from ltcompress.inference import ort_logits, split_labels
    from ltcompress.results import verdict

    preds = {k: ort_logits(p, data.test, data, batch).argmax(1) for k, p in models.items()}
    labels = split_labels(data, data.test)
    stages = verify_stage.measure(preds, labels, groups, data.class_names)
    flips = verify_stage.flips(preds, labels, groups, data.class_names)
    results = gate_mod.evaluate(gates, stages, preds, labels, groups, data.class_names)
    return verdict(results), stages, flips


def _as_exported(data: LTData, recorded: dict[str, Any], dims: list[int]) -> LTData:
    """The data with the export's own normalisation (part of the model, not of the data), after checking that
    the images come in the shape, mode and classes the model was exported for."""
    from ltcompress.data import InputSpec

    spec = InputSpec(
        **{
            **recorded["data"]["input"],
            "mean": tuple(recorded["data"]["input"]["mean"]),
            "std": tuple(recorded["data"]["input"]["std"]),
        }
    )
    for what, got, want in (
        ("input (C, H, W)", [data.spec.channels, data.spec.size, data.spec.size], dims[1:]),
        (
            "source image mode and size",
            [data.spec.source_mode, data.spec.source_size],
            [spec.source_mode, spec.source_size],
        ),
        ("classes", list(data.class_names), recorded["data"]["class_names"]),
    ):
        if got != want:
            raise UsageError(
                f"this dataset's {what} {_short(got)} differ from the export's {_short(want)}; verify "
                f"on data like the export's (set data.input_size / data.channels, or another dataset)"
            )
    return dataclasses.replace(data, spec=spec)


def _short(values: list[Any]) -> str:
    text = str(values)
    return text if len(text) <= 80 else text[:77] + "...]"
