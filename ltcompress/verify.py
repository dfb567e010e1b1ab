"""Stage 5: measure every stage on the test set — torch teacher, torch student and the exported model under
ONNX Runtime (CPU provider named explicitly) — and check that the FP32 export reproduces the torch student."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ltcompress.config import ExportConfig
from ltcompress.data import LTData, Split, iterate, to_batch
from ltcompress.metrics import agreement, summarize

log = logging.getLogger("ltcompress")


@dataclass
class Verification:
    stages: dict[str, dict[str, Any]]  # stage key -> metrics (overall, balanced, many, medium, few, worst, ...)
    parity: dict[str, Any]
    predictions: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def parity_ok(self) -> bool:
        return bool(self.parity["ok"])


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """No TF32 on CUDA (its 10-bit mantissa would be mistaken for an export defect by the parity check)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def torch_logits(model: nn.Module, split: Split, data: LTData, device: torch.device, batch: int) -> np.ndarray:
    """fp32 logits (no autocast, no TF32), so they are comparable with ONNX Runtime's."""
    model.eval().to(device)
    with full_fp32():
        out = [model(to_batch(xb, yb, data.spec, device)[0]).float().cpu()
               for xb, yb in iterate(split, np.arange(len(split)), batch, drop_last=False)]
    return torch.cat(out).numpy()


def ort_logits(onnx_path: Path, split: Split, data: LTData, batch: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    cpu = torch.device("cpu")
    out = [session.run(None, {name: to_batch(xb, yb, data.spec, cpu)[0].contiguous().numpy()})[0]
           for xb, yb in iterate(split, np.arange(len(split)), batch, drop_last=False)]
    return np.concatenate(out)


def check_parity(reference: np.ndarray, exported: np.ndarray, cfg: ExportConfig) -> dict[str, Any]:
    """Numeric and label agreement of the FP32 export with torch; judged against the stated tolerances."""
    diff = float(np.abs(reference - exported).max())
    allowed = cfg.logits_atol + cfg.logits_rtol * float(np.abs(reference).max())
    agree = agreement(reference.argmax(1), exported.argmax(1))
    return {"max_abs_logit_diff": diff, "allowed_logit_diff": allowed, "top1_agreement": agree,
            "required_agreement": 1.0 - cfg.agreement_tol,
            "ok": diff <= allowed and agree >= 1.0 - cfg.agreement_tol}


def run(data: LTData, groups: dict[str, list[int]], student: nn.Module, onnx_path: Path, cfg: ExportConfig,
        device: torch.device, batch: int, teacher: nn.Module | None = None) -> Verification:
    test = data.test
    logits: dict[str, np.ndarray] = {}
    if teacher is not None:
        logits["teacher"] = torch_logits(teacher, test, data, device, batch)
    logits["student"] = torch_logits(student, test, data, device, batch)
    logits["fp32"] = ort_logits(onnx_path, test, data, batch)
    preds = {k: v.argmax(1) for k, v in logits.items()}
    stages = {k: summarize(p, test.labels, groups, data.class_names) for k, p in preds.items()}
    stages["fp32"]["agreement_with_student"] = agreement(preds["fp32"], preds["student"])
    parity = check_parity(logits["student"], logits["fp32"], cfg)
    for key, m in stages.items():
        log.info("verify %-7s overall %.4f  balanced %.4f  few %s  worst %.4f (%s)", key, m["overall"],
                 m["balanced"], "absent" if m["few"] is None else f"{m['few']:.4f}", m["worst"], m["worst_class"])
    return Verification(stages, parity, preds)
