"""What the commands print when they finish: the stage table, flip rates and gate verdicts, and the one line
and exit code 5 for failed gates."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ltcompress.errors import GATE_FAILED_EXIT

if TYPE_CHECKING:
    from ltcompress.api import CompressResult, DryRun


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
    5 when the INT8 repair or a gate failed."""
    if as_json:
        keys = ("passed", "gates", "metrics", "flips")
        click.echo(json.dumps({"run_dir": str(result.run_dir), **{k: getattr(result, k) for k in keys}}, indent=2))
    else:
        print_outcome(result.metrics, result.flips, result.gates)
        click.echo(f"report: {result.run_dir / 'report.json'} and report.html")
        click.echo(f"bundle: {result.bundle_dir}" if result.passed else "bundle: not written (a gate failed)")
    exit_on_failed_repair(result.int8_repair, result.run_dir / "report.json")
    exit_on_failed_gates(result.failed_gates, result.run_dir / "report.json")


def print_outcome(metrics: dict[str, Any], flips: dict[str, Any], gates: list[dict[str, Any]]) -> None:
    """The stage table, the flip rates and every gate's verdict."""
    click.echo(summary_table(metrics))
    for pair, f in flips.items():
        click.echo(
            f"flips {pair}: {100 * f['overall']:.2f} % of test images, most in {f['worst_class']} "
            f"({100 * f['worst']:.1f} %)"
        )
    for g in gates:
        click.echo(
            f"gate {'PASS' if g['passed'] else 'FAIL'}  {g['gate']:<30} {g['subject']} = "
            f"{_shown(g['value'])} (required {g['op']} {g['threshold']:g})"
        )


def exit_on_failed_gates(failed: list[dict[str, Any]], where: Path | None) -> None:
    """Exit 5 naming every failed gate and the value it got (and the file that records them, if any)."""
    if failed:
        listed = "; ".join(f"'{g['gate']}' ({g['subject']} = {_shown(g['value'])})" for g in failed)
        click.echo(f"ltcompress: {len(failed)} gate(s) failed: {listed}{f'; see {where}' if where else ''}", err=True)
        sys.exit(GATE_FAILED_EXIT)


def exit_on_failed_repair(repair: dict[str, Any] | None, where: Path) -> None:
    """Exit 5 when the INT8 repair spent its budget before the int8 gates passed on the held-out images."""
    if repair and not repair["met"]:
        nodes = ", ".join(n["node"] for n in repair["nodes"]) or "none"
        failing = "; ".join(
            f"'{g['gate']}' ({_shown(g['value'])}, expected {_shown(g.get('expected'))})"
            for g in repair["gates_after"]
            if not g["passed"]
        )
        click.echo(
            f"ltcompress: the INT8 repair did not meet the int8 gates on the held-out images within its "
            f"budget ({repair['stopped']}): returned {len(repair['nodes'])} node(s) to FP32 ({nodes}) and "
            f"still {failing}; raise export.repair_budget or export.repair_max_size, or see {where}",
            err=True,
        )
        sys.exit(GATE_FAILED_EXIT)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_table(metrics: dict[str, dict[str, Any]]) -> str:
    """One row per stage: the summary metrics and the worst class."""
    from ltcompress.metrics import STAGES, SUMMARY_KEYS as COLUMNS  # here: --help must not import numpy

    head = f"{'stage':<9}" + "".join(f"{c:>10}" for c in COLUMNS) + "  worst class"
    lines = [head, "-" * len(head)]
    for stage in STAGES:
        if stage in metrics:
            m = metrics[stage]
            cells = "".join(f"{'absent' if m[c] is None else format(m[c], '.4f'):>10}" for c in COLUMNS)
            lines.append(f"{stage:<9}{cells}  {m['worst_class']}")
    return "\n".join(lines)
