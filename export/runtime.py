"""Classify images with an ltcompress bundle, using only onnxruntime, numpy and pillow (no torch).

    python export/runtime.py IMAGE_OR_FOLDER [...] [--bundle DIR] [--model model.onnx] [--json OUT]

Run from inside a bundle, ``--bundle`` defaults to the folder above this file. Prints one JSON object per image
(path, label, class index, probability) or writes them all to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

# the image files a folder holds; ltcompress's imagefolder dataset reads this very set (one list, no drift)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}  # torchvision's PIL mapping


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """The one colour rule training and this runtime share: PIL's plain ``convert`` (alpha dropped, as timm's
    and torchvision's loaders do), except 16-bit gray ("I;16*", "I"), which PIL would clip at 255: its top
    8 bits are kept instead."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    return image if image.mode == mode else image.convert(mode)


def pixels(image: Image.Image, pre: dict[str, Any]) -> np.ndarray:
    """One image -> uint8 [channels, input_size, input_size], before mean/std: the evaluation preprocessing of
    the run (ltcompress evaluates its models on exactly this). ``geometry`` "pad" (the default for bundles
    written before it existed): resize to source_size (bilinear) when it differs, centred zero padding. "crop":
    timm's evaluation transform, exactly as torchvision runs it on a PIL image."""
    img = to_mode(image, pre["source_mode"])
    size = int(pre["input_size"])
    if pre.get("geometry", "pad") == "crop":
        arr = _resize_centre_crop(img, size, float(pre.get("crop_pct", 1.0)), pre.get("interpolation", "bilinear"))
    else:
        source = int(pre["source_size"])
        if img.size != (source, source):
            img = img.resize((source, source), Image.Resampling.BILINEAR)
        arr = pad_centre(chw(img), size)
    return repeat_gray(arr, int(pre["channels"]))


def chw(img: Image.Image) -> np.ndarray:
    """A PIL image as uint8 [c, h, w]."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def pad_centre(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 [..., c, h, w] -> [..., c, size, size]: centred zero padding (size >= h, w)."""
    h, w = arr.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((*arr.shape[:-2], size, size), dtype=np.uint8)
    out[..., top : top + h, left : left + w] = arr
    return out


def repeat_gray(arr: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [..., c, h, w]: a gray channel repeated to `channels` (a gray photo for an RGB model)."""
    if arr.shape[-3] == 1 and channels > 1:
        arr = np.repeat(arr, channels, axis=-3)
    return np.ascontiguousarray(arr)


def _resize_centre_crop(img: Image.Image, size: int, crop_pct: float, interpolation: str) -> np.ndarray:
    """timm ``transforms_imagenet_eval`` (crop_mode center) = torchvision Resize(floor(size / crop_pct)) on the
    shorter side + CenterCrop(size), with PIL + numpy: the same output-size rule, the same PIL resample
    call, the same crop rounding (and zero padding, only reachable with crop_pct > 1)."""
    scale = math.floor(size / crop_pct)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = scale, int(scale * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), RESAMPLE[interpolation])
    arr = chw(img)
    c, h, w = arr.shape
    if size > w or size > h:
        left, top = max(size - w, 0) // 2, max(size - h, 0) // 2
        padded = np.zeros((c, max(h, size), max(w, size)), dtype=np.uint8)
        padded[:, top : top + h, left : left + w] = arr
        arr, (c, h, w) = padded, padded.shape
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return arr[:, top : top + size, left : left + size]


class Bundle:
    """A loaded bundle: the ONNX model, its labels and the exact preprocessing it was verified with."""

    def __init__(self, folder: str | Path, model: str = "model.onnx") -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        self.session = ort.InferenceSession(str(self.folder / model), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels: list[str] = self._read(meta, "labels.json", "ltcompress.class_names", model)
        self.pre: dict[str, Any] = self._read(meta, "preprocess.json", "ltcompress.preprocess", model)

    def _read(self, meta: dict[str, str], side_file: str, key: str, model: str) -> Any:
        """From the model itself (ONNX metadata_props), so a bare .onnx file runs without its side files; the
        bundle's side file when the model has none; an error naming both otherwise, never a guess."""
        if key in meta:
            return json.loads(meta[key])
        if (self.folder / side_file).is_file():
            return json.loads((self.folder / side_file).read_text())
        raise ValueError(
            f"{self.folder / model} carries no {key} metadata and there is no {side_file} beside it; "
            f"use a model exported by ltcompress, or its bundle"
        )

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One image -> float32 [C, H, W]: the run's pixels (`pixels`), then mean/std."""
        x = pixels(image, self.pre).astype(np.float32) / 255.0
        mean = np.asarray(self.pre["mean"], dtype=np.float32)[:, None, None]
        std = np.asarray(self.pre["std"], dtype=np.float32)[:, None, None]
        return (x - mean) / std

    def logits(self, batch: np.ndarray) -> np.ndarray:
        logits: np.ndarray = self.session.run(None, {self.input_name: batch.astype(np.float32)})[0]
        return logits

    def classify(self, paths: list[Path], batch_size: int = 64) -> list[dict[str, Any]]:
        results = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            batch = np.stack([self.preprocess(Image.open(p)) for p in chunk])
            z = self.logits(batch)
            z = z - z.max(axis=1, keepdims=True)
            prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            for path, row in zip(chunk, prob):
                k = int(row.argmax())
                results.append(
                    {"path": str(path), "class_index": k, "label": self.labels[k], "probability": float(row[k])}
                )
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
    parser.add_argument(
        "--bundle",
        default=str(Path(__file__).resolve().parent.parent),
        help="bundle folder (default: the folder above this script)",
    )
    parser.add_argument(
        "--model",
        default="model.onnx",
        help="model file inside the bundle, or any path to an ltcompress .onnx file (its labels and "
        "preprocessing are read from the model itself)",
    )
    parser.add_argument("--json", dest="json_out", help="write all results to this JSON file")
    args = parser.parse_args(argv)
    try:
        model = Path(args.model)
        bundle = (
            Bundle(model.parent, model.name)
            if model.is_file() and model.parent != Path(".")
            else Bundle(args.bundle, args.model)
        )
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
