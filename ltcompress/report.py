"""Stage 6: report.json (stable keys) and report.html (always written), and the edge bundle (only when every
gate passed)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from ltcompress.config import CompressConfig, ExportConfig
from ltcompress.values import bundled_dir
from ltcompress.rundir import (
    RunDir,
    atomic_write_bytes,
    atomic_write_text,
    io_errors,
    link_or_copy,
    sha256_file,
    temp_name,
    write_json,
)

REPORT_SCHEMA = 1
_EDGE_FILES = ("runtime.py",)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("ltcompress", "torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def environment(device: str) -> dict[str, Any]:
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


def build(
    *,
    run: RunDir,
    config: dict[str, Any],
    data_info: dict[str, Any],
    teacher: dict[str, Any] | None,
    student: dict[str, Any],
    method: dict[str, Any],
    stages: dict[str, Any],
    parity: dict[str, Any],
    gates: list[dict[str, Any]],
    flips: dict[str, Any],
    artifacts: dict[str, Any],
    timings: dict[str, float],
    device: str,
    tail_losses: dict[str, Any] | None = None,
    int8_repair: dict[str, Any] | None = None,
    estimate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report's top-level keys are a stable contract: add keys, never rename or remove them."""
    return {
        "schema": REPORT_SCHEMA,
        "run": {
            "name": run.path.name,
            "dir": str(run.path.resolve()),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "timings_s": timings,
        },
        "passed": all(g["passed"] for g in gates)
        and bool(parity["fp32"].get("ok"))
        and (int8_repair or {}).get("met", True),
        "gates": gates,
        "failed_gates": [g for g in gates if not g["passed"]],
        "stages": stages,
        "parity": parity,
        "flips": flips,
        "tail_losses": tail_losses or {},
        "int8_repair": int8_repair,
        "data": data_info,
        "teacher": teacher,
        "student": student,
        "method": method,
        "artifacts": artifacts,
        "recipe": {
            "name": config.get("preset"),
            "why": config.get("recipe_reason"),
            "fitted": config.get("fitted", []),
        },
        "estimate": estimate,  # what the run was expected to cost before it started (compare run.timings_s)
        "config": config,
        "environment": environment(device),
        "command": sys.argv if Path(sys.argv[0]).name in ("ltcompress", "__main__.py") else None,
    }


def _repair_summary(repair: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model card's line on the INT8 repair: where it decided, and which nodes run in FP32 because of it."""
    if not repair:
        return None
    return {"held_out": repair["held_out"], "met": repair["met"], "fp32_nodes": [n["node"] for n in repair["nodes"]]}


def write(run: RunDir, report: dict[str, Any], html: str) -> Path:
    """report.html, then report.json: report.json is the mark of a finished run (``--resume`` refuses one that
    has it), so it goes last, after everything it describes is on disk."""
    atomic_write_text(run.file("report.html"), html)
    path = run.file("report.json")
    write_json(path, report)
    return path


def tail_summary(
    confusions: dict[str, Any], groups: dict[str, list[int]], class_names: tuple[str, ...]
) -> dict[str, Any]:
    """report.json's `tail_losses`: per stage, where each Medium and Few class's misclassified images go."""
    from ltcompress.metrics import tail_losses

    return {stage: tail_losses(matrix, groups, class_names) for stage, matrix in confusions.items()}


def write_predictions(run: RunDir, labels: Any, predictions: dict[str, Any], confusions: dict[str, Any]) -> Path:
    """predictions.npz: test labels, each stage's top-1 prediction per test image, and each stage's full
    confusion matrix (`confusion_<stage>`, rows the true class), for error analysis."""
    import numpy as np

    path = run.file("predictions.npz")
    matrices = {f"confusion_{k}": m for k, m in confusions.items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=labels, **predictions, **matrices)
    atomic_write_bytes(path, buf.getvalue())
    return path


def render_html(report: dict[str, Any]) -> str:
    from ltcompress.report_html import render

    return render(report)


def model_card(report: dict[str, Any], body: str) -> str:
    """The bundle's README.md: YAML front matter a machine can read (what the model is, how it was made, what
    each stage scored per class and per shot group, the gates), then the bundle's instructions."""
    import yaml

    keys = ("overall", "balanced", "many", "medium", "few", "worst", "worst_class", "per_class")
    data, method, teacher = report["data"], report["method"], report.get("teacher") or {}
    front = {
        "model": "model.onnx",
        "int8_model": "model.int8.onnx" if "int8" in report["stages"] else None,
        "ltcompress": report["environment"]["versions"].get("ltcompress"),
        "passed": report["passed"],
        "student": report["config"]["resolved"]["student_arch"],
        "teacher": {"arch": teacher.get("arch"), "sha256": teacher.get("weights_sha256")} if teacher else None,
        "method": {k: method.get(k) for k in ("name", "status", "reading", "params")},
        "data": {k: data[k] for k in ("dataset", "class_names", "class_counts", "shot_groups", "test_size")},
        "results": {stage: {k: m.get(k) for k in keys} for stage, m in report["stages"].items()},
        "gates": [{k: g[k] for k in ("gate", "value", "passed")} for g in report["gates"]],
        "int8_repair": _repair_summary(report.get("int8_repair")),
    }
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def write_test_vectors(folder: Path, model: Path, inputs: Any, input_name: str) -> None:
    """test_data_set_0/input_0.pb and output_0.pb (ONNX model zoo layout): preprocessed test images and the
    verified model's logits for them, so a device's runtime can be checked against this bundle."""
    from onnx import numpy_helper

    from ltcompress.verify import open_session

    session = open_session(model)
    outputs = session.run(None, {input_name: inputs})[0]
    out_dir = folder / "test_data_set_0"
    atomic_write_bytes(out_dir / "input_0.pb", numpy_helper.from_array(inputs, input_name).SerializeToString())
    atomic_write_bytes(
        out_dir / "output_0.pb", numpy_helper.from_array(outputs, session.get_outputs()[0].name).SerializeToString()
    )


def write_bundle(
    run: RunDir,
    onnx_path: Path,
    int8_path: Path | None,
    class_names: tuple[str, ...],
    preprocess: dict[str, Any],
    report: dict[str, Any],
    html: str,
    test_inputs: Any,
) -> Path:
    """bundle/: the model (and its INT8 twin), labels, preprocessing, report, a model card, test vectors and the
    torch-free runtime. Built
    in a temporary folder and renamed into place whole, so a bundle on disk is always complete; a bundle left
    by an earlier attempt (a resumed run) is replaced."""
    edge_dir = bundled_dir("edge")
    bundle = run.file("bundle")
    tmp = temp_name(bundle, ".tmp")
    try:
        with io_errors(bundle):
            (tmp / "export").mkdir(parents=True)
            link_or_copy(onnx_path, tmp / "model.onnx")
            if int8_path is not None:
                link_or_copy(int8_path, tmp / "model.int8.onnx")
            for name in _EDGE_FILES:
                shutil.copy2(edge_dir / name, tmp / "export" / name)
        atomic_write_text(tmp / "README.md", model_card(report, (edge_dir / "BUNDLE_README.md").read_text()))
        write_test_vectors(tmp, tmp / "model.onnx", test_inputs, preprocess["input_name"])
        atomic_write_text(tmp / "report.html", html)
        write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "labels.json", json.dumps(list(class_names), indent=2) + "\n")
        write_json(tmp / "preprocess.json", preprocess)
        with io_errors(bundle):
            old = temp_name(bundle, ".old")
            if bundle.exists():
                os.replace(bundle, old)
            os.replace(tmp, bundle)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return bundle


def data_info(data: Any, groups: dict[str, list[int]], cfg: CompressConfig) -> dict[str, Any]:
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


def held_out(data: Any) -> dict[str, Any] | None:
    """The held-out images (INT8 repair): where from, how many, and the (share, seed) of a training slice, which
    `ltcompress verify` repeats so its shot groups count the same training images."""
    if data.val is None:
        return None
    share, seed = data.held_out or (None, None)
    return {"source": data.val_source, "images": len(data.val), "share": share, "seed": seed}


def artifacts(
    run: Any, onnx_path: Path, int8_path: Path | None, int8_info: dict[str, Any] | None, export: ExportConfig, spec: Any
) -> dict[str, Any]:
    """The exported files (paths, sha256, sizes), the INT8 calibration, and each model's measured latency."""
    from ltcompress.verify import speed

    out: dict[str, Any] = {
        "student_onnx": str(onnx_path),
        "student_weights": str(run.file("student.safetensors")),
        "onnx_sha256": sha256_file(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "opset": export.opset,
    }
    if int8_path is not None:
        out.update(
            {
                "student_int8_onnx": str(int8_path),
                "int8_sha256": sha256_file(int8_path),
                "int8_bytes": int8_path.stat().st_size,
                "int8": int8_info,
            }
        )
    models = {"fp32": onnx_path, **({"int8": int8_path} if int8_path is not None else {})}
    out["latency_ms"] = speed(models, (spec.channels, spec.size, spec.size), export.speed_budget_s)
    return out


def model_metadata(data: Any, cfg: CompressConfig, teacher_sha256: str | None, input_name: str) -> dict[str, str]:
    """What every exported ONNX file carries in its metadata_props: enough to run it without side files (class
    names, the evaluation preprocessing), to measure it again (the data settings, the input spec) and to trace
    it (ltcompress version, method and its reading, the teacher's sha256, the data fingerprint; the report's
    hash is added once the report's results exist, see results_sha256)."""
    from ltcompress.methods import method_info

    info = method_info(cfg.method.name)
    return {
        "ltcompress.version": versions()["ltcompress"],
        "ltcompress.method": cfg.method.name,
        "ltcompress.method_status": info.status,
        "ltcompress.method_reading": info.reading,
        "ltcompress.teacher_sha256": teacher_sha256 or "",
        "ltcompress.data_fingerprint": data.fingerprint,
        "ltcompress.class_names": json.dumps(list(data.class_names)),
        "ltcompress.preprocess": json.dumps(preprocess(data, input_name)),
        "ltcompress.data": json.dumps(dataclasses.asdict(cfg.data)),
        "ltcompress.input": json.dumps(dataclasses.asdict(data.spec)),
        "ltcompress.held_out": json.dumps(held_out(data)),
    }


def results_sha256(config: dict[str, Any], stages: dict[str, Any], gates: list[dict[str, Any]]) -> str:
    """sha256 of report.json's results (its `config`, `stages` and `gates`, as canonical JSON), which every model
    file of the run carries as `ltcompress.report_sha256`: a report and a model belong together when it matches.
    (The report records the models' own sha256, so the models cannot carry the whole file's hash.)"""
    text = json.dumps({"config": config, "stages": stages, "gates": gates}, sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def preprocess(data: Any, input_name: str) -> dict[str, Any]:
    return {"input_name": input_name, **data.spec.preprocess(), "layout": "NCHW"}
