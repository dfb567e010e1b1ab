"""What the commands print when they finish: the stage table, flip rates and gate verdicts, and the one line
and exit code 5 for failed gates."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import click

from ltcompress.errors import GATE_FAILED_EXIT

if TYPE_CHECKING:
    from ltcompress.api import CompressResult, DryRun
    from ltcompress.exported import VerifyResult
    from ltcompress.gates import GateResult
    from ltcompress.metrics import Flips, StageMetrics
    from ltcompress.results import RepairRecord, Verdict


def print_dry_run(dry: DryRun, as_json: bool) -> None:
    """`run --dry-run`: the recipe and what it fitted, the data, and the cost estimate."""
    if as_json:
        click.echo(json.dumps(dry.to_dict(), indent=2))
        return
    d = dry.data
    click.echo(dry.recipe)
    for line in dry.fitted:
        click.echo(f"  fitted {line}")
    click.echo(
        f"data: {d['dataset']}, {d['num_classes']} classes, {d['train_size']} train / {d['test_size']} test images"
    )
    pairs = list(zip(d["class_names"], d["class_counts"]))
    shown = ", ".join(f"{name} {n}" for name, n in pairs[:20]) + (
        f" ... ({len(pairs)} classes)" if len(pairs) > 20 else ""
    )
    click.echo(f"  class counts: {shown}")
    for group, names in d["shot_groups"].items():
        click.echo(f"  {group}: {len(names)} classes{': ' + ', '.join(names[:8]) if names else ''}")
    spec = d["input"]
    click.echo(
        f"  input: {spec['size']} px {spec['geometry']} ({spec['source_mode']}, source {spec['source_size']} px), "
        f"{'in memory' if d['pipeline']['in_memory'] else 'decoded from disk'}, augment {d['pipeline']['augment']}"
    )
    click.echo("estimate:")
    for line in dry.estimate.lines():
        click.echo(f"  {line}")
    advice = dry.estimate.advice()
    if advice:
        click.echo(f"ltcompress: {advice}")


def finish_run(result: CompressResult, as_json: bool) -> None:
    """`run`'s output for a CompressResult (the JSON document, or the table and where the files are), then exit
    5 when the verdict is a fail."""
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_outcome(result.metrics, result.flips, result.gates)
        if result.int8_repair is not None:
            click.echo(repair_line(result.int8_repair))
        click.echo(f"report: {result.run_dir / 'report.json'} and report.html")
        click.echo(f"bundle: {result.bundle_dir}" if result.passed else "bundle: not written (a gate failed)")
    exit_on_fail(result.verdict, result.run_dir / "report.json")


def finish_verify(result: VerifyResult, as_json: bool, output: Path | None) -> None:
    """`verify`'s output: the JSON document, or the table next to what the export's report recorded; then exit
    5 when a gate failed."""
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_outcome(result.metrics, result.flips, result.gates)
        for stage, old in result.recorded.items():
            few = "absent" if old.few is None else format(old.few, ".4f")
            click.echo(f"recorded {stage}: balanced {_shown(old.balanced)}, few {few} (from the export's report)")
    exit_on_fail(result.verdict, output)


def print_outcome(metrics: Mapping[str, StageMetrics], flips: Mapping[str, Flips], gates: Sequence[GateResult]) -> None:
    """The stage table, the flip rates and every gate's verdict."""
    click.echo(summary_table(metrics))
    for pair, f in flips.items():
        click.echo(
            f"flips {pair}: {100 * (f.overall or 0):.2f} % of test images, most in {f.worst_class} "
            f"({100 * (f.worst or 0):.1f} %)"
        )
    for g in gates:
        click.echo(
            f"gate {'PASS' if g.passed else 'FAIL'}  {g.gate.expr:<30} {g.gate.subject} = "
            f"{_shown(g.value)} (required {g.gate.op} {g.gate.threshold:g})"
        )


def repair_line(repair: RepairRecord) -> str:
    """What the INT8 repair did, in one line: the nodes it returned to FP32 and how each int8 gate stood on its
    evidence (the test-set gates above decide the run)."""
    nodes = ", ".join(n.node for n in repair.nodes) or "none"
    stood = "; ".join(
        f"'{g.gate.expr}' {g.decision}" + (f" ({g.low:.4f} to {g.high:.4f})" if g.low is not None else "")
        for g in (repair.gates_after if repair.needed else repair.gates_before)
    )
    stopped = f", stopped: {repair.stopped}" if repair.stopped else ""
    return (
        f"int8 repair: {len(repair.nodes)} node(s) back to FP32 ({nodes}) in {repair.seconds:.0f} s{stopped}; "
        f"on {repair.images} images' {repair.views} views: {stood}"
    )


def exit_on_fail(verdict: Verdict, where: Path | None) -> None:
    """Exit 5 when the verdict is a fail: every failed gate and the value it got (and the file that records
    them, if any)."""
    failed = verdict.failed_gates
    if failed:
        listed = "; ".join(f"'{g.gate.expr}' ({g.gate.subject} = {_shown(g.value)})" for g in failed)
        click.echo(f"ltcompress: {len(failed)} gate(s) failed: {listed}{f'; see {where}' if where else ''}", err=True)
        sys.exit(GATE_FAILED_EXIT)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_table(metrics: Mapping[str, StageMetrics]) -> str:
    """One row per stage: the summary metrics and the worst class."""
    from ltcompress.metrics import STAGES, SUMMARY_KEYS as COLUMNS  # here: --help must not import numpy

    head = f"{'stage':<9}" + "".join(f"{c:>10}" for c in COLUMNS) + "  worst class"
    lines = [head, "-" * len(head)]
    for stage in STAGES:
        if stage in metrics:
            m = metrics[stage]
            values = [m.value(c) for c in COLUMNS]
            cells = "".join(f"{'absent' if v is None else format(v, '.4f'):>10}" for v in values)
            lines.append(f"{stage:<9}{cells}  {m.worst_class}")
    return "\n".join(lines)
