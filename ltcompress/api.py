"""compress(): resolve the config, then call the stages in pipeline order. Nothing else lives here."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ltcompress.config import CompressConfig
from ltcompress.options import build_config, check_keywords, run_keywords
from ltcompress.plan import Plan, since, validate

if TYPE_CHECKING:
    from ltcompress.estimate import Estimate
    from ltcompress.tracking import Tracker

log = logging.getLogger("ltcompress")


@dataclass
class CompressResult:
    """What a run produced. `passed` is False when a gate failed (or the INT8 repair did not meet the int8 gates
    on its held-out images); errors raise instead."""

    run_dir: Path
    passed: bool
    gates: list[dict[str, Any]]
    failed_gates: list[dict[str, Any]]
    metrics: dict[str, dict[str, Any]]  # stage key (teacher, student, fp32, int8) -> metrics
    report: dict[str, Any] = field(repr=False)

    @property
    def onnx_path(self) -> Path:
        return self.run_dir / "student.onnx"

    @property
    def int8_path(self) -> Path | None:
        path = self.run_dir / "student.int8.onnx"
        return path if path.is_file() else None

    @property
    def flips(self) -> dict[str, dict[str, Any]]:
        """Per-class top-1 flip rates between consecutive stages, keyed "a->b" (e.g. "fp32->int8")."""
        return self.report["flips"]

    @property
    def int8_repair(self) -> dict[str, Any] | None:
        """What the INT8 repair did (None without it); `passed` is also False when it did not meet its gates."""
        return self.report.get("int8_repair")

    @property
    def bundle_dir(self) -> Path | None:
        return self.run_dir / "bundle" if self.passed else None


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

    given = dict(options, teacher=teacher, student=student, method=method, dataset=dataset)
    check_keywords(given, config, preset=preset, overrides=overrides)  # TypeError, or a setting beside config
    cfg = config or build_config(preset, overrides, **given)
    owns_group = not dist.active()
    try:
        plan = validate(cfg, progress)
        cost = _estimate(plan, dry_run)
        if dry_run:  # nothing trains, on any rank
            return DryRun.of(plan, cost) if cost is not None else None
        if not dist.is_main():
            _follow(plan, resume)
            return None
        return _lead(plan, resume, cost)
    finally:
        if owns_group:
            dist.shutdown()


def _lead(plan: Plan, resume: bool, cost: Estimate | None) -> CompressResult:
    """Rank 0 (or the only process): the run directory, locked and logged to, the stages, and the result;
    Ctrl-C and a full disk end with the command that resumes the run."""
    from ltcompress import tracking
    from ltcompress.errors import Interrupted, StorageError

    run = _open_run(plan, resume)
    handler = run.log_to_file(log)
    tracker = None
    try:
        log.info("run directory: %s%s", run.path, " (resuming)" if resume else "")
        tracker = tracking.open_tracker(plan.cfg.run.track, run.path, plan.resolved)
        run.listeners.append(tracker.epoch)
        return _finish(plan, run, _run(plan, run, resume), cost, tracker)
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
    config: dict[str, Any] = field(repr=False)  # the resolved config a run would write as config.yaml
    data: dict[str, Any] = field(repr=False)  # classes, counts, shot groups, input, storage
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
            "config": self.config,
            "data": self.data,
            "estimate": self.estimate.to_dict(),
        }


def _open_run(plan: Plan, resume: bool) -> Any:
    """The run directory, locked: the interrupted one with the same settings and data (--resume), or a new one
    holding the resolved config and the data manifest."""
    from ltcompress import checkpoint, rundir

    cfg = plan.cfg
    if resume:
        run = rundir.reopen(cfg.run.runs_dir, cfg.run.name)
        checkpoint.check_same_config(run, plan.resolved)
        checkpoint.check_same_data(run, plan.data.manifest)
        return run
    run = rundir.create(cfg.run.runs_dir, cfg.run.name, rundir.default_name(cfg.method.name, plan.student_arch))
    run.write_config(plan.resolved)
    if plan.data.manifest:
        rundir.atomic_write_text(run.file("data-manifest.txt"), "\n".join(plan.data.manifest) + "\n")
    return run


@dataclass
class Outputs:
    teacher: Any
    student: Any
    train_pass: Any
    onnx_path: Path
    int8_path: Path | None
    int8_info: dict[str, Any] | None
    verification: Any
    gate_results: list[dict[str, Any]]
    repair: dict[str, Any] | None  # report.json's int8_repair


def _run(plan: Plan, run: Any, resume: bool) -> Outputs:
    """Teacher, distillation, export and verification, timed stage by stage."""
    from ltcompress import checkpoint, distill, gates as gate_mod, report, rundir
    from ltcompress import teacher as teacher_stage
    from ltcompress import verify
    from ltcompress.metrics import summarize

    cfg, data, t = plan.cfg, plan.data, time.perf_counter()
    teacher_obj = (
        teacher_stage.obtain(plan.teacher_plan, cfg, data, plan.device, run, plan.progress, resume)
        if plan.teacher_plan
        else None
    )
    plan.timings["teacher"] = since(t)
    t = time.perf_counter()
    ckpt = run.file("checkpoints") / "student-last.pt"
    teacher_sha = teacher_obj.provenance["weights_sha256"] if teacher_obj else None
    saved = checkpoint.load_student(ckpt, teacher_sha, run.path) if resume else None

    def save_checkpoint(state: dict[str, Any]) -> None:
        rundir.atomic_torch_save(ckpt, {**state, "teacher_sha256": teacher_sha, "config": plan.resolved})

    module = teacher_obj.module if teacher_obj else None
    student, train_pass = distill.distill_student(plan, module, teacher_sha, saved, run.log_metrics, save_checkpoint)
    distill.save_weights(student, run.file("student.safetensors"))
    plan.timings["distill"] = since(t)
    t = time.perf_counter()
    onnx_path, int8_path, int8_info, repaired = _export(plan, run, student, module, teacher_sha)
    plan.timings["export"] = since(t)
    t = time.perf_counter()
    result = verify.run(
        data,
        plan.groups,
        student,
        onnx_path,
        cfg.export,
        plan.device,
        cfg.run.eval_batch_size,
        teacher=module,
        int8_path=int8_path,
        show=plan.progress,
    )
    gate_results = [
        g.to_dict()
        for g in gate_mod.evaluate(
            plan.gates, result.stages, result.predictions, result.labels, plan.groups, data.class_names
        )
    ]
    report.write_predictions(run, result.labels, result.predictions, result.confusions)
    if repaired and repaired.get("unrepaired_model"):  # reported only: the decisions were made on held-out images
        before = verify.ort_logits(run.file(repaired["unrepaired_model"]), data.test, data, cfg.run.eval_batch_size)
        repaired["test_before"] = summarize(before.argmax(1), result.labels, plan.groups, data.class_names)
    plan.timings["verify"] = since(t)
    return Outputs(teacher_obj, student, train_pass, onnx_path, int8_path, int8_info, result, gate_results, repaired)


def _export(
    plan: Plan, run: Any, student: Any, teacher: Any, teacher_sha: str | None
) -> tuple[Path, Path | None, dict[str, Any] | None, dict[str, Any] | None]:
    """Stage 4: the ONNX student, its INT8 copy and that copy's repair when asked for, each describing itself."""
    import tempfile

    from ltcompress import onnx_export, repair, report

    cfg, data = plan.cfg, plan.data
    onnx_path = onnx_export.export(student, data.spec, run.file("student.onnx"), cfg.export.opset)
    described = report.model_metadata(data, cfg, teacher_sha, onnx_export.INPUT_NAME)
    onnx_export.embed_metadata(onnx_path, {**described, "ltcompress.stage": "fp32"})
    if not cfg.export.int8:
        return onnx_path, None, None, None
    int8_path, repaired = run.file("student.int8.onnx"), None
    int8_path.with_name(repair.UNREPAIRED).unlink(missing_ok=True)  # from an earlier attempt of this run
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=run.path) as tmp:
        quantizer, info = onnx_export.int8(
            onnx_path, data, cfg.export, cfg.run.seed, int8_path, Path(tmp), plan.progress
        )
        if cfg.export.int8_repair:
            torch_models = {"student": student, "teacher": teacher}
            held = repair.held_out(data, plan.gates, onnx_path, torch_models, plan.device, cfg.run.eval_batch_size)
            repaired = repair.repair(
                quantizer, int8_path, held, data, plan.groups, plan.gates, cfg.export, Path(tmp), plan.progress
            )
    for path, stage in ((int8_path, "int8"), (int8_path.with_name(repair.UNREPAIRED), "int8 before repair")):
        if path.is_file():
            onnx_export.embed_metadata(path, {**described, "ltcompress.stage": stage})
    return onnx_path, int8_path, info, repaired


def _finish(plan: Plan, run: Any, out: Outputs, cost: Estimate | None, tracker: Tracker) -> CompressResult:
    """report.json and report.html always; exit 4 for an export that does not reproduce torch; the bundle
    only when every gate passed. Finishing is a transaction: report.json, the mark of a finished run, is
    written last, so a failure anywhere before it (a full disk) leaves a run that --resume completes without
    training again (the last checkpoint holds the finished student)."""
    from ltcompress import onnx_export, report, verify
    from ltcompress.errors import VerificationError

    data, result = plan.data, out.verification
    rep = _report(plan, run, out, cost)
    html = report.render_html(rep)
    if not result.parity_ok:
        report.write(run, rep, html)
        p = result.parity
        raise VerificationError(
            f"the ONNX export does not reproduce the torch student: max logit difference "
            f"{p['max_abs_logit_diff']:.3g} (allowed {p['allowed_logit_diff']:.3g}), top-1 agreement "
            f"{p['top1_agreement']:.4f} (required {p['required_agreement']:.4f}); see {run.file('report.json')}"
        )
    if rep["passed"]:  # the bundle first: report.json's "passed": true is never on disk before it
        preprocess = report.preprocess(data, onnx_export.INPUT_NAME)
        inputs = verify.test_inputs(data)
        report.write_bundle(run, out.onnx_path, out.int8_path, data.class_names, preprocess, rep, html, inputs)
    report.write(run, rep, html)
    files = [run.file("report.json"), run.file("report.html"), out.onnx_path, *filter(None, [out.int8_path])]
    tracker.results(rep, files)
    if rep["passed"]:
        log.info("all gates passed; edge bundle: %s", run.file("bundle"))
    else:
        repair_missed = not (out.repair or {}).get("met", True)
        log.info(
            "%d gate(s) failed%s; no bundle written; see %s",
            len(rep["failed_gates"]),
            ", the INT8 repair did not meet its gates" if repair_missed else "",
            run.file("report.json"),
        )
    return CompressResult(run.path, rep["passed"], out.gate_results, rep["failed_gates"], result.stages, rep)


def _report(plan: Plan, run: Any, out: Outputs, cost: Estimate | None) -> dict[str, Any]:
    """report.json's content. The models are stamped with the results' hash first, since the report records
    the models' own sha256."""
    from ltcompress import onnx_export, report
    from ltcompress.methods import method_info

    cfg, data, result = plan.cfg, plan.data, out.verification
    stamp = {"ltcompress.report_sha256": report.results_sha256(plan.resolved, result.stages, out.gate_results)}
    for path in filter(None, (out.onnx_path, out.int8_path)):  # before report.artifacts takes their sha256
        onnx_export.embed_metadata(path, stamp)
    return report.build(
        run=run,
        config=plan.resolved,
        gates=out.gate_results,
        stages=result.stages,
        parity={"fp32": result.parity, **({"int8": result.int8_parity} if result.int8_parity else {})},
        teacher=out.teacher.provenance if out.teacher else None,
        student=plan.student_info(),
        method={
            **method_info(cfg.method.name).to_dict(),
            "params": dataclasses.asdict(plan.params),
            "diagnostics": plan.loss.diagnostics(out.train_pass, plan.groups),
        },
        data_info=report.data_info(data, plan.groups, cfg),
        timings=plan.timings,
        device=str(plan.device),
        flips=result.flips,
        tail_losses=report.tail_summary(result.confusions, plan.groups, data.class_names),
        artifacts=report.artifacts(run, out.onnx_path, out.int8_path, out.int8_info, cfg.export, data.spec),
        int8_repair=out.repair,
        estimate=cost.to_dict() if cost is not None else None,
    )


def _follow(plan: Plan, resume: bool) -> None:
    """Ranks other than 0 under torchrun: the same collective steps as rank 0 (teacher, distillation), no files."""
    from ltcompress import distill
    from ltcompress import teacher as teacher_stage

    teacher_obj = (
        teacher_stage.obtain(plan.teacher_plan, plan.cfg, plan.data, plan.device, None, False, resume)
        if plan.teacher_plan
        else None
    )
    distill.distill_student(plan, teacher_obj.module if teacher_obj else None, None, None, None, None)
