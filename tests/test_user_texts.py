"""What users read names no tracker entries ("issue 14", "#4"): such a number means nothing outside the project's
tracker, so the text says what it refers to instead (a reading, a document)."""

import re
from pathlib import Path

import pytest

from conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
TRACKER_NUMBER = re.compile(r"\bissues?\s*#?\d+|(?<![\w&/])#\d+\b", re.IGNORECASE)


def _numbers(text: str) -> list[str]:
    return [m.group(0) for m in TRACKER_NUMBER.finditer(text)]


def test_the_pattern_finds_tracker_numbers_and_nothing_else():
    assert _numbers("second reading (issue 14; see #4, Issues #7)") == ["issue 14", "#4", "Issues #7"]
    assert _numbers("color #7f7f7f, see [Data](#data), page.html#3d, &#39; an issue") == []


def _cli_texts(capsys: pytest.CaptureFixture) -> dict[str, str]:
    """Every command's --help and every listing, by the command line that printed it."""
    from ltcompress.cli import cli

    lines = [["--help"], *([name, "--help"] for name in cli.commands)]
    lines += [["list-methods"], ["list-methods", "--json", "--params"], ["list-methods", "--markdown"]]
    lines += [["list-presets"], ["list-presets", "--json"]]
    texts = {}
    for args in lines:
        code, out, err = run_cli(args, capsys)
        assert code == 0, (args, err)
        texts[" ".join(args)] = out + err
    return texts


def test_no_tracker_number_in_what_the_cli_prints(capsys):
    found = {line: _numbers(text) for line, text in _cli_texts(capsys).items()}
    assert not any(found.values()), {line: numbers for line, numbers in found.items() if numbers}


def test_no_tracker_number_in_the_method_registry():
    from ltcompress.methods import list_methods

    found = {i.name: _numbers(f"{i.summary}\n{i.source}\n{i.reading}") for i in list_methods()}
    assert not any(found.values()), {name: numbers for name, numbers in found.items() if numbers}


def test_no_tracker_number_in_the_presets_or_the_readmes():
    files = [*sorted((REPO / "presets").glob("*.yaml")), REPO / "export" / "BUNDLE_README.md", REPO / "README.md"]
    found = {path.name: _numbers(path.read_text()) for path in files}
    assert not any(found.values()), {name: numbers for name, numbers in found.items() if numbers}
