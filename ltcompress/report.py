"""Stage 6: the report of a run, a typed value (`Report`) written as report.json (stable keys) and report.html,
always; predictions.npz for error analysis. The edge bundle is bundle.py's."""

from __future__ import annotations

import dataclasses
import io
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ltcompress.config import CompressConfig, ExportConfig, TrainConfig
from ltcompress.data import LTData
from ltcompress.metadata import held_out, versions
from ltcompress.metrics import Flips, Groups, StageMetrics, TailLoss
from ltcompress.plan import Plan
from ltcompress.results import Int8Parity, Parity, RepairRecord, Verdict
from ltcompress.rundir import RunDir, atomic_write_bytes, atomic_write_text, sha256_file, write_json

REPORT_SCHEMA = 1
Json = Mapping[str, Any]  # a JSON object as written: the report's descriptive sections


@dataclass(frozen=True)
class Report:
    """What a run measured and how it was made. The results are typed; the descriptive sections (data, models,
    method, artifacts, config, environment) are the JSON objects report.json holds."""

    run: Json  # name, dir, finished, timings_s
    verdict: Verdict
    stages: Mapping[str, StageMetrics]
    parity: Parity
    flips: Mapping[str, Flips]
    data: Json
    teacher: Json | None
    student: Json
    method: Json
    artifacts: Json
    config: Json
    environment: Json
    int8_parity: Int8Parity | None = None
    tail_losses: Mapping[str, Mapping[str, TailLoss]] = field(default_factory=dict)
    int8_repair: RepairRecord | None = None
    estimate: Json | None = None  # what the run was expected to cost before it started (compare run.timings_s)
    command: list[str] | None = None

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def to_dict(self) -> dict[str, Any]:
        """report.json. Its top-level keys are a stable contract: add keys, never rename or remove them."""
        parity = {"fp32": self.parity.to_dict(), **({"int8": self.int8_parity.to_dict()} if self.int8_parity else {})}
        return {
            "schema": REPORT_SCHEMA,
            "run": dict(self.run),
            "passed": self.verdict.passed,
            "gates": [g.to_dict() for g in self.verdict.gates],
            "failed_gates": [g.to_dict() for g in self.verdict.failed_gates],
            "stages": {k: m.to_dict() for k, m in self.stages.items()},
            "parity": parity,
            "flips": {k: f.to_dict() for k, f in self.flips.items()},
            "tail_losses": {s: {c: t.to_dict() for c, t in v.items()} for s, v in self.tail_losses.items()},
            "int8_repair": self.int8_repair.to_dict() if self.int8_repair else None,
            "data": dict(self.data),
            "teacher": dict(self.teacher) if self.teacher is not None else None,
            "student": dict(self.student),
            "method": dict(self.method),
            "artifacts": dict(self.artifacts),
            "recipe": {
                "name": self.config.get("preset"),
                "why": self.config.get("recipe_reason"),
                "fitted": self.config.get("fitted", []),
            },
            "estimate": dict(self.estimate) if self.estimate is not None else None,
            "config": dict(self.config),
            "environment": dict(self.environment),
            "command": self.command,
        }


def run_info(run: RunDir, timings: Mapping[str, float]) -> dict[str, Any]:
    return {
        "name": run.path.name,
        "dir": str(run.path.resolve()),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timings_s": dict(timings),
    }


def command() -> list[str] | None:
    """The command line, when the run came from the CLI."""
    return sys.argv if Path(sys.argv[0]).name in ("ltcompress", "__main__.py") else None


def environment(device: str) -> dict[str, Any]:
    """Versions, device, platform and the CPU's vector flags (INT8 speed depends on VNNI)."""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "sse4", "vnni")))
                break
    except OSError:
        pass
    return {
        "versions": versions(),
        "device": device,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": flags,
    }


def write(run: RunDir, report: Report, html: str) -> Path:
    """report.html, then report.json: report.json is the mark of a finished run (``--resume`` refuses one that
    has it), so it goes last, after everything it describes is on disk."""
    atomic_write_text(run.file("report.html"), html)
    path = run.file("report.json")
    write_json(path, report.to_dict())
    return path


def write_predictions(
    run: RunDir, labels: np.ndarray, predictions: Mapping[str, np.ndarray], confusions: Mapping[str, np.ndarray]
) -> Path:
    """predictions.npz: test labels, each stage's top-1 prediction per test image, and each stage's full
    confusion matrix (`confusion_<stage>`, rows the true class), for error analysis."""
    path = run.file("predictions.npz")
    arrays: dict[str, Any] = {"labels": labels, **predictions, **{f"confusion_{k}": m for k, m in confusions.items()}}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


def render_html(report: Report) -> str:
    from ltcompress.report_html import render

    return render(report.to_dict())


def data_info(data: LTData, groups: Groups, cfg: CompressConfig) -> dict[str, Any]:
    """report.json's `data`: the classes and their counts, shot groups, input and how the images were fed."""
    return {
        "dataset": cfg.data.dataset,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "class_counts": data.class_counts.tolist(),
        "train_size": len(data.train),
        "test_size": len(data.test),
        "shot_groups": {k: [data.class_names[c] for c in v] for k, v in groups.items()},
        "shot_thresholds": {"many_above": cfg.data.many_threshold, "few_below": cfg.data.few_threshold},
        "fingerprint": data.fingerprint,
        "input": dataclasses.asdict(data.spec),
        "samplers": {"teacher": cfg.teacher.train.sampler, "student": cfg.student.train.sampler},
        "skipped_images": len(data.skipped),
        "skipped": list(data.skipped),
        "excluded_test_classes": list(data.excluded_test_classes),
        "held_out": held_out(data),
        "pipeline": {
            "in_memory": data.in_memory,
            "why": data.pipeline.in_memory_reason,
            "workers": data.pipeline.workers if not data.in_memory or data.pipeline.augment == "timm" else 0,
            "augment": data.pipeline.augment,
            "normalize": data.pipeline.options.normalize,
        },
    }


def student_info(plan: Plan, init: tuple[str, str], recipe_name: str, recipe: TrainConfig) -> dict[str, Any]:
    """report.json's `student`: where it started (as it really did) and how it trained."""
    from ltcompress.loop import used_batch

    return {
        "arch": plan.student_arch,
        "init": init[0],
        "init_reason": init[1],
        "recipe": recipe_name,
        "batch_size_used": used_batch(recipe.batch_size, len(plan.data.train)),
        "ema": recipe.ema,
        "ema_decay": recipe.ema_decay if recipe.ema else None,
        "exported_weights": "ema" if recipe.ema else "last epoch",
        "precision": plan.cfg.run.precision,
        "compile": plan.cfg.run.compile,
    }


def artifacts(
    run: RunDir,
    models: Mapping[str, Path],
    int8_info: Mapping[str, Any] | None,
    export: ExportConfig,
    latency: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The exported files (paths, sha256, sizes), the INT8 calibration, and each model's latency as the verify
    stage measured it."""
    onnx_path = models["fp32"]
    out: dict[str, Any] = {
        "student_onnx": str(onnx_path),
        "student_weights": str(run.file("student.safetensors")),
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "opset": export.opset,
    }
    int8_path = models.get("int8")
    if int8_path is not None:
        out.update(
            {
                "student_int8_onnx": str(int8_path),
                "int8_sha256": sha256_file(int8_path),
                "int8_bytes": int8_path.stat().st_size,
                "int8": dict(int8_info) if int8_info is not None else None,
            }
        )
    out["latency_ms"] = dict(latency) if latency is not None else None
    return out
