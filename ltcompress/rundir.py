"""The run directory: exclusive creation and locking, atomic writes, metrics.jsonl, and I/O errors -> exit 7."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from ltcompress.errors import StorageError, UsageError

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.ENOTDIR}
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def io_errors(path: Path | str) -> Iterator[None]:
    """Turn disk-full / permission errors into StorageError (exit 7) naming the path."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        raise StorageError(f"cannot write {path}: {exc.strerror}. Free space or fix permissions, "
                           f"or choose another place with --runs-dir") from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: readers never see a partial file."""
    with io_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_file(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Tensors as safetensors (loadable without unpickling), written atomically."""
    from safetensors.torch import save_file

    with io_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no copy of large weights) where the file system allows; replaces `dst` atomically (resume)."""
    with io_errors(dst):
        if dst.exists() and os.path.samefile(src, dst):
            return
        tmp = dst.with_name(f".{dst.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)


@dataclass
class RunDir:
    path: Path
    _lock: Any = field(default=None, repr=False)

    def file(self, name: str) -> Path:
        return self.path / name

    def log_metrics(self, record: dict[str, Any]) -> None:
        with io_errors(self.file("metrics.jsonl")), open(self.file("metrics.jsonl"), "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(config, sort_keys=False))

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def default_name(method: str, student: str) -> str:
    return f"{method}-{student}-{time.strftime('%Y%m%d-%H%M%S')}"


def _lock(path: Path) -> RunDir:
    lock = open(path / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UsageError(f"run directory {path} is locked by another process") from None
    return RunDir(path, lock)


def reopen(runs_dir: str | Path, name: str | None) -> RunDir:
    """Lock an interrupted run's directory to continue it (--resume)."""
    if not name:
        raise UsageError("--resume needs --name: the run to continue (its folder under --runs-dir)")
    path = Path(runs_dir) / name
    if not (path / "config.yaml").is_file():
        raise UsageError(f"nothing to resume: {path} is not a run directory (no config.yaml); drop --resume to "
                         f"start it")
    run = _lock(path)
    if run.file("report.json").is_file():
        run.close()
        raise UsageError(f"run {path} has finished (report.json exists); nothing to resume")
    return run


def create(runs_dir: str | Path, name: str | None, default: str) -> RunDir:
    """Make a new, locked run directory. An explicit existing name is exit 2; an automatic one gets a suffix."""
    root = Path(runs_dir)
    with io_errors(root):
        root.mkdir(parents=True, exist_ok=True)
        candidates = [name] if name else [default] + [f"{default}-{i}" for i in range(2, 1000)]
        for candidate in candidates:
            if not candidate or "/" in candidate or candidate in (".", ".."):
                raise UsageError(f"run name {candidate!r} is not a plain folder name")
            path = root / candidate
            try:
                path.mkdir()
            except FileExistsError:
                if name:
                    raise UsageError(f"run {path} already exists; choose another --name (runs are never "
                                     f"overwritten), or add --resume to continue it") from None
                continue
            return _lock(path)
    raise UsageError(f"could not find a free run name under {root}")
