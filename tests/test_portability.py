"""What differs on Windows and macOS, exercised on this Linux machine where the code allows: run names that a
folder cannot take on every OS are refused before anything is written (the lock is tested through its public
API in tests/test_locks.py; list-file paths written on Windows in tests/test_lists.py)."""

import pytest

from ltcompress import rundir
from ltcompress.errors import UsageError


@pytest.mark.parametrize(
    "name, why",
    [
        ("a/b", "contains '/'"),
        ("a\\b", "contains '\\\\'"),  # the message shows the character as Python writes it: '\\'
        ("c:run", "contains ':'"),
        ("what?", "contains '?'"),
        ("tab\there", "contains '\\t'"),
        ("CON", "is a device name on Windows"),
        ("nul.txt", "is a device name on Windows"),
        ("Com3", "is a device name on Windows"),
        ("run.", "ends with a dot or a space"),
        ("run ", "ends with a dot or a space"),
        ("..", "is not a folder name"),
    ],
)
def test_a_run_name_no_os_can_hold_is_exit_2_and_nothing_is_made(tmp_path, name, why):
    runs = tmp_path / "runs"
    with pytest.raises(UsageError) as info:
        rundir.create(runs, name, "unused")
    assert str(info.value).startswith(f"run name {name!r} {why}") and "--name" in str(info.value)
    assert info.value.exit_code == 2 and list(runs.iterdir()) == []


@pytest.mark.parametrize("name", ["kd-mobilenetv3_small_100-20261202-101500", "seed 1", "run.v2", "CONSOLE", "com10"])
def test_ordinary_run_names_are_taken(tmp_path, name):
    run = rundir.create(tmp_path, name, "unused")
    try:
        assert run.path == tmp_path / name and run.path.is_dir()
    finally:
        run.close()
