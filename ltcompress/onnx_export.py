"""Stage 4: torch student -> single-file ONNX with a dynamic batch axis, pinned opset, checked by onnx.checker;
optionally a static INT8 copy calibrated on a class-stratified sample of the training set."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ltcompress.config import CALIBRATIONS, ExportConfig
from ltcompress.data import InputSpec, LTData, eval_batches
from ltcompress.errors import VerificationError
from ltcompress.rundir import staged, temp_name

log = logging.getLogger("ltcompress")
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export(model: nn.Module, spec: InputSpec, path: Path, opset: int) -> Path:
    """Export a CPU fp32 copy of `model` (the caller's model is left as it is)."""
    import onnx

    student = copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, spec.channels, spec.size, spec.size)  # batch 1 would pin the dynamic axis
    batch = torch.export.Dim("batch")
    chatter = io.StringIO()
    # written under a unique temporary name and renamed once checked: a full disk (exit 7) or a failed export
    # (exit 4) leaves no partial student.onnx behind
    with staged(path) as tmp:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(student, (example,), str(tmp), dynamo=True, external_data=False,
                                  opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_shapes={next(iter(_forward_args(student))): {0: batch}})
            except Exception as exc:
                raise VerificationError(f"ONNX export failed: {str(exc).splitlines()[0]}") from exc
        log.debug("torch.onnx: %s", chatter.getvalue())
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise VerificationError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from None
    log.info("export: %s (opset %d, %.2f MB)", path.name, opset, path.stat().st_size / 1e6)
    return path


def _forward_args(model: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(model.forward).parameters if p != "self"]


def calibration_indices(labels: np.ndarray, size: int, how: str, seed: int) -> np.ndarray:
    """Training-image indices for INT8 calibration.

    `stratified` fills classes evenly (every class gets min(its count, an equal share), the rest is spread over
    the classes that have more), so a rare class's activations shape the quantization ranges as much as a
    frequent one's; `random` samples uniformly and so mirrors the long tail (kept for comparison).
    """
    rng = np.random.default_rng(seed)
    size = min(size, len(labels))
    assert how in CALIBRATIONS, how  # config validation rejects anything else with exit 2
    if how == "random":
        return np.sort(rng.choice(len(labels), size, replace=False))
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(int(labels.max()) + 1)]
    take = np.zeros(len(pools), dtype=int)
    while take.sum() < size:  # water-filling: one more image for every class that still has images
        open_ = [c for c, pool in enumerate(pools) if take[c] < len(pool)]
        for c in open_[: size - int(take.sum())]:
            take[c] += 1
    return np.sort(np.concatenate([pool[:k] for pool, k in zip(pools, take)]))


def int8(fp32_path: Path, data: LTData, cfg: ExportConfig, seed: int, path: Path) -> dict[str, Any]:
    """The run's INT8 model: calibrate on `cfg.calibration_size` un-augmented training images chosen the
    `cfg.calibration` way; returns what the report records about the calibration."""
    idx = calibration_indices(data.train.labels, cfg.calibration_size, cfg.calibration, seed)
    batches = (x.contiguous().numpy() for x, _ in eval_batches(data, data.train, 32, torch.device("cpu"), idx))
    quantize(fp32_path, batches, path)
    per_class = np.bincount(data.train.labels[idx], minlength=data.num_classes)
    return {"method": "static QDQ, uint8 activations, int8 per-channel weights, MinMax",
            "calibration": cfg.calibration, "calibration_size": int(len(idx)),
            "calibration_per_class": dict(zip(data.class_names, per_class.tolist())), "seed": seed}


def quantize(fp32_path: Path, calibration: Iterator[np.ndarray], path: Path) -> Path:
    """Static INT8 (QDQ, uint8 activations, int8 per-channel weights, MinMax ranges) with ONNX Runtime.

    uint8 activations matter on CPUs: with int8 ones ORT leaves MobileNetV3's depthwise convolutions in float
    and the model runs ~5x slower. The model is pre-processed (shape inference, graph optimisation) first, as
    ORT recommends.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    prepared = temp_name(path, ".pre.onnx")
    with staged(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            quant_pre_process(str(fp32_path), str(prepared))
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as exc:
            raise VerificationError(f"INT8 quantization failed: {str(exc).splitlines()[0]}") from exc
        finally:
            prepared.unlink(missing_ok=True)
    log.info("export: %s (static QDQ U8S8 per-channel, %.2f MB)", path.name, path.stat().st_size / 1e6)
    return path
