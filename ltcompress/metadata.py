"""What every exported file says about itself (ONNX metadata_props, the bundle's preprocess.json): the class
names and evaluation preprocessing a device needs, the data settings that measure it again, and the versions and
hashes that trace it to its run. One source for the export stage, the report and the bundle."""

from __future__ import annotations

import dataclasses
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from ltcompress.config import CompressConfig
from ltcompress.data import LTData
from ltcompress.rundir import staged

INPUT_NAME, OUTPUT_NAME = "input", "logits"  # the exported model's input and output names
PACKAGES = ("ltcompress", "torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "numpy")


def versions() -> dict[str, str]:
    """The versions that made a model: Python and every package on its path."""
    import platform

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def preprocess(data: LTData) -> dict[str, Any]:
    """The evaluation preprocessing an exported model expects (preprocess.json, `ltcompress.preprocess`)."""
    return {"input_name": INPUT_NAME, **data.spec.preprocess(), "layout": "NCHW"}


def held_out(data: LTData) -> dict[str, Any] | None:
    """data.val_list's held-out images (INT8 repair): where from, how many, and the (share, seed) of a training
    slice an earlier version set aside, which `ltcompress verify` repeats so its shot groups count the same
    training images."""
    if data.val is None:
        return None
    share, seed = data.held_out or (None, None)
    return {"source": data.val_source, "images": len(data.val), "share": share, "seed": seed}


def describe(data: LTData, cfg: CompressConfig, teacher_sha256: str | None) -> dict[str, str]:
    """What every exported ONNX file carries in its metadata_props: enough to run it without side files (class
    names, the evaluation preprocessing), to measure it again (the data settings, the input spec) and to trace
    it (ltcompress version, method and its reading, the teacher's sha256, the data fingerprint; the report's
    hash is added once the results exist, see results.results_sha256)."""
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
        "ltcompress.preprocess": json.dumps(preprocess(data)),
        "ltcompress.data": json.dumps(dataclasses.asdict(cfg.data)),
        "ltcompress.input": json.dumps(dataclasses.asdict(data.spec)),
        "ltcompress.held_out": json.dumps(held_out(data)),
    }


def embed(path: Path, props: dict[str, str]) -> None:
    """Write `props` into the model's ONNX metadata_props (replacing entries with the same keys), so the file
    describes itself: class names and the evaluation preprocessing travel with the model, not beside it."""
    import onnx

    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        model.metadata_props.add(key=key, value=value)
    with staged(path) as tmp:
        onnx.save(model, str(tmp))
