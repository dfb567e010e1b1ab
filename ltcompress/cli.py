"""The command line: converts options into compress()'s keywords (both generated from options.OPTIONS), calls
the API, maps errors to exit codes. Heavy imports (torch, timm) happen inside command bodies so ``--help`` is
instant."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from ltcompress import console
from ltcompress.errors import INTERRUPTED_EXIT, LTCompressError
from ltcompress.methods import METHODS, list_methods
from ltcompress.options import OPTIONS, RunOption
from ltcompress.values import key_values

log = logging.getLogger("ltcompress")
F = TypeVar("F", bound=Callable[..., Any])


def run_options(command: F) -> F:
    """`run`'s click options: one per row of options.OPTIONS, in its order (the help lists them so)."""
    for option in reversed(OPTIONS):
        command = _click_option(option)(command)
    return command


def _click_option(o: RunOption) -> Any:
    """A row as a click option: its flag, help, metavar, value type and shell completion."""
    kwargs: dict[str, Any] = {"help": o.help if isinstance(o.help, str) else o.help(), "metavar": o.metavar}
    if o.type is bool:
        kwargs.update(is_flag=True, flag_value=not o.negated, default=o.negated)
    else:
        kwargs.update(multiple=o.multiple or o.pairs, type=_click_type(o))
    if o.completion is not None:
        kwargs["shell_complete"] = _completes(o.completion, o.complete_files)
    return click.option(o.cli_flag, o.name, **kwargs)


def _click_type(o: RunOption) -> Any:
    if o.choices:
        return click.Choice(o.choices)
    if o.path:
        return click.Path(file_okay=o.path != "dir", dir_okay=o.path != "file")
    return o.type


def _completes(names: Callable[[], list[str]], files: bool = False) -> Callable[..., list[Any]]:
    """Shell completion for an option whose value is a registered name (`names()` is called only when the shell
    asks, so --help stays instant); `files` also offers paths (a preset may be a .yaml file)."""
    from click.shell_completion import CompletionItem

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        items = [CompletionItem(n) for n in names() if n.startswith(incomplete)]
        return items + [CompletionItem(incomplete, type="file")] * files

    return complete


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="ltcompress")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and the final summary.")
def cli(debug: bool, quiet: bool) -> None:
    """Distill a large timm classifier into a small edge model without losing the rare classes.

    \b
      ltcompress run --teacher resnet50 --student mobilenetv3 --method bkd
      ltcompress run --method kd --int8 --gate "int8.few >= 0.5" --gate "drop(fp32, int8).few <= 0.01"
      ltcompress verify runs/bkd-mobilenetv3_small_100-1 --gate "int8.worst >= 0.3"
      ltcompress list-methods
    """
    for old in [h for h in log.handlers if getattr(h, "ltcompress_cli", False)]:
        log.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ltcompress: %(message)s"))
    handler.ltcompress_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if debug else logging.INFO)


@cli.command()
@run_options
def run(as_json: bool, **options: Any) -> None:
    """Train (or reuse) the teacher, distill the student, export to ONNX, verify and gate.

    Exit codes: 0 gates passed, 2 usage, 3 data, 4 export mismatch, 5 gate failed, 6 diverged, 7 I/O, 130 Ctrl-C.
    """
    from ltcompress.api import CompressResult, DryRun, compress

    result = compress(**{o.name: o.from_cli(options[o.name]) for o in OPTIONS if o.keyword})
    if isinstance(result, DryRun):
        console.print_dry_run(result, as_json)
    elif isinstance(result, CompressResult):  # None: a torchrun rank other than 0; rank 0 reports
        console.finish_run(result, as_json)


@cli.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--dataset", help="Dataset to measure on (default: the one the export was trained on).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder holding the dataset files.")
@click.option(
    "--gate",
    "gates",
    multiple=True,
    metavar="EXPR",
    help="Gate on the fp32 or int8 stage, drop() or flip() between them; repeatable.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="A data setting by dotted key, e.g. data.test_per_class=500; repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table (as run --json).")
@click.option(
    "--output", "-o", "output", type=click.Path(dir_okay=False), help="Also write the result as JSON to this new file."
)
def verify(
    path: str,
    dataset: str | None,
    data_dir: str | None,
    gates: tuple[str, ...],
    settings: tuple[str, ...],
    as_json: bool,
    output: str | None,
) -> None:
    """Re-verify an export without training: PATH is a run directory, its bundle/, or one exported .onnx file
    (which says from its own metadata what data it was made for). Runs the ONNX model(s) with ONNX Runtime on
    the test split, prints per-stage metrics and flips, and evaluates the gates.

    Exit codes: 0 gates passed, 2 usage, 3 data, 5 gate failed, 7 I/O.
    """
    from ltcompress.exported import verify_export

    result = verify_export(
        path, dataset, gates=gates, data_dir=data_dir, overrides=key_values(settings, "--set"), json_out=output
    )
    console.finish_verify(result, as_json, Path(output) if output else None)


@cli.command("list-methods")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--params", is_flag=True, help="Also show each method's hyper-parameters and defaults.")
@click.option("--markdown", is_flag=True, help="A Markdown table (the README's method table is this output).")
def list_methods_cmd(as_json: bool, params: bool, markdown: bool) -> None:
    """Distillation methods and baselines: name, what it does, source, exact or reading."""
    infos = list_methods()
    if markdown:
        click.echo("| method | kind | status | what it does | source |\n|---|---|---|---|---|")
        for i in infos:
            status = "**reading**" if i.status == "reading" else i.status
            click.echo(f"| `{i.name}` | {'distill' if i.distills else 'plain'} | {status} | {i.summary} | {i.source} |")
        return
    rows = []
    for info in infos:
        row = info.to_dict()
        if params:
            import dataclasses

            row["params"] = dataclasses.asdict(METHODS.get(info.name).Params())
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(i.name) for i in infos)
    for row in rows:
        kind = "distill" if row["distills"] else "plain"
        click.echo(f"{row['name']:<{width}}  {kind:<7}  {row['status']:<7}  {row['summary']}")
        click.echo(f"{'':<{width}}  source: {row['source']}")
        if row["reading"]:
            click.echo(f"{'':<{width}}  reading in force: {row['reading']}")
        if params:
            click.echo(f"{'':<{width}}  params: {', '.join(f'{k}={v}' for k, v in row['params'].items()) or '-'}")


@cli.command("list-presets")
@click.option(
    "--json", "as_json", is_flag=True, help="Machine-readable output (name, dataset, recipe of, description)."
)
def list_presets_cmd(as_json: bool) -> None:
    """Built-in presets (recipes): the dataset each runs on, and which datasets use it as their recipe
    (--dataset X without --preset runs X's recipe)."""
    from ltcompress.data import recipe_table

    rows = recipe_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        used = f"recipe of --dataset {', '.join(row['recipe_of'])}" if row["recipe_of"] else f"on {row['dataset']}"
        click.echo(f"{row['name']:<16} {used:<34} {row['description']}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line per error and the documented exit code; tracebacks with --debug."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("LTCOMPRESS_DEBUG") == "1"
    try:
        cli.main(args=args, prog_name="ltcompress", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort) as exc:
        cause = exc.__context__ if isinstance(exc, click.exceptions.Abort) else exc  # click wraps Ctrl-C in Abort
        click.echo(f"ltcompress: {cause or 'interrupted'}", err=True)
        sys.exit(INTERRUPTED_EXIT)
    except LTCompressError as exc:
        _fail(exc, exc.exit_code, debug, str(exc))
    except Exception as exc:  # an internal error: one line, the traceback only with --debug
        _fail(
            exc,
            1,
            debug,
            f"internal error: {type(exc).__name__}: {exc}. Rerun with --debug for the traceback and report it",
        )


def _fail(exc: BaseException, code: int, debug: bool, message: str) -> None:
    if debug:
        import traceback

        traceback.print_exception(exc)
    click.echo(f"ltcompress: error: {message}", err=True)
    sys.exit(code)
