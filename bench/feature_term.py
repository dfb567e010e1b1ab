"""krdistill's feature term without gradient clipping: where its runs spike, why, and what stops it.

    python bench/feature_term.py [--seeds 0 1 2] [--variants logit features warmup] [--out bench-runs/feature-term]

Each run is the default preset (`fmnist-lt`, the cached 20-epoch CE teacher, teacher seed 0) with krdistill and
`student.train.grad_clip` at 1e9: clip_grad_norm_ then scales every gradient by exactly 1.0 (no clipping, bit for
bit) and returns the global gradient norm, which is recorded each step with the feature term's value and the
mean norm of the projected student feature (the projector's output, whose normalisation divides the term's
gradient by that norm). A spike is a step whose gradient norm is over SPIKE times the median of the 50 steps
before it. Runs go in-process (the recording patches two functions), one after another; the table is printed,
and each run's steps are written to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from ltcompress import api
from ltcompress.methods import krdistill

SPIKE = 5.0
VARIANTS: dict[str, dict[str, Any]] = {
    "logit": {},  # krdistill's defaults: the logit part alone
    "features": {"feature_term": True},
    "warmup": {"feature_term": True, "feature_warmup": 12.0},  # the one-cycle warm-up's 0.3 x 40 epochs
}


class Recorder:
    """Per-step gradient norms and feature-term statistics of the run in progress."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.pending: dict[str, float] = {}
        self.clip = torch.nn.utils.clip_grad_norm_
        self.distance = krdistill.feature_distance

    def install(self) -> None:
        torch.nn.utils.clip_grad_norm_ = self.clip_and_record  # type: ignore[assignment]
        krdistill.feature_distance = self.distance_and_record

    def uninstall(self) -> None:
        torch.nn.utils.clip_grad_norm_ = self.clip  # type: ignore[assignment]
        krdistill.feature_distance = self.distance

    def clip_and_record(self, params: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        norm = self.clip(params, max_norm, *args, **kwargs)
        self.steps.append({"grad_norm": float(norm), **self.pending})
        self.pending = {}
        return norm

    def distance_and_record(
        self,
        projected: torch.Tensor,
        teacher: torch.Tensor,
        prototypes: torch.Tensor,
        targets: torch.Tensor,
        lam: float,
    ) -> torch.Tensor:
        value = self.distance(projected, teacher, prototypes, targets, lam)
        norm = float(projected.detach().norm(dim=1).mean())
        self.pending = {"feature": float(value.detach()), "projected_norm": norm}
        return value


def spikes(norms: list[float]) -> list[int]:
    """Steps whose gradient norm is over SPIKE times the median of the 50 steps before."""
    return [i for i in range(50, len(norms)) if norms[i] > SPIKE * statistics.median(norms[i - 50 : i])]


def run_one(variant: str, seed: int, out: Path, epochs: int | None) -> dict[str, Any]:
    """One run, or the one already in --out (its steps and report.json), so an interrupted benchmark resumes."""
    steps_file, run_dir = out / f"{variant}-seed{seed}.json", out / "runs" / f"{variant}-seed{seed}"
    if not (steps_file.is_file() and (run_dir / "report.json").is_file()):
        recorder = Recorder()
        recorder.install()
        try:
            api.compress(
                "resnet50",
                "mobilenetv3_small_100",
                "krdistill",
                preset="fmnist-lt",
                overrides={
                    "student.train.grad_clip": 1e9,
                    **({"student.train.epochs": epochs} if epochs else {}),
                    "teacher.seed": 0,
                    "run.seed": seed,
                    "run.teacher_cache": True,  # exact; the feature term runs the teacher anyway
                    "run.runs_dir": str(out / "runs"),
                    "run.name": run_dir.name,
                    **{f"method.args.{k}": v for k, v in VARIANTS[variant].items()},
                },
                progress=False,
            )
        finally:
            recorder.uninstall()
        steps_file.write_text(json.dumps(recorder.steps))
    return summarize(variant, seed, json.loads(steps_file.read_text()), run_dir)


def summarize(variant: str, seed: int, steps: list[dict[str, float]], run_dir: Path) -> dict[str, Any]:
    norms = [s["grad_norm"] for s in steps]
    hit = spikes(norms)
    report = json.loads((run_dir / "report.json").read_text())
    per_epoch = len(steps) / report["config"]["student"]["train"]["epochs"]
    projected = [s["projected_norm"] for s in steps if "projected_norm" in s]
    fp32 = report["stages"]["fp32"]
    return {
        "variant": variant,
        "seed": seed,
        **{k: 100 * fp32[k] for k in ("balanced", "few", "worst")},
        "median_norm": statistics.median(norms),
        "max_norm_after_epoch_2": max(norms[int(2 * per_epoch) :]),
        "spikes": len(hit),
        "spike_epochs": " ".join(sorted({f"{i / per_epoch + 1:.0f}" for i in hit}, key=float)) or "-",
        "projected_median": statistics.median(projected) if projected else None,
        "projected_min": min(projected) if projected else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, help="student epochs (default: the preset's 40)")
    parser.add_argument("--out", type=Path, default=Path("bench-runs/feature-term"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_one(v, s, args.out, args.epochs) for s in args.seeds for v in args.variants]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
