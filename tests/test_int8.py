"""INT8 export: class-stratified calibration sampling, and static QDQ quantization of a real tiny timm model."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ltcompress import models
from ltcompress.data import InputSpec
from ltcompress.onnx_export import calibration_indices, export, quantize

COUNTS = [500, 200, 80, 30, 12, 5]
LABELS = np.repeat(np.arange(len(COUNTS)), COUNTS)


def test_stratified_calibration_fills_classes_evenly_and_keeps_the_tail():
    idx = calibration_indices(LABELS, 120, "stratified", seed=0)
    per_class = np.bincount(LABELS[idx], minlength=len(COUNTS))
    assert len(idx) == len(set(idx.tolist())) == 120
    # 120 images over 6 classes: the 12- and 5-image classes give all they have (less than an equal 20), and
    # the other 103 spread evenly over the four larger classes
    assert per_class.tolist() == [26, 26, 26, 25, 12, 5]
    random = np.bincount(LABELS[calibration_indices(LABELS, 120, "random", seed=0)], minlength=len(COUNTS))
    assert random.sum() == 120 and random[-1] < 5 and random[0] > 60  # the long tail, as sampled uniformly


def test_calibration_is_seeded_and_capped_at_the_training_set():
    a, b = (calibration_indices(LABELS, 50, "stratified", seed=3) for _ in range(2))
    assert np.array_equal(a, b) and not np.array_equal(a, calibration_indices(LABELS, 50, "stratified", seed=4))
    assert len(calibration_indices(LABELS, 10_000, "stratified", seed=0)) == len(LABELS)


def test_static_qdq_u8s8_per_channel_quantization_of_a_timm_model(tmp_path):
    torch.manual_seed(0)
    model = models.create("test_efficientnet", 10, 3).eval()
    spec = InputSpec(32, 3, (0.5,) * 3, (0.25,) * 3, "L", 28)
    fp32 = export(model, spec, tmp_path / "m.onnx", 18)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(8, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    int8 = quantize(fp32, iter(batches), tmp_path / "m.int8.onnx")
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = {i.name: i for i in graph.initializer}
    activation_types = {zero_points[n.input[2]].data_type for n in graph.node if n.op_type == "QuantizeLinear"}
    weight_scales = [zero_points[n.input[1]] for n in graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in zero_points
                     and zero_points[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert activation_types == {onnx.TensorProto.UINT8}  # uint8 activations
    assert weight_scales and any(len(s.dims) == 1 and s.dims[0] > 1 for s in weight_scales)  # per channel
    assert not (tmp_path / "m.int8.pre.onnx").exists() and int8.stat().st_size < fp32.stat().st_size
    x = batches[0]
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
           for p in (fp32, int8)]
    assert run[1].shape == run[0].shape == (8, 10)
    assert np.corrcoef(run[0].ravel(), run[1].ravel())[0, 1] > 0.9  # close to the float model, not equal


@pytest.mark.parametrize("how", ["stratified", "random"])
def test_calibration_returns_sorted_unique_training_indices(how):
    idx = calibration_indices(LABELS, 77, how, seed=1)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < len(LABELS)
