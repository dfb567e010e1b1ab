"""INT8 export: class-stratified calibration sampling, and static QDQ quantization of a real tiny timm model."""

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ltcompress import models
from ltcompress.data import InputSpec
from ltcompress.onnx_export import Quantizer, calibration_indices, export


def quantize(fp32, calibration, path, method="minmax", per_channel=True, exclude=()):
    """Static INT8 in one call, as the export stage does it; returns the names of the quantized nodes."""
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=path.parent) as tmp:
        quantizer = Quantizer(fp32, calibration, Path(tmp), method, per_channel)
        quantizer.write(path, exclude=exclude)
        return quantizer.nodes


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
    int8 = tmp_path / "m.int8.onnx"
    nodes = quantize(fp32, iter(batches), int8)
    assert nodes and all(isinstance(n, str) for n in nodes)
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zero_points = {i.name: i for i in graph.initializer}
    activation_types = {zero_points[n.input[2]].data_type for n in graph.node if n.op_type == "QuantizeLinear"}
    weight_scales = [
        zero_points[n.input[1]]
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in zero_points
        and zero_points[n.input[0]].data_type == onnx.TensorProto.INT8
    ]
    assert activation_types == {onnx.TensorProto.UINT8}  # uint8 activations
    assert weight_scales and any(len(s.dims) == 1 and s.dims[0] > 1 for s in weight_scales)  # per channel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx", "m.onnx"]  # no pre-processed model left
    assert int8.stat().st_size < fp32.stat().st_size
    x = batches[0]
    run = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in (fp32, int8)
    ]
    assert run[1].shape == run[0].shape == (8, 10)
    assert np.corrcoef(run[0].ravel(), run[1].ravel())[0, 1] > 0.9  # close to the float model, not equal


@pytest.mark.parametrize("how", ["stratified", "random"])
def test_calibration_returns_sorted_unique_training_indices(how):
    idx = calibration_indices(LABELS, 77, how, seed=1)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < len(LABELS)


def _tiny_fp32(tmp_path):
    torch.manual_seed(0)
    model = models.create("test_efficientnet", 10, 3).eval()
    fp32 = export(model, InputSpec(32, 3, (0.5,) * 3, (0.25,) * 3, "L", 28), tmp_path / "m.onnx", 18)
    rng = np.random.default_rng(0)
    return fp32, [rng.normal(size=(8, 3, 32, 32)).astype(np.float32) for _ in range(3)]


def _dequantized_inputs(graph, node_name):
    """How many inputs of the node come out of a DequantizeLinear (0: the node runs in float)."""
    producers = {o: n.op_type for n in graph.node for o in n.output}
    node = next(n for n in graph.node if n.name == node_name)
    return sum(producers.get(i) == "DequantizeLinear" for i in node.input)


def test_calibration_methods_really_differ_on_outlier_activations(tmp_path):
    """A few pixels far out of range (a sensor glitch, a saturated highlight): MinMax stretches the activation
    ranges to them; entropy and percentile, with histograms of export.calibration_bins bins, clip them. (As
    quantize_static ran entropy, with 128 bins, it gave exactly MinMax's ranges.)"""
    fp32, batches = _tiny_fp32(tmp_path)
    batches[1][0, :, :2, :2] = 40.0  # outliers in one image of the calibration set

    def scales(method):
        out = tmp_path / f"{method}.onnx"
        quantize(fp32, iter(batches), out, method)
        x = batches[0]
        assert ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0].shape == (
            8,
            10,
        )
        return {
            i.name: onnx.numpy_helper.to_array(i)
            for i in onnx.load(str(out)).graph.initializer
            if i.name.endswith("_scale") and i.dims == []  # activations: one scale each (weights: per channel)
        }

    minmax, entropy, percentile = scales("minmax"), scales("entropy"), scales("percentile")
    assert minmax.keys() == entropy.keys() == percentile.keys()
    # entropy (KL-optimal thresholds over 2048 bins) clips most activations by a tenth or more
    assert len([k for k in minmax if entropy[k] < 0.9 * minmax[k]]) > len(minmax) // 2
    # percentile (99.999 %) keeps all but the farthest values: fewer ranges clipped, never widened
    assert len([k for k in minmax if percentile[k] < 0.99 * minmax[k]]) >= 2
    assert all(percentile[k] <= minmax[k] * 1.0001 for k in minmax)


def test_per_tensor_weights_and_excluded_nodes(tmp_path):
    from ltcompress.errors import UsageError

    fp32, batches = _tiny_fp32(tmp_path)
    nodes = quantize(fp32, iter(batches), tmp_path / "pc.onnx")
    convs = [n for n in nodes if "conv" in n.lower()]
    target = convs[len(convs) // 2]
    quantize(fp32, iter(batches), tmp_path / "pt.onnx", per_channel=False, exclude=(target,))
    graph = onnx.load(str(tmp_path / "pt.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    weight_scales = [
        inits[n.input[1]]
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
    ]
    assert weight_scales and all(len(s.dims) == 0 for s in weight_scales)  # one scale per tensor
    assert _dequantized_inputs(graph, target) == 0  # left in float
    assert _dequantized_inputs(onnx.load(str(tmp_path / "pc.onnx")).graph, target) > 0
    with pytest.raises(UsageError, match=f"did you mean {target!r}") as info:
        quantize(fp32, iter(batches), tmp_path / "bad.onnx", exclude=(target + "x",))
    assert info.value.exit_code == 2 and not (tmp_path / "bad.onnx").exists()


def test_a_misnamed_excluded_node_is_exit_2_before_any_training(tmp_path, capsys):
    from conftest import cli_exit, tiny_cli_args

    code = cli_exit(
        [
            "run",
            *tiny_cli_args(method="ce", name="nodes", runs_dir=str(tmp_path / "runs")),
            "--int8",
            "--set",
            'export.exclude_nodes=["no_such_conv"]',
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "export.exclude_nodes names node(s) the model does not have: 'no_such_conv'" in err
    assert not (tmp_path / "runs" / "nodes").exists()  # nothing trained, nothing written
