"""Register your own distillation method from outside ltcompress (no edit to the package) and run it.

    python examples/custom_method.py [--epochs 40] [--gate "few >= 0.6"]

The method here, "tail-weighted KD", is plain Hinton KD whose per-image distillation term is weighted by the
inverse frequency of the image's class (normalised to mean 1 over the classes), so the rare classes' images
count more. It is an illustration of the API, not a published method: one pure loss function, a frozen
hyper-parameter dataclass, and a thin class that declares what it needs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import yaml

from ltcompress import LTCompressError, compress, register_method
from ltcompress.methods.base import Method, MethodContext, StepInputs


def tail_weighted_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    class_weights: torch.Tensor,
    T: float,
) -> torch.Tensor:
    """CE + T^2 * KL(teacher || student) per image, weighted by its class's weight (fp32 whatever the autocast)."""
    log_p = F.log_softmax(student_logits.float() / T, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / T, dim=1)
    per_image = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(dim=1)
    kd = (class_weights[targets] * per_image).mean()
    return F.cross_entropy(student_logits.float(), targets) + T * T * kd


@dataclass(frozen=True)
class TailKDParams:
    T: float = 4.0
    power: float = 0.5  # weight = n_c ** -power: 0 is plain KD (with a_ce = a_kd = 1), 1 is inverse frequency

    def validate(self) -> None:  # called with the user's --method-arg values; ValueError becomes exit 2
        if self.T <= 0 or self.power < 0:
            raise ValueError("T must be positive and power non-negative")


class TailKD(Method):
    Params = TailKDParams
    uses_teacher = True  # the loop runs the frozen teacher and passes its logits
    teacher_method = "ce"  # the teacher is trained with plain cross-entropy

    def __init__(self, params: TailKDParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        w = ctx.class_counts.clamp(min=1) ** -params.power
        self.register_buffer("class_weights", w / w.mean())

    def forward(self, step: StepInputs) -> torch.Tensor:
        return tail_weighted_kd_loss(
            step.student_logits, step.teacher_logits, step.targets, self.class_weights, self.params.T
        )


register_method(
    "tailkd",
    TailKD,
    summary="KD with each image's distillation term weighted by n_class^-power",
    source="examples/custom_method.py (illustration)",
    status="exact",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--student", default="mobilenetv3_small_100")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: the preset's)")
    parser.add_argument("--gate", action="append", dest="gates", default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config value by dotted key, e.g. data.n_max=100; repeatable",
    )
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    if args.epochs is not None:
        overrides["student.train.epochs"] = args.epochs
    try:
        result = compress(
            teacher=args.teacher,
            student=args.student,
            method="tailkd",
            gates=args.gates,
            method_args={"power": 0.5},
            overrides=overrides,
            runs_dir=args.runs_dir,
        )
    except LTCompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    assert result is not None
    fp32 = result.metrics["fp32"]
    print(
        f"tailkd: balanced {fp32.balanced:.4f}, Few {fp32.few}, method recorded as "
        f"{result.report.method['name']!r} ({result.report.method['source']}); {result.run_dir}"
    )
    return 0 if result.passed else 5


if __name__ == "__main__":
    sys.exit(main())
