"""Stage 4 as the pipeline runs it: the ONNX student, its INT8 copy and that copy's repair when asked for, each
file stamped with the metadata that makes it describe itself (and, once verified, the hash of its results)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ltcompress import evidence, metadata, onnx_export, repair
from ltcompress.plan import Plan
from ltcompress.results import RepairRecord
from ltcompress.rundir import RunDir
from ltcompress.teacher import Teacher


@dataclass(frozen=True)
class Exported:
    """The exported models of a run and what their making recorded."""

    onnx_path: Path
    int8_path: Path | None = None
    int8_info: dict[str, Any] | None = None  # the calibration, as report.json's artifacts.int8 records it
    repair: RepairRecord | None = None

    @property
    def models(self) -> dict[str, Path]:
        """Stage key -> file, for the verify stage."""
        return {"fp32": self.onnx_path, **({"int8": self.int8_path} if self.int8_path else {})}


def export(plan: Plan, run: RunDir, student: nn.Module, teacher: Teacher | None) -> Exported:
    """student.onnx, and student.int8.onnx (repaired when export.int8_repair) when export.int8 is on."""
    cfg, data = plan.cfg, plan.data
    onnx_path = onnx_export.export(student, data.spec, run.file("student.onnx"), cfg.export.opset)
    teacher_sha = teacher.provenance["weights_sha256"] if teacher else None
    described = metadata.describe(data, cfg, teacher_sha)
    metadata.embed(onnx_path, {**described, "ltcompress.stage": "fp32"})
    if not cfg.export.int8:
        return Exported(onnx_path)
    int8_path, repaired = run.file("student.int8.onnx"), None
    int8_path.with_name(repair.UNREPAIRED).unlink(missing_ok=True)  # from an earlier attempt of this run
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=run.path) as tmp:
        quantizer, info = onnx_export.int8(
            onnx_path, data, cfg.export, cfg.run.seed, int8_path, Path(tmp), plan.progress
        )
        if cfg.export.int8_repair:
            torch_models = {"student": student, "teacher": teacher.module if teacher else None}
            gates = evidence.int8_gates(plan.gates)
            seen = evidence.collect(
                data, gates, plan.groups, cfg.export, cfg.run.seed, onnx_path, torch_models, plan.device
            )
            repaired = repair.repair(
                quantizer, int8_path, seen, data, plan.groups, gates, cfg.export, Path(tmp), plan.progress
            )
    for path, stage in ((int8_path, "int8"), (int8_path.with_name(repair.UNREPAIRED), "int8 before repair")):
        if path.is_file():
            metadata.embed(path, {**described, "ltcompress.stage": stage})
    return Exported(onnx_path, int8_path, info, repaired)


def stamp_results(exported: Exported, results_sha256: str) -> None:
    """Every model of the run carries the hash of the report's results, so a report and a model are known to
    belong together (before the report records the models' own sha256)."""
    for path in exported.models.values():
        metadata.embed(path, {"ltcompress.report_sha256": results_sha256})
