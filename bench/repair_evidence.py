"""How much evidence the INT8 repair needs to decide: for finished runs and INT8 variants, each int8 gate's value,
bootstrap bounds and decision on the repair's evidence at several sizes (views per gated class) and confidences,
next to the same gate on the test set (which the repair never sees). A good setting decides "fails" where the
test set fails, and never where it passes.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/repair_evidence.py RUN_DIR [RUN_DIR ...] \\
        [--methods minmax percentile minmax:head:per-tensor] [--views 64 256 1024] [--confidence 0.95 0.9]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from deploy import load_run, predict, variant  # noqa: E402

from ltcompress import evidence, gates as gate_mod  # noqa: E402
from ltcompress.metrics import summarize  # noqa: E402
from ltcompress.onnx_export import int8  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--methods", nargs="+", default=["minmax", "percentile", "minmax:head:per-tensor"])
    parser.add_argument("--views", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--confidence", type=float, nargs="+", default=[0.95, 0.9])
    args = parser.parse_args()
    print(
        "| run | INT8 | gate | test set | views/class | images | value | "
        + " | ".join(f"{c:g}: bounds, decision" for c in args.confidence)
        + " |"
    )
    print("|---|---|---|---|---:|---:|---:|" + "---|" * len(args.confidence))
    agree = {(v, c): [0, 0, 0] for v in args.views for c in args.confidence}  # right fails, wrong fails, missed
    with tempfile.TemporaryDirectory(prefix="repair-evidence-") as tmp:
        for run in args.runs:
            report, cfg, data, groups, gates = load_run(run)
            seed, fp32 = report["config"]["run"]["seed"], run / "student.onnx"
            pred_fp32 = predict(fp32, data)
            for method in args.methods:
                work = Path(tempfile.mkdtemp(dir=tmp))  # each calibration its own cache
                path = work / "int8.onnx"
                int8(fp32, data, variant(method), seed, path, work)
                pred = predict(path, data)
                stages = {
                    k: summarize(p, data.test.labels, groups, data.class_names)
                    for k, p in (("fp32", pred_fp32), ("int8", pred))
                }
                on_test = gate_mod.evaluate(
                    gates, stages, {"fp32": pred_fp32, "int8": pred}, data.test.labels, groups, data.class_names
                )
                for views in args.views:
                    e = dataclasses.replace(variant(method), repair_views=views, repair_max_views=10**6)
                    seen = evidence.collect(data, gates, groups, e, seed, fp32, {}, torch.device("cpu"))
                    logits = evidence.ort_run(path, seen.inputs)
                    judged = {
                        c: evidence.judge(gates, seen, logits, groups, data.class_names, c) for c in args.confidence
                    }
                    for i, (gate, test) in enumerate(zip(gates, on_test)):
                        cells = []
                        for c in args.confidence:
                            r = judged[c][i]
                            cells.append(f"[{r.low:.3f}, {r.high:.3f}] {r.decision}")
                            counts = agree[(views, c)]
                            if r.decision == "fails":
                                counts[0 if not test.passed else 1] += 1
                            elif not test.passed:
                                counts[2] += 1
                        r = judged[args.confidence[0]][i]
                        print(
                            f"| {run.name} | {method} | {gate.expr} | {test.value:.3f} "
                            f"{'pass' if test.passed else 'FAIL'} | {views} | {r.images} | {r.value:.3f} | "
                            + " | ".join(cells)
                            + " |",
                            flush=True,
                        )
    print_agreement(agree)


def print_agreement(agree: dict[tuple[int, float], list[int]]) -> None:
    """How often each setting's decision matched the test set's verdict."""
    print(
        "\n| views/class | confidence | 'fails' where the test set fails | 'fails' where it passes | "
        "test-set failures not decided |"
    )
    print("|---:|---:|---:|---:|---:|")
    for (views, c), (right, wrong, missed) in agree.items():
        print(f"| {views} | {c:g} | {right} | {wrong} | {missed} |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
