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

from ltcompress import progress
from ltcompress.config import CALIBRATIONS, ExportConfig
from ltcompress.data import InputSpec, LTData, eval_batches
from ltcompress.errors import UsageError, VerificationError
from ltcompress.metadata import INPUT_NAME, OUTPUT_NAME
from ltcompress.rundir import staged

log = logging.getLogger("ltcompress")


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
                torch.onnx.export(
                    student,
                    (example,),
                    str(tmp),
                    dynamo=True,
                    external_data=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes={next(iter(_forward_args(student))): {0: batch}},
                )
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
    frequent one's; `random` samples uniformly and so mirrors the long tail; `head` samples only the most
    frequent classes that together hold half the images, as a sample of production traffic might (both kept
    to show what a biased calibration does to the tail).
    """
    rng = np.random.default_rng(seed)
    assert how in CALIBRATIONS, how  # config validation rejects anything else with exit 2
    if how == "head":
        counts = np.bincount(labels)
        order = np.argsort(-counts, kind="stable")
        head = order[: int(np.searchsorted(np.cumsum(counts[order]), len(labels) / 2)) + 1]
        pool = np.flatnonzero(np.isin(labels, head))
        return np.sort(rng.choice(pool, min(size, len(pool)), replace=False))
    size = min(size, len(labels))
    if how == "random":
        return np.sort(rng.choice(len(labels), size, replace=False))
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(int(labels.max()) + 1)]
    take = np.zeros(len(pools), dtype=int)
    while take.sum() < size:  # water-filling: one more image for every class that still has images
        open_ = [c for c, pool in enumerate(pools) if take[c] < len(pool)]
        for c in open_[: size - int(take.sum())]:
            take[c] += 1
    return np.sort(np.concatenate([pool[:k] for pool, k in zip(pools, take)]))


def int8(
    fp32_path: Path, data: LTData, cfg: ExportConfig, seed: int, path: Path, workdir: Path, show: bool = False
) -> tuple[Quantizer, dict[str, Any]]:
    """The run's INT8 model: calibrate on `cfg.calibration_size` un-augmented training images chosen the
    `cfg.calibration` way. Returns the calibrated Quantizer (what the INT8 repair re-quantizes with; its files
    live in `workdir`) and what the report records about the calibration."""
    idx = calibration_indices(data.train.labels, cfg.calibration_size, cfg.calibration, seed)
    shown = progress.bar(
        eval_batches(data, data.train, 32, torch.device("cpu"), idx),
        "int8 calibration",
        show,
        progress.batches(len(idx), 32),
    )
    batches = (x.contiguous().numpy() for x, _ in shown)
    quantizer = Quantizer(fp32_path, batches, workdir, cfg.calibration_method, cfg.per_channel, cfg.calibration_bins)
    quantizer.write(path, exclude=cfg.exclude_nodes)
    weights = "per-channel" if cfg.per_channel else "per-tensor"
    log.info(
        "export: %s (static QDQ U8S8 %s, %s, %s calibration on %d images, %d node(s) left in float, %.2f MB)",
        path.name,
        weights,
        cfg.calibration_method,
        cfg.calibration,
        len(idx),
        len(cfg.exclude_nodes),
        path.stat().st_size / 1e6,
    )
    per_class = np.bincount(data.train.labels[idx], minlength=data.num_classes)
    return quantizer, {
        "method": f"static QDQ, uint8 activations, int8 {weights} weights, {cfg.calibration_method}",
        "calibration_method": cfg.calibration_method,
        "calibration_bins": cfg.calibration_bins if cfg.calibration_method != "minmax" else None,
        "per_channel": cfg.per_channel,
        "excluded_nodes": list(cfg.exclude_nodes),
        "quantized_nodes": quantizer.nodes,
        "calibration": cfg.calibration,
        "calibration_size": int(len(idx)),
        "calibration_per_class": dict(zip(data.class_names, per_class.tolist())),
        "seed": seed,
    }


class Quantizer:
    """Static INT8 (QDQ, uint8 activations, int8 weights) with ONNX Runtime, calibrated once and written as often
    as asked with different nodes left in float (the INT8 repair tries dozens).

    uint8 activations matter on CPUs: with int8 ones ORT leaves MobileNetV3's depthwise convolutions in float
    and the model runs ~5x slower. The model is pre-processed (shape inference, graph optimisation) first, as
    ORT recommends; node names are those of the pre-processed graph. The calibrated ranges are kept in ORT's
    calibration cache file, so a re-quantization costs no calibration pass.
    """

    def __init__(
        self,
        fp32_path: Path,
        calibration: Iterator[np.ndarray],
        workdir: Path,
        method: str = "minmax",
        per_channel: bool = True,
        bins: int = 2048,
    ) -> None:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        self.method, self.per_channel = method, per_channel
        self.prepared, self.ranges = workdir / "prepared.onnx", workdir / "ranges.json"
        graph = prepare(fp32_path, self.prepared).graph
        self.graph_nodes = [n.name for n in graph.node]
        self.op_types = {n.name: n.op_type for n in graph.node}
        quantizable = set(QDQRegistry) | set(QLinearOpsRegistry)  # what quantize_static quantizes by default
        self.nodes = [n.name for n in graph.node if n.op_type in quantizable]
        if method == "minmax":  # quantize_static calibrates MinMax itself
            self._quantize(workdir / "calibrated.onnx", iter(calibration), (), None)
        else:
            self._histogram_ranges(iter(calibration), sorted(quantizable), bins, workdir)

    def _histogram_ranges(self, calibration: Iterator[np.ndarray], op_types: list[str], bins: int, tmp: Path) -> None:
        """Entropy and percentile ranges from ONNX Runtime's calibrator driven directly with `bins` histogram
        bins, saved where quantize_static reads its calibration cache. (quantize_static builds its entropy
        calibrator with 128 bins and 128 quantized bins: a single candidate threshold, MinMax's ranges.)"""
        from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

        kind = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[self.method]
        options = {"num_bins": bins, **({"num_quantized_bins": 128} if self.method == "entropy" else {})}
        with _quiet("INT8 calibration"):
            calibrator = create_calibrator(
                self.prepared,
                op_types,
                augmented_model_path=str(tmp / "augmented.onnx"),
                calibrate_method=kind,
                providers=["CPUExecutionProvider"],
                extra_options=options,
            )
            calibrator.collect_data(_reader(calibration))
            save_tensors_data(calibrator.compute_data(), self.ranges)

    def write(
        self,
        path: Path,
        exclude: tuple[str, ...] | list[str] = (),
        only: list[str] | None = None,
        int8_weights: tuple[str, ...] | list[str] = (),
    ) -> Path:
        """The INT8 model at `path` (written under a temporary name and renamed): every quantizable node but
        those in `exclude`, or only the nodes in `only`. Excluded nodes named in `int8_weights` compute in
        float but keep their weights stored as int8 (see store_weights_int8). A name in `exclude` that the
        graph does not have is exit 2 with the names it does have."""
        _check_excluded(tuple(exclude), self.graph_nodes)
        with staged(path) as tmp:
            self._quantize(tmp, None, tuple(exclude), only)
            if int8_weights:
                store_weights_int8(tmp, set(int8_weights))
        return path

    def _quantize(
        self, out: Path, calibration: Iterator[np.ndarray] | None, exclude: tuple[str, ...], only: list[str] | None
    ) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        with _quiet("INT8 quantization"):
            quantize_static(
                str(self.prepared),
                str(out),
                _reader(calibration) if calibration is not None else None,
                quant_format=QuantFormat.QDQ,
                per_channel=self.per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[self.method],
                nodes_to_exclude=list(exclude),
                nodes_to_quantize=only,
                calibration_cache_path=str(self.ranges),
            )


def _reader(batches: Iterator[np.ndarray]) -> Any:
    """ONNX Runtime's CalibrationDataReader over preprocessed batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return Reader()


def store_weights_int8(path: Path, nodes: set[str]) -> None:
    """Store the float weights of `nodes` (Conv, Gemm, MatMul) as int8, symmetric per output channel, behind a
    DequantizeLinear: the node computes in float (ONNX Runtime folds the constant DequantizeLinear when the
    model loads) but the file stays INT8-sized. On the models we measured the tail's INT8 damage came from
    quantized activations, not weights, so a node repaired this way recovers what a float node does."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    dequantize = []
    for node in graph.node:
        if (
            node.name not in nodes
            or node.op_type not in ("Conv", "Gemm", "MatMul")
            or len(node.input) < 2
            or node.input[1] not in weights
        ):
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        axis = {"Conv": 0, "MatMul": 1, "Gemm": 0 if trans_b else 1}[node.op_type]  # the output channels
        name = node.input[1]
        w = numpy_helper.to_array(weights[name]).astype(np.float32)
        if w.ndim < 2:
            continue
        scale = np.maximum(np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(1), 1e-12) / 127.0
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(weights[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}_int8"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}_zero"),
            ]
        )
        dequantize.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                [name],
                name=f"{name}_DequantizeWeight",
                axis=axis,
            )
        )
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(dequantize + rest)  # constant inputs only: first is a valid topological order
    onnx.save(model, str(path))


def prepare(fp32_path: Path, out: Path) -> Any:
    """ORT's quantization pre-processing (shape inference, graph optimisation), with every node named: the
    optimiser leaves some nodes (MobileNetV3's hard-swish Muls) without a name, and a node must have one of its
    own to be excluded or returned to FP32 alone. Returns the prepared onnx.ModelProto, also written to `out`."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with _quiet("INT8 pre-processing"):
        quant_pre_process(str(fp32_path), str(out))
    model = onnx.load(str(out))
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = next(
                name
                for k in range(len(taken) + 1)
                if (name := f"{node.op_type}_{i}" + (f"_{k}" if k else "")) not in taken
            )
            taken.add(node.name)
    onnx.save(model, str(out))
    return model


@contextlib.contextmanager
def _quiet(what: str) -> Iterator[None]:
    """ONNX Runtime's chatter hidden; its failures become exit 4 naming `what` (a disk error stays exit 7)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        except Exception as exc:
            raise VerificationError(f"{what} failed: {str(exc).splitlines()[0]}") from exc


def check_exclude_nodes(arch: str, spec: InputSpec, num_classes: int, exclude: tuple[str, ...], opset: int) -> None:
    """export.exclude_nodes checked before any training, on an untrained export of the same architecture (node
    names depend on the graph, not on the weights): a typo costs seconds, not a training run."""
    import tempfile

    from ltcompress import models

    with tempfile.TemporaryDirectory(prefix="ltcompress-nodes-") as tmp:
        fp32 = export(models.create(arch, num_classes, spec.channels), spec, Path(tmp) / "student.onnx", opset)
        _check_excluded(exclude, [n.name for n in prepare(fp32, Path(tmp) / "pre.onnx").graph.node])


def _check_excluded(exclude: tuple[str, ...], nodes: list[str]) -> None:
    unknown = [n for n in exclude if n not in nodes]
    if unknown:
        import difflib

        hints = {n: difflib.get_close_matches(n, nodes, 1) for n in unknown}
        said = "; ".join(f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items())
        raise UsageError(
            f"export.exclude_nodes names node(s) the model does not have: {said}. The quantized "
            f"nodes are listed in report.json under artifacts.int8.quantized_nodes "
            f"({len(nodes)}, e.g. {', '.join(nodes[:3])})"
        )


def add_logit_bias(path: Path, bias: np.ndarray) -> None:
    """Add a constant per-class offset to the model's output (the INT8 repair's logit bias correction): an Add
    after the node that produced the output, which keeps its name, so the model is called as before. A model
    that has one already gets the offsets summed into it."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    out = graph.output[0].name
    inner, constant = f"{out}_before_bias", f"{out}_bias"
    existing = next((i for i in graph.initializer if i.name == constant), None)
    if existing is not None:
        total = numpy_helper.to_array(existing) + bias.astype(np.float32).reshape(1, -1)
        existing.CopyFrom(numpy_helper.from_array(total, constant))
        onnx.save(model, str(path))
        return
    for node in graph.node:
        node.output[:] = [inner if o == out else o for o in node.output]
        node.input[:] = [inner if i == out else i for i in node.input]
    graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32).reshape(1, -1), constant))
    graph.node.append(helper.make_node("Add", [inner, constant], [out], name="ltcompress_logit_bias"))
    onnx.save(model, str(path))
