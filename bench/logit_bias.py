"""The logit bias correction alone, without the repair's evidence or its acceptance rule: what adding each output's
class-balanced mean FP32-minus-INT8 shift (measured on the run's training images) does to the test set's drops.

    python bench/logit_bias.py RUN_DIR [RUN_DIR ...] [--methods minmax entropy percentile minmax:head:per-tensor]

Each RUN_DIR is a finished `ltcompress run` (as for bench/deploy.py). For every INT8 variant the drops (points,
against the run's own FP32, on the full test split with ONNX Runtime) are printed without and with the offset.
The repair keeps the offset only when it lowers the divergence on its evidence; this shows why it must ask.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from deploy import load_run, variant

from ltcompress.inference import ort_logits
from ltcompress.metrics import summarize
from ltcompress.onnx_export import int8
from ltcompress.repair import logit_shift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--methods", nargs="+", default=["minmax", "entropy", "percentile", "minmax:head:per-tensor"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ltcompress-bias-"))
    print("| run | INT8 variant | Few drop | with offset | worst drop | with offset | balanced drop | with offset |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        report, _, data, groups, _ = load_run(run)
        seed = report["config"]["run"]["seed"]

        train_fp32 = ort_logits(run / "student.onnx", data.train, data, 256)
        fp32 = summarize(
            ort_logits(run / "student.onnx", data.test, data, 256).argmax(1), data.test.labels, groups, data.class_names
        )
        for method in args.methods:
            path = work / f"{run.name}-{method.replace(':', '-')}.onnx"
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                int8(run / "student.onnx", data, variant(method), seed, path, Path(tmp))
            bias = logit_shift(train_fp32, ort_logits(path, data.train, data, 256), data.train.labels)
            test = ort_logits(path, data.test, data, 256)
            plain, corrected = (
                summarize(z.argmax(1), data.test.labels, groups, data.class_names) for z in (test, test + bias)
            )
            cells = [
                f"{100 * (fp32.value(k) - m.value(k)):.2f}"
                for k in ("few", "worst", "balanced")
                for m in (plain, corrected)
            ]
            print(f"| {run.name} | {method} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
