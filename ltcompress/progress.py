"""Progress bars for every stage longer than a few seconds, one way: tqdm on stderr, hidden with --no-progress
(``progress=False``) and whenever stderr is not a terminal."""

from __future__ import annotations

import math
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_default = {"enabled": True}  # the run's choice (plan.validate), for stages that take no progress argument


def configure(enabled: bool) -> None:
    """The run's --no-progress, for the stages that take no progress argument (data loading)."""
    _default["enabled"] = enabled


def bar(
    iterable: Iterable[T], desc: str, enabled: bool | None = None, total: int | None = None, unit: str = "batch"
) -> Iterator[T]:
    """`iterable` under a bar with rate and ETA (`enabled` None: the run's choice)."""
    from tqdm.auto import tqdm

    on = _default["enabled"] if enabled is None else enabled
    shown = tqdm(
        iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, disable=None if on else True
    )
    return iter(shown)


def batches(images: int, batch: int) -> int:
    """How many batches `images` make (the bar's total)."""
    return math.ceil(images / batch)
