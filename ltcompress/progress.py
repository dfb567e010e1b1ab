"""Progress bars for every stage longer than a few seconds, one way: tqdm on stderr, hidden with --no-progress
(``progress=False``) and whenever stderr is not a terminal."""

from __future__ import annotations

import math
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def bar(iterable: Iterable[T], desc: str, enabled: bool, total: int | None = None, unit: str = "batch") -> Iterator[T]:
    """`iterable` under a bar with rate and ETA."""
    from tqdm.auto import tqdm

    return iter(
        tqdm(
            iterable,
            desc=desc,
            total=total,
            unit=unit,
            leave=False,
            dynamic_ncols=True,
            disable=None if enabled else True,
        )
    )


def batches(images: int, batch: int) -> int:
    """How many batches `images` make (the bar's total)."""
    return math.ceil(images / batch)
