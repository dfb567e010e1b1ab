"""Optional experiment tracking where users already look (``run.track``, ``--track``): TensorBoard event files in
the run directory, and MLflow (a local file store under the runs folder by default; MLFLOW_TRACKING_URI and
MLFLOW_EXPERIMENT_NAME, MLflow's own variables, choose another). Each sink receives the per-epoch records the run
writes to metrics.jsonl, then the final per-class and Many/Medium/Few results of every stage, the gates and the
artifacts. Tracking never decides anything: a sink that fails to write is a warning, not a failed run."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Protocol

from ltcompress.errors import UsageError

log = logging.getLogger("ltcompress")
SINKS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # sink -> the package it needs (and the extra's name)
GROUPS = ("overall", "balanced", "many", "medium", "few", "worst")


def check(names: tuple[str, ...]) -> None:
    """Every requested sink exists and its package is installed (exit 2 before any work, naming the extra)."""
    import importlib.util

    for name in names:
        if name not in SINKS:
            raise UsageError(f"run.track: unknown sink {name!r}; choose from {', '.join(SINKS)}")
        if importlib.util.find_spec(SINKS[name]) is None:
            raise UsageError(
                f"run.track {name} needs the {SINKS[name]} package: pip install 'ltcompress[{name}]' (or leave "
                f"--track {name} off)"
            )


class Sink(Protocol):
    def epoch(self, record: dict[str, Any]) -> None: ...

    def results(self, report: dict[str, Any], files: list[Path]) -> None: ...

    def close(self) -> None: ...


class Tracker:
    """The run's sinks, called in turn; a sink that raises is reported once and dropped."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def epoch(self, record: dict[str, Any]) -> None:
        self._each("epoch", record)

    def results(self, report: dict[str, Any], files: list[Path]) -> None:
        self._each("results", report, files)

    def close(self) -> None:
        self._each("close")

    def _each(self, call: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, call)(*args)
            except Exception as exc:  # noqa: BLE001 - tracking must never fail a run
                log.warning(
                    "tracking: %s failed (%s: %s); it is off for the rest of the run",
                    type(sink).__name__,
                    type(exc).__name__,
                    exc,
                )
                self.sinks.remove(sink)


def open_tracker(names: tuple[str, ...], run_dir: Path, config: dict[str, Any]) -> Tracker:
    sinks: list[Sink] = []
    if "tensorboard" in names:
        sinks.append(TensorBoard(run_dir / "tensorboard"))
    if "mlflow" in names:
        sinks.append(MLflow(run_dir, config))
    for sink in sinks:
        log.info("tracking: %s", sink)
    return Tracker(sinks)


def final_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Every stage's summary, Many/Medium/Few and per-class accuracy, and each gate's verdict, as flat names."""
    out: dict[str, float] = {}
    for stage, m in report["stages"].items():
        for key in GROUPS:
            if m.get(key) is not None:
                out[f"{stage}/{key}"] = float(m[key])
        for name, acc in (m.get("per_class") or {}).items():
            if acc is not None:  # a class without test images has no accuracy
                out[f"{stage}/class/{_safe(name)}"] = float(acc)
    for i, gate in enumerate(report["gates"]):
        out[f"gate/{i}_{_safe(gate['gate'])}"] = float(gate["passed"])
    out["passed"] = float(report["passed"])
    return out


def _safe(name: str) -> str:
    """A metric name both sinks accept: letters, digits and _-. only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "_"


class TensorBoard:
    """Scalars per epoch (``teacher/loss``, ``student/train_acc`` ...), final results at step 0 under their stage,
    gates as scalars (1 passed) and the report and artifact paths as text."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder))

    def __str__(self) -> str:
        return f"TensorBoard event files in {self.folder} (tensorboard --logdir {self.folder})"

    def epoch(self, record: dict[str, Any]) -> None:
        stage, step = record["stage"], int(record["epoch"])
        for key in ("loss", "train_acc", "lr", "images_per_s"):
            if isinstance(record.get(key), (int, float)):
                self.writer.add_scalar(f"{stage}/{key}", float(record[key]), step)
        self.writer.flush()

    def results(self, report: dict[str, Any], files: list[Path]) -> None:
        for name, value in final_metrics(report).items():
            self.writer.add_scalar(f"results/{name}", value, 0)
        gates = "\n".join(f"- {'PASS' if g['passed'] else 'FAIL'} `{g['gate']}`: {g['value']}" for g in report["gates"])
        self.writer.add_text("gates", gates or "no gates", 0)
        self.writer.add_text("artifacts", "\n".join(f"- {p}" for p in files), 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per ltcompress run: the resolved config as params, per-epoch metrics with their epoch as
    step, the final results and gates as metrics, report.json/html and the exported models as artifacts."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the default: a local file store beside the runs (MLflow keeps it in maintenance mode)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir.parent / "mlruns").resolve().as_uri()
        self.mlflow, self.uri = mlflow, uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "ltcompress"))
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params(dict(list(_flat(config).items())[:500]))  # MLflow takes at most 500 in one call
        mlflow.set_tag("ltcompress.run_dir", str(run_dir.resolve()))

    def __str__(self) -> str:
        return f"MLflow run {self.run.info.run_id} at {self.uri}"

    def epoch(self, record: dict[str, Any]) -> None:
        stage, step = record["stage"], int(record["epoch"])
        values = {f"{stage}/{k}": float(record[k]) for k in ("loss", "train_acc", "lr", "images_per_s") if k in record}
        self.mlflow.log_metrics(values, step=step)

    def results(self, report: dict[str, Any], files: list[Path]) -> None:
        self.mlflow.log_metrics(final_metrics(report))
        for path in files:
            self.mlflow.log_artifact(str(path))

    def close(self) -> None:
        self.mlflow.end_run()


def _flat(tree: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> values as text (MLflow params are strings of at most 6000 characters)."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(tree)[:6000]}
