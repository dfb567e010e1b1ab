"""Deployment benchmark on finished runs: student FP32 against INT8 with each calibration method and against
repaired INT8 (size, ONNX Runtime latency at batch 1 and 32, balanced / Few / worst), one table per run and a
summary over the runs (the seeds); optionally the teacher and a calibration-sample sweep.

    python bench/deploy.py RUN_DIR [RUN_DIR ...] [--methods minmax entropy percentile] [--repair]
                           [--teacher] [--sizes 64 256 512 1024] [--seeds 0 1 2] [--threads 0]

Each RUN_DIR is a finished `ltcompress run` (its student.onnx and report.json are used; the data is loaded as
the run loaded it). `--repair` repairs each INT8 model toward the run's own int8 gates, judging on the evidence
the run would (augmented views of the gated classes' training images, or data.val_list's); the gates' verdicts
below are on the test set, which no decision used: the targets are that no INT8 model passing its test-set
gates is made to fail, and that every one failing them passes after the repair, within 1.5x its size.
Latencies are medians of repeated runs in one process, so ratios between models are comparable on a noisy
machine; accuracies are on the full test split, with ONNX Runtime.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import yaml

from ltcompress import config as config_mod
from ltcompress import data as data_stage
from ltcompress import evidence
from ltcompress import gates as gate_mod
from ltcompress import repair as repair_stage
from ltcompress.config import ExportConfig
from ltcompress.metrics import summarize
from ltcompress.onnx_export import export, int8
from ltcompress.rundir import cache_root
from ltcompress.teacher import load_weights_file
from ltcompress.values import coerce
from ltcompress.inference import latency_ms, ort_logits

COLUMNS = ("overall", "balanced", "few", "worst")


def predict(path: Path, data: data_stage.LTData) -> np.ndarray:
    return ort_logits(path, data.test, data, 256).argmax(1)


def accuracy(path: Path, data: data_stage.LTData, groups: dict) -> dict:
    return summarize(predict(path, data), data.test.labels, groups, data.class_names)


def measure(path: Path, data: data_stage.LTData, groups: dict, threads: int, budget: float) -> dict[str, Any]:
    shape = (data.spec.channels, data.spec.size, data.spec.size)
    pred = predict(path, data)
    m = summarize(pred, data.test.labels, groups, data.class_names)
    return {
        "pred": pred,
        "metrics": m,
        "mb": path.stat().st_size / 1e6,
        **{c: m.value(c) for c in COLUMNS},
        "b1": latency_ms(path, np.zeros((1, *shape), np.float32), budget, threads),
        "b32": latency_ms(path, np.zeros((32, *shape), np.float32), budget, threads),
    }


def load_run(run: Path) -> tuple[dict, config_mod.CompressConfig, data_stage.LTData, dict, list]:
    """The run's report, config, data (an older run's held-out slice set aside again), groups and int8 gates on
    the exported stages."""
    report = json.loads((run / "report.json").read_text())
    saved = report["config"]
    cfg = config_mod.resolve(None, {f"data.{k}": v for k, v in saved["data"].items()})
    data = data_stage.load(cfg.data, cache_root(cfg.run.cache_dir))
    gates = [
        g for g in evidence.int8_gates([gate_mod.parse(g) for g in saved["gates"]]) if set(g.stages) <= {"fp32", "int8"}
    ]
    held = report["data"].get("held_out") or {}
    if held.get("share"):  # a run of the earlier repair, which trained without this slice
        data = data_stage.hold_out(data, held["share"], held["seed"])
    groups = data_stage.shot_groups(data.class_counts, cfg.data.many_threshold, cfg.data.few_threshold)
    return report, cfg, data, groups, gates


def fmnist_held_out(data: data_stage.LTData, cfg: config_mod.DataConfig, per_class: int) -> data_stage.LTData:
    """`data` with `per_class` Fashion-MNIST training images of each class that the long-tailed subset left
    out as its held-out images (data.val): what a user's data.val_list gives the repair, never trained on and
    not the test set."""
    from ltcompress.data import core, fmnist

    files = fmnist.locate_fmnist(cfg.data_dir, cache_root(None), False)
    images, labels = (
        fmnist._read_idx(files["train_images"], "images"),
        fmnist._read_idx(files["train_labels"], "labels"),
    )
    counts = core.longtail_counts(cfg.n_max, len(data.class_names), cfg.imbalance, cfg.profile)
    used = core.longtail_indices(labels, counts, cfg.seed)
    unused = np.setdiff1d(np.arange(len(labels)), used)
    rng = np.random.default_rng(12345)
    pick = np.concatenate([rng.permutation(unused[labels[unused] == c])[:per_class] for c in range(len(counts))])
    mode, size = core.source_mode(1, cfg.channels), cfg.size if cfg.resize else 28
    again = core.from_arrays(images[used[:8]], mode, size, cfg.size, cfg.channels)
    if data.train.images is None or not np.array_equal(again, data.train.images[:8]):
        raise SystemExit("--held-out: the run's training images are not the ones rebuilt here")
    val = core.Split(core.from_arrays(images[pick], mode, size, cfg.size, cfg.channels), labels[pick].astype(np.int64))
    source = f"{per_class} Fashion-MNIST training images per class that the long-tailed subset left out"
    return dataclasses.replace(data, val=val, val_source=source)


def bench_run(run: Path, args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Every model of one run, measured; returns label -> measurements."""
    report, cfg, data, groups, gates = load_run(run)
    if args.held_out:
        data = fmnist_held_out(data, cfg.data, args.held_out)
    saved, seed = report["config"], report["config"]["run"]["seed"]
    print(
        f"run {run.name}: {saved['method']['name']} on {cfg.data.dataset}, {len(data.train)} train / "
        f"{len(data.test)} test images, {data.spec.size} px, held out: {data.val_source or 'none'}; int8 gates: "
        f"{', '.join(g.expr for g in gates) or 'none'}\n",
        flush=True,
    )
    models: dict[str, Path] = {"student FP32": run / "student.onnx"}
    if args.teacher:
        arch = saved["resolved"]["teacher_arch"]
        teacher = load_weights_file(arch, run / "teacher.safetensors", data.num_classes, data.spec.channels)
        models = {f"teacher ({arch}) FP32": export(teacher, data.spec, work / "teacher.onnx", 18), **models}
    repairs: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        export_cfg = dataclasses.replace(variant(method), **dict(args.repair_set))
        path = work / f"{run.name}-{method.replace(':', '-')}.onnx"
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            quantizer, _ = int8(run / "student.onnx", data, export_cfg, seed, path, Path(tmp))
            models[f"INT8 {method}"] = path
            if args.repair and gates:
                fixed = path.with_name(path.stem + "-repaired.onnx")
                fixed.write_bytes(path.read_bytes())
                seen = evidence.collect(
                    data, gates, groups, export_cfg, seed, run / "student.onnx", {}, torch.device("cpu")
                )
                repairs[method] = repair_stage.repair(
                    quantizer, fixed, seen, data, groups, gates, export_cfg, Path(tmp)
                ).to_dict()
                models[f"INT8 {method} repaired"] = fixed
    measured = {}
    for label, path in models.items():
        measured[label] = measure(path, data, groups, args.threads, args.budget)
        print(f"  measured {label}", file=sys.stderr, flush=True)
    for label, r in measured.items():
        r["repair"] = repairs.get(label.split()[1]) if label.endswith("repaired") else None
        r["gates"] = test_gates(gates, measured["student FP32"], r, data, groups) if label.startswith("INT8") else None
    print_table(measured, repairs)
    if args.sizes:
        calibration_sweep(models["student FP32"], data, groups, args, work, measured["student FP32"])
    return measured


def export_setting(text: str) -> tuple[str, Any]:
    """`repair_budget=16` -> ("repair_budget", 16), typed as ExportConfig's field."""
    key, _, value = text.partition("=")
    hints = typing.get_type_hints(ExportConfig)
    if key not in hints:
        raise argparse.ArgumentTypeError(f"{key!r} is not an export setting")
    return key, coerce(yaml.safe_load(value), hints[key], f"export.{key}")


def variant(spec: str) -> ExportConfig:
    """`method[:calibration[:per-tensor]]`, e.g. `entropy` or `minmax:head:per-tensor` (ranges from the head
    classes alone, one weight range per tensor: a calibration that hurts the tail, for the repair to mend)."""
    method, calibration, weights = (spec.split(":") + ["stratified", "per-channel"][spec.count(":") :])[:3]
    if (
        method not in config_mod.CALIBRATION_METHODS
        or calibration not in config_mod.CALIBRATIONS
        or weights not in ("per-channel", "per-tensor")
    ):
        raise SystemExit(
            f"--methods {spec!r}: expected method[:calibration[:per-tensor]] with method in "
            f"{config_mod.CALIBRATION_METHODS} and calibration in {config_mod.CALIBRATIONS}"
        )
    return dataclasses.replace(
        ExportConfig(), calibration_method=method, calibration=calibration, per_channel=weights == "per-channel"
    )


def test_gates(
    gates: list, fp32: dict[str, Any], int8_model: dict[str, Any], data: data_stage.LTData, groups: dict
) -> bool:
    """Whether an INT8 model passes the run's int8 gates on the test set."""
    stages = {"fp32": fp32["metrics"], "int8": int8_model["metrics"]}
    preds = {"fp32": fp32["pred"], "int8": int8_model["pred"]}
    results = gate_mod.evaluate(gates, stages, preds, data.test.labels, groups, data.class_names)
    return all(r.passed for r in results)


def print_table(measured: dict[str, dict[str, Any]], repairs: dict[str, dict[str, Any]]) -> None:
    fp = measured["student FP32"]
    print(
        "| model | size (MB) | batch-1 ms | batch-32 ms | "
        + " | ".join(COLUMNS)
        + " | Few drop | worst drop | FP32 nodes | test gates |"
    )
    print("|---|---:|---:|---:|" + "---:|" * (len(COLUMNS) + 3) + "---|")
    for label, r in measured.items():
        method = label.split()[1] if label.endswith("repaired") else None  # "INT8 <variant> repaired"
        nodes = str(len(repairs[method]["nodes"])) if method else ""
        drops = (
            f"{100 * (fp['few'] - r['few']):.2f} | {100 * (fp['worst'] - r['worst']):.2f}"
            if label != "student FP32" and not label.startswith("teacher")
            else " | "
        )
        print(
            f"| {label} | {r['mb']:.2f} | {r['b1']:.3f} | {r['b32']:.2f} | "
            + " | ".join(f"{100 * r[c]:.1f}" for c in COLUMNS)
            + f" | {drops} | {nodes} | {'' if r['gates'] is None else 'pass' if r['gates'] else 'FAIL'} |"
        )
    for method, rep in repairs.items():
        ev = rep["evidence"]
        print(
            f"\nrepair of INT8 {method} ({rep['seconds']:.0f} s, {rep['trials']} trials; evidence {ev['images']} "
            f"images, {ev['views']} views): before {fmt_gates(rep['gates_before'])}; after "
            f"{fmt_gates(rep['gates_after'])}; {fmt_bias(rep['logit_bias'])}back to FP32: "
            f"{', '.join(n['node'] for n in rep['nodes']) or 'none'}"
            + (f"; stopped: {rep['stopped']}" if rep["stopped"] else "")
        )
        print(
            "  per gated class (images, views, fp32 / int8 / repaired top-1 on the views): "
            + ", ".join(
                f"{c['name']} {c['images']}/{c['views']} {100 * c['fp32']:.0f}/{100 * c['int8_before']:.0f}/"
                + ("-" if c["int8_after"] is None else f"{100 * c['int8_after']:.0f}")
                for c in ev["classes"]
            )
        )
    print(flush=True)


def fmt_bias(bias: dict[str, Any] | None) -> str:
    if bias is None:
        return ""
    kept = "kept" if bias["kept"] else "not kept"
    return f"logit bias {kept} (KL {bias['kl_before']:.4f} -> {bias['kl_after']:.4f}); "


def fmt_gates(gates: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{g['judged_as']} = "
        + ("n/a" if g["value"] is None else f"{g['value']:.4f}")
        + ("" if g["low"] is None else f" [{g['low']:.4f}, {g['high']:.4f}]")
        + f" {g['decision']}"
        for g in gates
    )


def calibration_sweep(
    fp32: Path, data: data_stage.LTData, groups: dict, args: argparse.Namespace, work: Path, reference: dict[str, Any]
) -> None:
    """Class-stratified against random calibration samples of several sizes (median over calibration seeds)."""
    rarest = data.class_names[int(np.argmin(data.class_counts))]
    print("| calibration | images | Few (median) | Few drop vs FP32 (points) | balanced (median) | worst (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for how in ("stratified", "random"):
            runs = []
            for seed in args.seeds:
                path = work / f"cal-{how}-{size}-{seed}.onnx"
                with tempfile.TemporaryDirectory(dir=work) as tmp:
                    _, info = int8(
                        fp32, data, ExportConfig(calibration=how, calibration_size=size), seed, path, Path(tmp)
                    )
                runs.append((accuracy(path, data, groups), info))
                path.unlink()
            few = statistics.median(m.few for m, _ in runs)
            tail = min(i["calibration_per_class"][rarest] for _, i in runs)
            print(
                f"| {how} | {size} (rarest class: {tail}) | {100 * few:.1f} | {100 * (reference['few'] - few):.2f} "
                f"| {100 * statistics.median(m.balanced for m, _ in runs):.1f} | "
                f"{100 * statistics.median(m.worst for m, _ in runs):.1f} |",
                flush=True,
            )


def summary(results: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Medians over the runs, and each run's Few/worst drop against its own FP32, with the repair's targets."""
    labels = [k for k in next(iter(results.values())) if not k.startswith("teacher")]
    print(f"summary over {len(results)} run(s): medians; drops in points against each run's own FP32, per run")
    print(
        "| model | size (MB) | batch-1 ms | batch-32 ms | balanced | few | worst | Few drop per run | "
        "worst drop per run | size vs INT8 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
    verdicts = []
    for label in labels:
        rows = [r[label] for r in results.values()]
        med = {k: statistics.median(x[k] for x in rows) for k in ("mb", "b1", "b32", "balanced", "few", "worst")}
        fps = [r["student FP32"] for r in results.values()]
        few_drop = [100 * (f["few"] - x["few"]) for f, x in zip(fps, rows)]
        worst_drop = [100 * (f["worst"] - x["worst"]) for f, x in zip(fps, rows)]
        base = label.removesuffix(" repaired")
        ratio = max(x["mb"] / r[base]["mb"] for x, r in zip(rows, results.values())) if base != label else None
        print(
            f"| {label} | {med['mb']:.2f} | {med['b1']:.3f} | {med['b32']:.2f} | {100 * med['balanced']:.1f} | "
            f"{100 * med['few']:.1f} | {100 * med['worst']:.1f} | {' / '.join(f'{d:.2f}' for d in few_drop)} | "
            f"{' / '.join(f'{d:.2f}' for d in worst_drop)} | {'' if ratio is None else f'{ratio:.2f}x'} |"
        )
        if ratio is not None:
            verdicts.append(target(label, base, results))
    print("\n" + "\n".join(verdicts))


def target(label: str, base: str, results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The repair's targets on one INT8 variant over the runs: never fail a model that passes its test-set
    gates; make every one that fails them pass within 1.5x the INT8 size. Plus its time."""
    kept = fixed = broken = 0
    failing = []
    for name, r in results.items():
        before, after, ratio = r[base]["gates"], r[label]["gates"], r[label]["mb"] / r[base]["mb"]
        if before:
            kept += after
            broken += not after
        elif after and ratio <= 1.5:
            fixed += 1
        else:
            failing.append(name)
    seconds = [r[label]["repair"]["seconds"] for r in results.values()]
    met = not broken and not failing
    return (
        f"{label}: {kept} passing model(s) kept passing, {broken} made to fail; {fixed} failing model(s) fixed "
        f"within 1.5x, {len(failing)} not ({', '.join(failing) or '-'}); repair time median "
        f"{statistics.median(seconds):.0f} s (max {max(seconds):.0f}); target {'met' if met else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["minmax"],
        help="INT8 variants to compare: method[:calibration[:per-tensor]], e.g. minmax entropy "
        "percentile minmax:head:per-tensor",
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="also repair each INT8 model toward the run's int8 gates on the run's evidence",
    )
    parser.add_argument(
        "--held-out",
        type=int,
        default=0,
        metavar="N",
        help="(fmnist-lt runs) the repair decides on N unused Fashion-MNIST training images per class, as it "
        "would on a user's data.val_list, instead of training views",
    )
    parser.add_argument("--teacher", action="store_true", help="also measure the teacher, exported to ONNX")
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help="calibration sample sizes to sweep")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration seeds of the sweep")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of repeated runs per latency")
    parser.add_argument(
        "--set",
        dest="repair_set",
        nargs="*",
        default=[],
        type=export_setting,
        metavar="KEY=VALUE",
        help="export settings other than the defaults, e.g. repair_budget=16 repair_confidence=0.9",
    )
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} cores, onnxruntime {ort.__version__}, torch {torch.__version__}; CPU flags: "
        f"{' '.join(json.loads((args.runs[0] / 'report.json').read_text())['environment'].get('cpu_flags', []))}"
        + (f"; export settings: {', '.join(f'{k}={v}' for k, v in args.repair_set)}" if args.repair_set else "")
        + "\n"
    )
    work = Path(tempfile.mkdtemp(prefix="ltcompress-deploy-"))
    results = {run.name: bench_run(run, args, work) for run in args.runs}
    if len(results) > 1 or args.repair:
        summary(results)


if __name__ == "__main__":
    main()
