"""compress(): resolve the config, then call the stages in pipeline order. Nothing else lives here.

config -> prepare (names, process group, recipe, data, teacher plan, loss) -> Plan
Plan -> teacher -> Teacher -> distill -> Distilled -> export -> Exported -> verify -> Verification
-> verdict -> Report -> report.json / report.html (always), bundle/ (only when passed) -> CompressResult
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ltcompress.config import CompressConfig
from ltcompress.options import build_config, check_keywords, run_keywords
from ltcompress.results import Judged

if TYPE_CHECKING:
    from ltcompress.distill import Distilled
    from ltcompress.estimate import Estimate
    from ltcompress.export_stage import Exported
    from ltcompress.methods.base import Method
    from ltcompress.metrics import Flips, StageMetrics
    from ltcompress.plan import Plan
    from ltcompress.report import Report
    from ltcompress.results import RepairRecord, Verdict
    from ltcompress.role import Leader, Role
    from ltcompress.rundir import RunDir
    from ltcompress.teacher import Teacher
    from ltcompress.tracking import Tracker
    from ltcompress.verify import Verification

log = logging.getLogger("ltcompress")


@dataclass(frozen=True)
class CompressResult(Judged):
    """What a run produced. `passed` is False when a gate failed on the test set; errors raise instead."""

    run_dir: Path
    verdict: Verdict
    metrics: Mapping[str, StageMetrics]  # stage key (teacher, student, fp32, int8) -> metrics
    flips: Mapping[str, Flips]  # per-class top-1 flip rates between consecutive stages, keyed "a->b"
    int8_repair: RepairRecord | None  # what the INT8 repair did (None without it)
    report: Report = field(repr=False)

    @property
    def onnx_path(self) -> Path:
        return self.run_dir / "student.onnx"

    @property
    def int8_path(self) -> Path | None:
        path = self.run_dir / "student.int8.onnx"
        return path if path.is_file() else None

    @property
    def bundle_dir(self) -> Path | None:
        return self.run_dir / "bundle" if self.passed else None

    def to_dict(self) -> dict[str, Any]:
        """The result as `ltcompress run --json` prints it."""
        return {
            "run_dir": str(self.run_dir),
            "passed": self.passed,
            "gates": [g.to_dict() for g in self.gates],
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "flips": {k: f.to_dict() for k, f in self.flips.items()},
        }


@run_keywords  # its settings (**options) join the signature and docstring from options.SETTINGS
def compress(
    teacher: str | None = None,
    student: str | None = None,
    method: str | None = None,
    dataset: str | None = None,
    *,
    config: CompressConfig | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
    resume: bool = False,
    dry_run: bool = False,
    **options: Any,
) -> CompressResult | DryRun | None:
    """Distill `teacher` into `student` with `method` on `dataset`, export to ONNX, verify with ONNX Runtime
    and evaluate the gates.

    Settings left as None come from the recipe (`preset`, else the dataset's, default ``fmnist-lt``);
    `overrides` takes dotted keys such as ``{"student.train.epochs": 5}``; each setting below sets the config
    key(s) it names, as the CLI's option of the same name does. `config` is a whole CompressConfig
    (build_config's): a setting, `preset` or `overrides` beside it is a UsageError (exit 2). An unknown
    keyword is a TypeError. `resume=True` continues the interrupted run named by `name` from its last
    checkpoint (the settings must be the same). Under torchrun every rank trains and rank 0 alone
    writes the run and returns the result; the other ranks return None.
    Raises an LTCompressError subclass for errors; a failed gate is not an error. `dry_run=True` checks
    everything a run would (recipe, data, names, gates), times a few steps of each model and returns a DryRun
    (the resolved recipe, a data summary and the cost estimate) without training or writing anything.
    """
    from ltcompress import dist
    from ltcompress.prepare import prepare

    given = dict(options, teacher=teacher, student=student, method=method, dataset=dataset)
    check_keywords(given, config, preset=preset, overrides=overrides)  # TypeError, or a setting beside config
    cfg = config or build_config(preset, overrides, **given)
    owns_group = not dist.active()
    try:
        plan, loss = prepare(cfg, progress)
        cost = _estimate(plan, dry_run)
        if dry_run:  # nothing trains, on any rank
            return DryRun.of(plan, cost) if cost is not None else None
        if not dist.is_main():
            from ltcompress.role import Follower

            _train(plan, loss, Follower(resume))
            return None
        return _lead(plan, loss, resume, cost)
    finally:
        if owns_group:
            dist.shutdown()


def _lead(plan: Plan, loss: Method, resume: bool, cost: Estimate | None) -> CompressResult:
    """Rank 0 (or the only process): the run directory, locked and logged to, the stages, and the result;
    Ctrl-C and a full disk end with the command that resumes the run."""
    from ltcompress import tracking
    from ltcompress.errors import Interrupted, StorageError
    from ltcompress.role import Leader

    run = _open_run(plan, resume)
    handler = run.log_to_file(log)
    tracker = None
    try:
        log.info("run directory: %s%s", run.path, " (resuming)" if resume else "")
        tracker = tracking.open_tracker(plan.cfg.run.track, run.path, dict(plan.resolved))
        run.listeners.append(tracker.epoch)
        leader = Leader(run, resume, plan.progress)
        teacher, distilled, timings = _train(plan, loss, leader)
        return _finish(plan, leader, _export_and_verify(plan, leader, teacher, distilled, timings), cost, tracker)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; the last checkpoint is in {run.file('checkpoints')}. Continue with the same "
            f"command plus --name {run.path.name} --resume"
        ) from None
    except StorageError as exc:  # nothing is marked finished yet: a resume picks up from the last checkpoint
        raise StorageError(
            f"{exc}. Then finish the run with the same command plus --name {run.path.name} "
            f"--resume (what is trained is kept)"
        ) from exc
    finally:
        if tracker is not None:
            tracker.close()
        log.removeHandler(handler)
        handler.close()
        run.close()


def _estimate(plan: Plan, dry_run: bool) -> Estimate | None:
    """Rank 0 times a few steps of each model and logs what the run will cost (run.estimate, or --dry-run)."""
    from ltcompress import dist, estimate

    if not dist.is_main() or not (dry_run or plan.cfg.run.estimate):
        return None
    cost = estimate.estimate(plan)
    estimate.report(cost)
    return cost


@dataclass(frozen=True)
class DryRun:
    """What a run would do, decided and measured without training or writing anything."""

    recipe: str  # which recipe and why ("recipe photos (from --dataset imagefolder)")
    fitted: tuple[str, ...]  # what the recipe fitted to the data, with the measurement behind each choice
    config: Mapping[str, Any] = field(repr=False)  # the resolved config a run would write as config.yaml
    data: Mapping[str, Any] = field(repr=False)  # classes, counts, shot groups, input, storage
    estimate: Estimate = field(repr=False)

    @classmethod
    def of(cls, plan: Plan, cost: Estimate) -> DryRun:
        from ltcompress import recipe, report

        data = report.data_info(plan.data, plan.groups, plan.cfg)
        return cls(recipe.describe(plan.cfg), plan.cfg.fitted, plan.resolved, data, cost)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "fitted": list(self.fitted),
            "config": dict(self.config),
            "data": dict(self.data),
            "estimate": self.estimate.to_dict(),
        }


def _open_run(plan: Plan, resume: bool) -> RunDir:
    """The run directory, locked: the interrupted one with the same settings and data (--resume), or a new one
    holding the resolved config and the data manifest."""
    from ltcompress import checkpoint, rundir

    cfg = plan.cfg
    if resume:
        run = rundir.reopen(cfg.run.runs_dir, cfg.run.name)
        checkpoint.check_same_config(run, dict(plan.resolved))
        checkpoint.check_same_data(run, plan.data.manifest)
        return run
    run = rundir.create(cfg.run.runs_dir, cfg.run.name, rundir.default_name(cfg.method.name, plan.student_arch))
    run.write_config(dict(plan.resolved))
    if plan.data.manifest:
        rundir.atomic_write_text(run.file("data-manifest.txt"), "\n".join(plan.data.manifest) + "\n")
    return run


@dataclass(frozen=True)
class Outputs:
    """What the stages after the plan handed on, and how long each took."""

    teacher: Teacher | None
    distilled: Distilled
    exported: Exported
    verification: Verification
    timings: Mapping[str, float]


def _train(plan: Plan, loss: Method, role: Role) -> tuple[Teacher | None, Distilled, dict[str, float]]:
    """Stages 2 and 3 on every rank (their collective steps need all of them), timed."""
    from ltcompress import distill
    from ltcompress import teacher as teacher_stage
    from ltcompress.plan import since

    timings, t = {"data": plan.data_seconds}, time.perf_counter()
    teacher = teacher_stage.obtain(plan.teacher, plan.cfg, plan.data, plan.device, role) if plan.teacher else None
    timings["teacher"], t = since(t), time.perf_counter()
    distilled = distill.distill_student(plan, loss, teacher, role)
    timings["distill"] = since(t)
    return teacher, distilled, timings


def _export_and_verify(
    plan: Plan, leader: Leader, teacher: Teacher | None, distilled: Distilled, timings: dict[str, float]
) -> Outputs:
    """Stages 4 and 5, on the leader: the exported models, measured with the torch ones on the test set."""
    from ltcompress import export_stage, report, verify
    from ltcompress.plan import since

    t, run = time.perf_counter(), leader.run
    exported = export_stage.export(plan, run, distilled.student, teacher)
    timings["export"], t = since(t), time.perf_counter()
    torch_models = {"student": distilled.student, **({"teacher": teacher.module} if teacher else {})}
    batch = plan.cfg.run.eval_batch_size
    result = verify.run(
        plan.data,
        plan.groups,
        {**torch_models, **exported.models},
        plan.gates,
        plan.cfg.export,
        plan.device,
        batch,
        show=plan.progress,
    )
    report.write_predictions(run, result.labels, result.predictions, result.confusions)
    if exported.repair is not None and exported.repair.unrepaired_model:  # reported only
        unrepaired = run.file(exported.repair.unrepaired_model)
        test_before = verify.measure_file(unrepaired, plan.data, plan.groups, batch)
        exported = dataclasses.replace(exported, repair=dataclasses.replace(exported.repair, test_before=test_before))
    timings["verify"] = since(t)
    return Outputs(teacher, distilled, exported, result, timings)


def _finish(plan: Plan, leader: Leader, out: Outputs, cost: Estimate | None, tracker: Tracker) -> CompressResult:
    """report.json and report.html always; exit 4 for an export that does not reproduce torch; the bundle
    only when every gate passed. Finishing is a transaction: report.json, the mark of a finished run, is
    written last, so a failure anywhere before it (a full disk) leaves a run that --resume completes without
    training again (the last checkpoint holds the finished student)."""
    from ltcompress import bundle, report
    from ltcompress.errors import VerificationError

    run, result, exported = leader.run, out.verification, out.exported
    rep = _report(plan, leader, out, cost)
    html = report.render_html(rep)
    if not rep.verdict.parity_ok:
        report.write(run, rep, html)
        p = result.parity
        raise VerificationError(
            f"the ONNX export does not reproduce the torch student: max logit difference "
            f"{p.max_abs_logit_diff:.3g} (allowed {p.allowed_logit_diff:.3g}), top-1 agreement "
            f"{p.top1_agreement:.4f} (required {p.required_agreement:.4f}); see {run.file('report.json')}"
        )
    if rep.passed:  # the bundle first: report.json's "passed": true is never on disk before it
        bundle.write(run, exported.models, plan.data, rep, html)
    report.write(run, rep, html)
    tracker.results(rep.to_dict(), [run.file("report.json"), run.file("report.html"), *exported.models.values()])
    if rep.passed:
        log.info("all gates passed; edge bundle: %s", run.file("bundle"))
    else:
        log.info(
            "%d gate(s) failed; no bundle written; see %s",
            len(rep.verdict.failed_gates),
            run.file("report.json"),
        )
    return CompressResult(run.path, rep.verdict, result.stages, result.flips, exported.repair, rep)


def _report(plan: Plan, leader: Leader, out: Outputs, cost: Estimate | None) -> Report:
    """The run's report. The models are stamped with the results' hash first, since the report records the
    models' own sha256."""
    from ltcompress import export_stage, report
    from ltcompress.methods import method_info
    from ltcompress.results import results_sha256, verdict

    cfg, result, exported = plan.cfg, out.verification, out.exported
    judged = verdict(result.gates, result.parity)
    stages = {k: m.to_dict() for k, m in result.stages.items()}
    export_stage.stamp_results(exported, results_sha256(plan.resolved, stages, [g.to_dict() for g in judged.gates]))
    recipe_name, recipe = plan.student_recipe(out.distilled.init[0])
    return report.Report(
        run=report.run_info(leader.run, out.timings),
        verdict=judged,
        stages=result.stages,
        parity=result.parity,
        flips=result.flips,
        data=report.data_info(plan.data, plan.groups, cfg),
        teacher=out.teacher.provenance if out.teacher else None,
        student=report.student_info(plan, out.distilled.init, recipe_name, recipe),
        method={
            **method_info(cfg.method.name).to_dict(),
            "params": dataclasses.asdict(plan.names.params),
            "diagnostics": out.distilled.diagnostics,
        },
        artifacts=report.artifacts(leader.run, exported.models, exported.int8_info, cfg.export, result.latency),
        config=plan.resolved,
        environment=report.environment(str(plan.device)),
        int8_parity=result.int8_parity,
        tail_losses=result.tails,
        int8_repair=exported.repair,
        estimate=cost.to_dict() if cost is not None else None,
        command=report.command(),
    )
