"""The edge runtime's preprocessing (which ltcompress also evaluates with) against timm's own transforms, and
timm's training transforms as ltcompress.data.transforms wraps them, on real JPEG and PNG files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ltcompress.metadata import preprocess
from ltcompress.config import recipe_data
from ltcompress.data.core import InputSpec
from ltcompress.data.transforms import BatchAugment, eval_transform, seeded, train_transform
from ltcompress.errors import UsageError

RUNTIME = Path(__file__).resolve().parent.parent / "export" / "runtime.py"


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth scene plus noise, so resampling filters and crop offsets all show in the pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w) + 64 * np.sin(xx / 7.0)], axis=-1)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def write_photos(folder: Path) -> list[Path]:
    """Odd sizes and aspect ratios, in every mode a real folder of photos turns up with."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = {(h, w): Image.fromarray(_photo(h, w, h + w)) for h, w in ((517, 301), (211, 640), (97, 97), (77, 120))}
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (211, 1)))
    rgba = rgb[(211, 640)].copy()
    rgba.putalpha(alpha)
    files = {
        "rgb_301x517.jpg": rgb[(517, 301)],
        "gray_640x211.jpg": rgb[(211, 640)].convert("L"),
        "rgb_97x97.png": rgb[(97, 97)],
        "gray_301x517.png": rgb[(517, 301)].convert("L"),
        "rgba_640x211.png": rgba,
        "palette_97x97.png": rgb[(97, 97)].quantize(64),
        "la_120x77.png": rgb[(77, 120)].convert("LA"),
        "cmyk_120x77.jpg": rgb[(77, 120)].convert("CMYK"),
        "gray16_301x517.png": Image.fromarray(
            (np.asarray(rgb[(517, 301)].convert("L")).astype(np.uint16) * 257 + 100).clip(0, 65535).astype(np.uint16)
        ),
    }
    paths = []
    for name, img in files.items():
        extra = {"quality": 90} if name.endswith(".jpg") else {"transparency": 0} if img.mode == "P" else {}
        img.save(folder / name, **extra)
        paths.append(folder / name)
    modes = set()
    for path in paths:
        with Image.open(path) as img:
            modes.add(img.mode)
    assert {"RGB", "L", "RGBA", "P", "LA", "CMYK", "I;16"} <= modes, modes
    return paths


def specs() -> list[InputSpec]:
    rgb, gray = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,), (0.25,))
    out = []
    for mode, channels, (mean, std) in (("RGB", 3, rgb), ("L", 1, gray), ("L", 3, (rgb[0], rgb[1]))):
        for size, crop_pct, interp in (
            (224, 0.875, "bilinear"),
            (224, 1.0, "bicubic"),
            (64, 0.875, "bicubic"),
            (64, 1.0, "bilinear"),
            (64, 1.15, "bilinear"),
        ):
            out.append(InputSpec(size, channels, mean, std, mode, size, "crop", crop_pct, interp))
        out.append(InputSpec(64, channels, mean, std, mode, 48, "pad"))
        out.append(InputSpec(97, channels, mean, std, mode, 97, "pad"))
    return out


def reference(spec: InputSpec, image: Image.Image) -> np.ndarray:
    """What the runtime must compute, made another way: timm's own evaluation transform (torchvision) for the
    crop geometry; a PIL resize and numpy padding written out here for the pad geometry."""
    from timm.data import create_transform

    from ltcompress.edge.runtime import to_mode

    img = to_mode(image, spec.source_mode)
    if spec.geometry == "crop":
        out = create_transform(
            spec.size, is_training=False, use_prefetcher=True, crop_pct=spec.crop_pct, interpolation=spec.interpolation
        )(img).numpy()
    else:
        img = img.resize((spec.source_size, spec.source_size), Image.BILINEAR)
        arr = np.asarray(img)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        out = np.zeros((arr.shape[0], spec.size, spec.size), np.uint8)
        top = left = (spec.size - spec.source_size) // 2
        out[:, top : top + spec.source_size, left : left + spec.source_size] = arr
    return np.repeat(out, spec.channels, axis=0) if out.shape[0] < spec.channels else out


def test_runtime_preprocessing_is_timms_evaluation_transform_byte_for_byte(tmp_path):
    """The bundle side (PIL + numpy, torch blocked) gives timm's uint8 input for every file, mode and geometry;
    ltcompress evaluates its models through the same function; preprocess.json is what `metadata.preprocess`
    writes."""
    paths = write_photos(tmp_path / "photos")
    pres = [preprocess(SimpleNamespace(spec=s)) for s in specs()]
    (tmp_path / "pres.json").write_text(json.dumps(pres))
    script = (
        "import importlib.util, json, sys\nimport numpy as np\nfrom PIL import Image\n"
        "assert 'torch' not in sys.modules\n"
        f"spec = importlib.util.spec_from_file_location('runtime', {str(RUNTIME)!r})\n"
        "rt = importlib.util.module_from_spec(spec); spec.loader.exec_module(rt)\n"
        "pres = json.load(open('pres.json'))\n"
        f"paths = {[str(p) for p in paths]!r}\n"
        "images = [Image.open(p) for p in paths]\n"
        "out = {f'{i}:{j}': rt.pixels(img, pre) for i, pre in enumerate(pres) for j, img in enumerate(images)}\n"
        "np.savez('runtime.npz', **out)\n"
    )
    blocker = tmp_path / "no_torch"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is not on this device')\n")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(blocker)},
    )
    assert proc.returncode == 0, proc.stderr
    runtime = np.load(tmp_path / "runtime.npz")
    for i, spec in enumerate(specs()):
        tf = eval_transform(spec)
        for j, path in enumerate(paths):
            with Image.open(path) as img:
                expected, ours = reference(spec, img), tf(img)
            assert ours.dtype == np.uint8 and ours.shape == (spec.channels, spec.size, spec.size)
            assert np.array_equal(runtime[f"{i}:{j}"], expected), (spec, path.name)
            assert np.array_equal(ours, expected), (spec, path.name)


def test_crop_geometry_is_timm_eval_and_pad_keeps_the_legacy_path(tmp_path):
    from timm.data import create_transform

    from ltcompress.edge.runtime import Bundle

    path = write_photos(tmp_path)[0]  # RGB 301x517 JPEG
    spec = InputSpec(64, 3, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "RGB", 64, "crop", 0.875, "bicubic")
    timm_eval = create_transform(64, crop_pct=0.875, interpolation="bicubic", use_prefetcher=True)
    with Image.open(path) as img:
        timm_out = timm_eval(img.convert("RGB"))
        assert np.array_equal(eval_transform(spec)(img), timm_out.numpy())
        bundle = Bundle.__new__(Bundle)  # preprocessing only: no model needed
        bundle.pre = preprocess(SimpleNamespace(spec=spec))
        mean, std = np.float32(spec.mean)[:, None, None], np.float32(spec.std)[:, None, None]
        expected = (timm_out.numpy().astype(np.float32) / 255.0 - mean) / std
        np.testing.assert_allclose(bundle.preprocess(img), expected, rtol=0, atol=1e-6)
        legacy = {k: v for k, v in bundle.pre.items() if k not in ("geometry", "crop_pct", "interpolation")}
        bundle.pre = {**legacy, "source_size": 48}  # a preprocess.json written before geometry existed: pad
        pad = eval_transform(InputSpec(64, 3, spec.mean, spec.std, "RGB", 48))(img)
        assert np.array_equal(pad, reference(InputSpec(64, 3, spec.mean, spec.std, "RGB", 48), img))
        np.testing.assert_allclose(bundle.preprocess(img), (pad / np.float32(255.0) - mean) / std, atol=1e-6)


@pytest.mark.parametrize(
    "mode,channels,aa",
    [("RGB", 3, None), ("RGB", 3, "rand-m9-mstd0.5"), ("L", 3, "trivialaugment"), ("L", 1, "augmix-m5-w3")],
)
def test_train_transform_shape_and_determinism_under_seeded(tmp_path, mode, channels, aa):
    path = write_photos(tmp_path)[0]
    spec = InputSpec(48, channels, (0.5,) * channels, (0.25,) * channels, mode, 48, "crop", 0.875, "bicubic")
    tf = train_transform(spec, recipe_data(augment="timm", auto_augment=aa))
    with Image.open(path) as img:
        img.load()
    outs = {}
    for key in ((0, 0, 0, 5), (0, 0, 0, 5), (0, 1, 0, 5), (1, 0, 0, 5)):
        with seeded(*key):
            outs.setdefault(key, []).append(tf(img))
    a, b = outs[(0, 0, 0, 5)]
    assert a.dtype == np.uint8 and a.shape == (channels, 48, 48)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, outs[(0, 1, 0, 5)][0]) and not np.array_equal(a, outs[(1, 0, 0, 5)][0])
    if mode == "L" and channels == 3:
        assert np.array_equal(a[0], a[1]) and np.array_equal(a[0], a[2])


def test_unknown_auto_augment_is_a_usage_error():
    spec = InputSpec(32, 3, (0.5,) * 3, (0.25,) * 3, "RGB", 32, "crop")
    with pytest.raises(UsageError, match="auto_augment"):
        train_transform(spec, recipe_data(auto_augment="randaugment-please"))


def test_seeded_restores_the_global_generators():
    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = draws()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with seeded(3, 1, 4):
        inside = draws()
    assert draws() == expected
    with seeded(3, 1, 4):
        assert draws() == inside
    with seeded(3, 1, 5):
        assert draws() != inside


def test_batch_augment_mixup_cutmix_erasing_and_off():
    x = torch.randn(6, 3, 16, 16)
    y = torch.arange(6)
    off = BatchAugment(recipe_data(), 10, "cpu")
    out, y_b, lam = off(x.clone(), y, (0, 0))
    assert not off.enabled and torch.equal(out, x) and y_b is None and lam == 1.0

    mix = BatchAugment(recipe_data(mixup=0.8), 10, "cpu")
    out, y_b, lam = mix(x.clone(), y, (0, 1, 2))
    assert mix.enabled and 0.0 <= lam < 1.0 and torch.equal(y_b, y.flip(0))
    torch.testing.assert_close(out, lam * x + (1 - lam) * x.flip(0))
    again, _, lam2 = mix(x.clone(), y, (0, 1, 2))
    assert torch.equal(again, out) and lam2 == lam
    assert mix(x.clone(), y, (0, 1, 3))[2] != lam

    cut = BatchAugment(recipe_data(cutmix=1.0), 10, "cpu")
    out, y_b, lam = cut(x.clone(), y, (7,))
    pasted = (out != x).any(dim=1)[0]  # the box taken from the paired sample
    assert torch.equal(y_b, y.flip(0)) and lam == pytest.approx(1 - pasted.float().mean().item())

    odd = torch.randn(5, 3, 8, 8)
    out, y_b, lam = mix(odd.clone(), y[:5], (1,))
    assert torch.equal(y_b, y[:5].flip(0)) and torch.allclose(out[2], odd[2])  # the middle pairs with itself

    erase = BatchAugment(recipe_data(re_prob=1.0), 10, "cpu")
    out, y_b, lam = erase(x.clone(), y, (0,))
    assert y_b is None and lam == 1.0 and not torch.equal(out, x)
    assert torch.equal(erase(x.clone(), y, (0,))[0], out)


def test_transforms_pickle_for_spawned_workers(tmp_path):
    import pickle

    path = write_photos(tmp_path)[2]
    spec = InputSpec(32, 3, (0.5,) * 3, (0.25,) * 3, "RGB", 32, "crop", 0.875, "bicubic")
    for tf in (
        eval_transform(spec),
        eval_transform(InputSpec(128, 3, (0.5,) * 3, (0.25,) * 3, "RGB", 97)),
        train_transform(spec, recipe_data(auto_augment="rand-m9-mstd0.5")),
    ):
        copy = pickle.loads(pickle.dumps(tf))
        with Image.open(path) as img, seeded(4):
            a = tf(img)
        with Image.open(path) as img, seeded(4):
            assert np.array_equal(copy(img), a)
