"""A process's part in a run. Under torchrun every rank trains; rank 0 (the leader) alone owns the run
directory, writes files and shows progress. The other ranks (followers) take the same collective steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ltcompress.rundir import RunDir


@dataclass(frozen=True)
class Leader:
    """Rank 0, or the only process: the run directory (logs, checkpoints, results) and the progress bars."""

    run: RunDir
    resume: bool
    progress: bool

    def log_metrics(self, record: dict[str, Any]) -> None:
        self.run.log_metrics(record)


@dataclass(frozen=True)
class Follower:
    """A torchrun rank other than 0: trains alongside the leader, receives what it decides, writes nothing."""

    resume: bool
    progress: bool = False


Role = Union[Leader, Follower]
