"""The value checks every resolved configuration passes (ranges, choices, combinations), each failing with one
line naming the key and what it accepts: exit 2 before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ltcompress.errors import UsageError

# config imports this module and never the other way round, so the configs arrive untyped here (Any): a
# resolved CompressConfig, its ExportConfig, its TrainConfigs

INITS = ("auto", "pretrained", "scratch")  # where a model's training starts (or a weights file's path)
CALIBRATIONS = ("stratified", "random", "head")  # how INT8 calibration images are drawn from the training set
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # how ONNX Runtime turns activations into ranges
REBALANCE = ("none", "tau-norm", "crt")  # classifier re-balancing of a teacher after its training


def recipes(cfg: Any) -> tuple[tuple[str, Any], ...]:
    """Every training recipe with its dotted key, for checks that apply to all of them."""
    return (
        ("teacher.train", cfg.teacher.train),
        ("teacher.finetune", cfg.teacher.finetune),
        ("student.train", cfg.student.train),
        ("student.finetune", cfg.student.finetune),
    )


def check_values(cfg: Any) -> None:
    """UsageError (exit 2) for the first value out of its range or choices."""

    def init_ok(init: str) -> bool:  # a named start, or a weights file to start from
        return init in INITS or Path(init).expanduser().is_file()

    checks = [
        (
            init_ok(cfg.teacher.init),
            f"teacher.init must be auto, pretrained, scratch or a weights file (no such file: {cfg.teacher.init!r})",
        ),
        (
            init_ok(cfg.student.init),
            f"student.init must be auto, pretrained, scratch or a weights file (no such file: {cfg.student.init!r})",
        ),
        (
            cfg.student.weights is None or Path(cfg.student.weights).expanduser().is_file(),
            f"student.weights (--student-weights) {cfg.student.weights} does not exist",
        ),
        (cfg.data.profile in ("exp", "step"), "data.profile must be exp or step"),
        (cfg.data.n_max is None or cfg.data.n_max >= 1, "data.n_max must be at least 1"),
        (cfg.data.imbalance is None or cfg.data.imbalance >= 1, "data.imbalance must be at least 1"),
        (cfg.data.few_threshold <= cfg.data.many_threshold, "data.few_threshold must not exceed many_threshold"),
        (cfg.data.test_per_class is None or cfg.data.test_per_class >= 1, "data.test_per_class must be >= 1"),
        (cfg.data.input_size is None or cfg.data.input_size >= 16, "data.input_size must be auto or at least 16"),
        (cfg.data.geometry in ("auto", "crop", "pad"), "data.geometry must be auto, crop or pad"),
        (
            cfg.data.source_size is None or cfg.data.source_size >= 1,
            "data.source_size must be at least 1 (or null: input_size)",
        ),
        (
            cfg.data.crop_scale is None or 0 < cfg.data.crop_scale <= 1,
            "data.crop_scale must be in (0, 1] (or null: fitted to the input size)",
        ),
        (cfg.export.calibration in CALIBRATIONS, f"export.calibration must be one of {', '.join(CALIBRATIONS)}"),
        (cfg.export.calibration_size >= 1, "export.calibration_size must be at least 1"),
        (
            cfg.export.calibration_method in CALIBRATION_METHODS,
            f"export.calibration_method must be one of {', '.join(CALIBRATION_METHODS)}",
        ),
        (cfg.export.calibration_bins >= 256, "export.calibration_bins must be at least 256 (entropy searches 128)"),
        *_repair_checks(cfg.export),
    ]
    for where, section in recipes(cfg):
        checks += [
            (section.epochs >= 1, f"{where}.epochs must be at least 1"),
            (section.batch_size >= 2, f"{where}.batch_size must be at least 2"),
            (section.lr > 0, f"{where}.lr must be positive"),
            (section.grad_clip is None or section.grad_clip > 0, f"{where}.grad_clip must be positive (or null)"),
            (
                section.gpu_batch_size is None or section.gpu_batch_size >= 2,
                f"{where}.gpu_batch_size must be at least 2 (or null: the same batch on a GPU)",
            ),
        ]
    for ok, message in checks + _data_checks(cfg):
        if not ok:
            raise UsageError(message)


def _repair_checks(e: Any) -> list[tuple[bool, str]]:
    return [
        (
            e.int8 or not e.int8_repair,
            "export.int8_repair repairs the INT8 model: turn it on with --int8 (or --int8-repair, which does both)",
        ),
        (
            e.repair_budget >= 1,
            f"export.repair_budget is {e.repair_budget}: it counts the nodes the INT8 repair "
            f"may return to FP32 and must be at least 1 (turn the repair off instead)",
        ),
        (e.speed_budget_s >= 0, "export.speed_budget_s must be 0 (do not measure) or more"),
        (e.repair_max_size >= 1, "export.repair_max_size must be at least 1 (times the INT8 file's size)"),
        (e.repair_views >= 1, "export.repair_views must be at least 1 (evidence views per gated class)"),
        (e.repair_max_views >= 1, "export.repair_max_views must be at least 1 (evidence views in all)"),
        (
            0.5 <= e.repair_confidence < 1,
            "export.repair_confidence must be in [0.5, 1) (the one-sided confidence a gate must fail with on the "
            "repair's evidence to be acted on)",
        ),
        (e.repair_seconds > 0, "export.repair_seconds must be more than 0 (the repair's time budget)"),
    ]


def _data_checks(cfg: Any) -> list[tuple[bool, str]]:
    d = cfg.data
    return (
        [
            (d.in_memory in ("auto", True, False), "data.in_memory must be auto, true or false"),
            (d.memory_budget_gb > 0, "data.memory_budget_gb must be positive"),
            (d.workers is None or d.workers >= 0, "data.workers must be 0 (decode in the main process) or more"),
            (d.prefetch >= 1, "data.prefetch must be at least 1"),
            (d.normalize in ("auto", "sample", "pretrained"), "data.normalize must be auto, sample or pretrained"),
            (d.stats_sample >= 1, "data.stats_sample must be at least 1"),
            (d.augment in ("auto", "crop_flip", "timm"), "data.augment must be auto, crop_flip or timm"),
            (d.unknown_test_classes in ("error", "exclude"), "data.unknown_test_classes must be error or exclude"),
            (d.crop_pct is None or 0 < d.crop_pct <= 1, "data.crop_pct must be in (0, 1]"),
            (d.interpolation in (None, "bilinear", "bicubic"), "data.interpolation must be bilinear or bicubic"),
            (0 <= d.re_prob <= 1, "data.re_prob must be in [0, 1]"),
            (d.mixup >= 0 and d.cutmix >= 0, "data.mixup and data.cutmix must be 0 (off) or positive"),
            (0 <= d.mix_prob <= 1, "data.mix_prob must be in [0, 1]"),
            (cfg.run.precision in ("auto", "bf16", "fp16", "fp32"), "run.precision must be auto, bf16, fp16 or fp32"),
        ]
        + [(0 <= t.warmup < 1, f"{where}.warmup must be in [0, 1)") for where, t in recipes(cfg)]
        + [(0 < t.ema_decay < 1, f"{where}.ema_decay must be in (0, 1)") for where, t in recipes(cfg)]
    )
