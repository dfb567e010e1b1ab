"""Run an exported ltcompress bundle on a device that has only onnxruntime, numpy and pillow (no torch, no
ltcompress): classify a folder of images and count the predictions per class.

    pip install onnxruntime numpy pillow
    python edge_inference.py BUNDLE_DIR IMAGES_DIR [--int8] [--json predictions.json]

The bundle carries its own runtime (bundle/export/runtime.py) and preprocessing (preprocess.json); this script
loads that runtime from the bundle, so the images are prepared exactly as they were when the model was verified.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import sys
import time
from pathlib import Path


def load_runtime(bundle: Path):
    """Import bundle/export/runtime.py (shipped inside the bundle) as a module."""
    spec = importlib.util.spec_from_file_location("bundle_runtime", bundle / "export" / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--int8", action="store_true", help="use model.int8.onnx (when the bundle has it)")
    parser.add_argument("--json", type=Path, help="write every prediction to this file")
    args = parser.parse_args()
    runtime = load_runtime(args.bundle)
    model = "model.int8.onnx" if args.int8 else "model.onnx"
    if not (args.bundle / model).is_file():
        print(
            f"error: {args.bundle / model} does not exist (run ltcompress with --int8 for an INT8 model)",
            file=sys.stderr,
        )
        return 2
    bundle = runtime.Bundle(args.bundle, model)
    paths = runtime.expand([str(args.images)])
    start = time.perf_counter()
    results = bundle.classify(paths)
    seconds = time.perf_counter() - start
    counts = collections.Counter(r["label"] for r in results)
    print(f"{len(results)} images with {model} in {seconds:.2f} s ({len(results) / max(seconds, 1e-9):.0f} img/s)")
    for label in bundle.labels:
        print(f"  {label:<20} {counts.get(label, 0)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
