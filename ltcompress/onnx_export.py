"""Stage 4: torch student -> single-file ONNX with a dynamic batch axis, pinned opset, checked by onnx.checker."""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ltcompress.data import InputSpec
from ltcompress.errors import VerificationError
from ltcompress.rundir import io_errors

log = logging.getLogger("ltcompress")
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export(model: nn.Module, spec: InputSpec, path: Path, opset: int) -> Path:
    """Export a CPU fp32 copy of `model` (the caller's model is left as it is)."""
    import onnx

    student = copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, spec.channels, spec.size, spec.size)  # batch 1 would pin the dynamic axis
    batch = torch.export.Dim("batch")
    chatter = io.StringIO()
    with io_errors(path), contextlib.redirect_stdout(chatter), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(student, (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes={next(iter(_forward_args(student))): {0: batch}})
        except Exception as exc:
            raise VerificationError(f"ONNX export failed: {str(exc).splitlines()[0]}") from exc
    log.debug("torch.onnx: %s", chatter.getvalue())
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise VerificationError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from None
    log.info("export: %s (opset %d, %.2f MB)", path.name, opset, path.stat().st_size / 1e6)
    return path


def _forward_args(model: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(model.forward).parameters if p != "self"]
