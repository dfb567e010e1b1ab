"""Compress a model for your own long-tailed image folder, gate it on the rare classes, and act on the result.

    python examples/compress_imagefolder.py DATA_DIR [--gate "few >= 0.6"] [--epochs 40]

DATA_DIR holds ``train/<class>/*.png`` and ``test/<class>/*.png`` (any image format PIL reads; the classes are
the folder names). The script distills resnet50 into mobilenetv3_small_100 with BKD, exports FP32 and INT8 ONNX
models, and then:

- every gate passed: prints where the edge bundle is, ready to copy to a device (exit 0);
- a gate failed: lists the failed gates and the classes that pull the tail down, most-hurt first, with their
  number of training images, so you know which classes need more data (exit 5, as `ltcompress run` would);
- an error (bad data, bad option): one line and its exit code.
"""

from __future__ import annotations

import argparse
import sys

from ltcompress import LTCompressError, compress


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument(
        "--gate",
        action="append",
        dest="gates",
        default=None,
        help="repeatable (default: 'int8.few >= 0.6' and 'drop(fp32, int8).few <= 0.02')",
    )
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--student", default="mobilenetv3_small_100")
    parser.add_argument("--method", default="bkd")
    parser.add_argument("--epochs", type=int, help="student epochs (default: the photos recipe's)")
    parser.add_argument("--teacher-epochs", type=int, help="teacher epochs (default: the photos recipe's)")
    parser.add_argument("--input-size", type=int, help="default: fitted to the images by the photos recipe")
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args()
    gates = args.gates or ["int8.few >= 0.6", "drop(fp32, int8).few <= 0.02"]

    try:
        result = compress(
            teacher=args.teacher,
            student=args.student,
            method=args.method,
            dataset="imagefolder",
            data_dir=args.data_dir,
            gates=gates,
            int8=True,
            runs_dir=args.runs_dir,
            epochs=args.epochs,
            teacher_epochs=args.teacher_epochs,
            overrides={"data.input_size": args.input_size} if args.input_size else None,
        )
    except LTCompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    assert result is not None  # None only on torchrun ranks other than 0

    int8 = result.metrics["int8"]
    print(
        f"INT8 model: balanced {int8.balanced:.3f}, Few {int8.few}, worst class {int8.worst_class} "
        f"({int8.worst:.3f}); report: {result.run_dir / 'report.html'}"
    )
    if result.passed:
        print(f"all {len(result.gates)} gates passed; copy {result.bundle_dir} to the device")
        return 0

    for gate in result.failed_gates:
        print(f"FAILED {gate.gate.expr}: {gate.gate.subject} = {gate.value}")
    counts = dict(zip(result.report.data["class_names"], result.report.data["class_counts"]))
    measured = [(name, acc) for name, acc in int8.per_class.items() if acc is not None]
    weakest = sorted(measured, key=lambda kv: kv[1])[:3]
    print("classes to look at first (INT8 accuracy, training images):")
    for name, acc in weakest:
        print(f"  {name}: {acc:.3f} with {counts[name]} training images")
    return 5


if __name__ == "__main__":
    sys.exit(main())
