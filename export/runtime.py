"""Classify images with an ltcompress bundle, using only onnxruntime, numpy and pillow (no torch).

    python export/runtime.py IMAGE_OR_FOLDER [...] [--bundle DIR] [--model model.onnx] [--json OUT]

Run from inside a bundle, ``--bundle`` defaults to the folder above this file. Prints one JSON object per image
(path, label, class index, probability) or writes them all to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class Bundle:
    """A loaded bundle: the ONNX model, its labels and the exact preprocessing it was verified with."""

    def __init__(self, folder: str | Path, model: str = "model.onnx") -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.labels: list[str] = json.loads((self.folder / "labels.json").read_text())
        self.pre: dict[str, Any] = json.loads((self.folder / "preprocess.json").read_text())
        self.session = ort.InferenceSession(str(self.folder / model), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image -> float32 [C, H, W]: source mode and size, centred zero padding, channels, mean/std."""
        p = self.pre
        img = image.convert(p["source_mode"])
        if img.size != (p["source_size"], p["source_size"]):
            img = img.resize((p["source_size"], p["source_size"]), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        size, (h, w) = p["input_size"], arr.shape[1:]
        canvas = np.zeros((arr.shape[0], size, size), dtype=np.uint8)
        top, left = (size - h) // 2, (size - w) // 2
        canvas[:, top:top + h, left:left + w] = arr
        if canvas.shape[0] == 1 and p["channels"] > 1:
            canvas = np.repeat(canvas, p["channels"], axis=0)
        x = canvas.astype(np.float32) / 255.0
        mean = np.asarray(p["mean"], dtype=np.float32)[:, None, None]
        std = np.asarray(p["std"], dtype=np.float32)[:, None, None]
        return (x - mean) / std

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch.astype(np.float32)})[0]

    def classify(self, paths: list[Path], batch_size: int = 64) -> list[dict[str, Any]]:
        results = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            batch = np.stack([self.preprocess(Image.open(p)) for p in chunk])
            z = self.logits(batch)
            z = z - z.max(axis=1, keepdims=True)
            prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            for path, row in zip(chunk, prob):
                k = int(row.argmax())
                results.append({"path": str(path), "class_index": k, "label": self.labels[k],
                                "probability": float(row[k])})
        return results


def expand(inputs: Iterable[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with an ltcompress bundle (no torch needed).")
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--bundle", default=str(Path(__file__).resolve().parent.parent),
                        help="bundle folder (default: the folder above this script)")
    parser.add_argument("--model", default="model.onnx", help="model file inside the bundle")
    parser.add_argument("--json", dest="json_out", help="write all results to this JSON file")
    args = parser.parse_args(argv)
    try:
        bundle = Bundle(args.bundle, args.model)
        results = bundle.classify(expand(args.inputs))
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    else:
        for r in results:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
