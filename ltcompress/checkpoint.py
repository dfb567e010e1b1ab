"""Resumable training state: everything a killed run needs to continue to the bit-identical result.

A checkpoint holds the model, method parameters, optimizer, scheduler, epoch and step, the augmentation
generator and the global RNG states, the epoch's running sums and history, plus what the caller adds (the
resolved config and the teacher's sha256) so a resume with other settings is refused instead of silently mixed.
Files are written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ltcompress.errors import DataError, StorageError, UsageError


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none. An unreadable one is exit 2, never unpickled."""
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        return state
    except Exception as exc:
        raise UsageError(
            f"checkpoint {path} cannot be read safely ({str(exc).splitlines()[0]}); start a new run instead of --resume"
        ) from None


def load_student(path: Path, teacher_sha: str | None, run_path: Path) -> dict[str, Any] | None:
    """The student's last checkpoint, when it was distilled from this very teacher (exit 2 otherwise)."""
    saved = load(path)
    if saved is not None and saved.get("teacher_sha256") != teacher_sha:
        raise UsageError(
            f"cannot resume {run_path}: its student was distilled from teacher sha256 "
            f"{str(saved.get('teacher_sha256'))[:12]}, this run has {str(teacher_sha)[:12]}; pass "
            f"the original --teacher-weights, or start a new run"
        )
    return saved


def differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs, as 'key: saved -> current'."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            out += differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return out
    if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
        saved, current = list(saved), list(current)
    return [] if saved == current else [f"{prefix.rstrip('.')}: {saved!r} -> {current!r}"]


class StopRequest:
    """Ctrl-C during training sets a flag that the loop checks after each step, so the checkpoint it writes
    is a consistent one (never half an optimizer update). A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def check_same_config(run: Any, resolved: dict[str, Any]) -> None:
    """A resumed run must continue with exactly the settings it started with."""
    import yaml

    from ltcompress.config import plain

    path = run.file("config.yaml")
    try:
        saved = yaml.safe_load(path.read_bytes().decode("utf-8"))
        saved["run"]["name"]  # noqa: B018 - a config.yaml without the run section is damaged too
    except OSError as exc:
        run.close()
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError) as exc:
        run.close()
        raise UsageError(
            f"cannot resume {run.path}: its {path.name} is damaged ({type(exc).__name__}); start a new run"
        ) from exc
    current = plain(resolved)
    saved["run"]["name"] = current["run"]["name"]  # an automatic name is given explicitly when resuming
    for section, key in (("run", "cache_dir"), ("data", "download")):  # where caches live, not what trains
        saved.get(section, {}).pop(key, None)
        current[section].pop(key, None)
    changed = differences(saved, current)
    if changed:
        run.close()
        raise UsageError(
            f"cannot resume {run.path}: the settings differ from the run's ({'; '.join(changed[:3])}"
            f"{'; ...' if len(changed) > 3 else ''}); use the original options, or start a new run"
        )


def check_same_data(run: Any, manifest: tuple[str, ...]) -> None:
    """A resumed run must see the files it started with: name what was added, removed or changed."""
    path = run.file("data-manifest.txt")
    if not manifest or not path.is_file():
        return

    def by_file(lines: Any) -> dict[str, str]:  # "split label size mtime path" keyed by "split path"
        return {f"{parts[0]} {parts[4]}": line for line in lines if line for parts in [line.split(" ", 4)]}

    before, now = by_file(path.read_text().splitlines()), by_file(manifest)
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    changed = sorted(k for k in set(now) & set(before) if now[k] != before[k])
    if added or removed or changed:
        parts = [
            f"{len(v)} {what} (e.g. {v[0]})"
            for what, v in (("added", added), ("removed", removed), ("changed", changed))
            if v
        ]
        run.close()
        raise DataError(
            f"cannot resume {run.path}: the data changed since the run began: {'; '.join(parts)}. "
            f"Restore the files, or start a new run"
        )
