"""Exception types. Each carries the CLI exit code of DESIGN.md so the CLI never has to guess."""

from __future__ import annotations


class LTCompressError(Exception):
    """Base class: the message is the one line a user sees (what is wrong, how to fix it)."""

    exit_code = 1


class UsageError(LTCompressError):
    """Bad model/method name, preset key, gate expression, run name, or weights for another class count."""

    exit_code = 2


class DataError(LTCompressError):
    """Missing or corrupt dataset."""

    exit_code = 3


class VerificationError(LTCompressError):
    """The FP32 ONNX export does not reproduce the torch student."""

    exit_code = 4


class DivergenceError(LTCompressError):
    """Training produced a NaN or inf loss; the last good checkpoint is kept."""

    exit_code = 6


class StorageError(LTCompressError):
    """Disk full, permission denied, ...; the message names the path."""

    exit_code = 7


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after a resumable checkpoint was written; the message says how to continue."""


GATE_FAILED_EXIT = 5
INTERRUPTED_EXIT = 130
