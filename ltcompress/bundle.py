"""The edge bundle, written only when every gate passed: the model (and its INT8 twin), labels, preprocessing,
the report, a model card, test vectors and the torch-free runtime (export/, installed as ltcompress.edge)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ltcompress.data import LTData, eval_batches
from ltcompress.inference import open_session
from ltcompress.metadata import INPUT_NAME, preprocess
from ltcompress.report import Report
from ltcompress.rundir import RunDir, atomic_write_bytes, atomic_write_text, io_errors, link_or_copy, temp_name
from ltcompress.rundir import write_json
from ltcompress.values import bundled_dir

EDGE_FILES = ("runtime.py",)  # the runtime files copied into bundle/export/


def write(run: RunDir, models: Mapping[str, Path], data: LTData, report: Report, html: str) -> Path:
    """bundle/, built in a temporary folder and renamed into place whole, so a bundle on disk is always complete;
    a bundle left by an earlier attempt (a resumed run) is replaced."""
    edge_dir = bundled_dir("edge")
    bundle = run.file("bundle")
    tmp = temp_name(bundle, ".tmp")
    document = report.to_dict()
    try:
        with io_errors(bundle):
            (tmp / "export").mkdir(parents=True)
            link_or_copy(models["fp32"], tmp / "model.onnx")
            if "int8" in models:
                link_or_copy(models["int8"], tmp / "model.int8.onnx")
            for name in EDGE_FILES:
                shutil.copy2(edge_dir / name, tmp / "export" / name)
        atomic_write_text(tmp / "README.md", model_card(document, (edge_dir / "BUNDLE_README.md").read_text()))
        write_test_vectors(tmp, tmp / "model.onnx", test_inputs(data))
        atomic_write_text(tmp / "report.html", html)
        write_json(tmp / "report.json", document)
        atomic_write_text(tmp / "labels.json", json.dumps(list(data.class_names), indent=2) + "\n")
        write_json(tmp / "preprocess.json", preprocess(data))
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


def model_card(report: Mapping[str, Any], body: str) -> str:
    """The bundle's README.md: YAML front matter a machine can read (what the model is, how it was made, what
    each stage scored per class and per shot group, the gates), then the bundle's instructions."""
    import yaml

    keys = ("overall", "balanced", "many", "medium", "few", "worst", "worst_class", "per_class")
    data, method, teacher = report["data"], report["method"], report.get("teacher") or {}
    repair = report.get("int8_repair")
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
        # where the INT8 repair decided, and which nodes run in FP32 because of it
        "int8_repair": {
            "evidence": repair["evidence"]["source"],
            "met": repair["met"],
            "fp32_nodes": [n["node"] for n in repair["nodes"]],
            "logit_bias": bool(repair.get("logit_bias") and repair["logit_bias"]["kept"]),
        }
        if repair
        else None,
    }
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def test_inputs(data: LTData, count: int = 4) -> np.ndarray:
    """The first `count` test images as the exported model takes them: the bundle's test vectors."""
    x, _ = next(eval_batches(data, data.test, count, torch.device("cpu")))
    return x.contiguous().numpy()


def write_test_vectors(folder: Path, model: Path, inputs: np.ndarray) -> None:
    """test_data_set_0/input_0.pb and output_0.pb (ONNX model zoo layout): preprocessed test images and the
    verified model's logits for them, so a device's runtime can be checked against this bundle."""
    from onnx import numpy_helper

    session = open_session(model)
    outputs = session.run(None, {INPUT_NAME: inputs})[0]
    out_dir = folder / "test_data_set_0"
    atomic_write_bytes(out_dir / "input_0.pb", numpy_helper.from_array(inputs, INPUT_NAME).SerializeToString())
    atomic_write_bytes(
        out_dir / "output_0.pb", numpy_helper.from_array(outputs, session.get_outputs()[0].name).SerializeToString()
    )
