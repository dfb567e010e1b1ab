"""The run directory: exclusive creation and locking, atomic writes, metrics.jsonl, and I/O errors -> exit 7."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from ltcompress.errors import LTCompressError, StorageError, UsageError, VerificationError

_STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EIO,
    errno.ENOTDIR,
}
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def io_errors(path: Path | str) -> Iterator[None]:
    """Turn disk-full / permission errors into StorageError (exit 7) naming the path, also when a library
    (safetensors, onnx, onnxruntime, torch.onnx) reports them through an exception type of its own."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        reason = storage_cause(exc)
        if reason is None:
            raise
        raise StorageError(
            f"cannot write {path}: {reason}. Free space or fix permissions, or choose another place with --runs-dir"
        ) from exc


@contextlib.contextmanager
def read_errors(path: Path, hint: str) -> Iterator[None]:
    """Reading one of our files (a model, a report): the disk failing is exit 7, anything else means the
    content is damaged, exit 4; both name the file, whatever the library raised."""
    try:
        yield
    except LTCompressError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - protobuf, onnxruntime and json each raise their own types
        lines = str(exc).strip().splitlines()
        raise VerificationError(
            f"{path} is damaged ({type(exc).__name__}: {lines[0][:200] if lines else ''}); {hint}"
        ) from exc


def storage_cause(exc: BaseException) -> str | None:
    """The disk or permission error behind `exc`, if any: an OSError with one of the storage errnos in its
    cause chain, or that errno's message in the text of a library's own exception."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE_ERRNOS:
            return current.strerror or os.strerror(current.errno)
        text = str(current)
        for code in _STORAGE_ERRNOS:
            if os.strerror(code) in text:
                return os.strerror(code)
        current = current.__cause__ or current.__context__
    return None


def temp_name(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden name next to `path` that no other writer (another process, another run) can share."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """For writers that take a file name (torch.onnx, ONNX Runtime, numpy): a unique temporary name next to
    `path`, renamed onto `path` only when the writer finished, removed when it failed. Readers never see a
    partial file, and a failure leaves nothing behind."""
    tmp = temp_name(path, ".tmp" + path.suffix)  # keeps the suffix: some writers pick the format by it
    with io_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a unique temp file in the same folder, fsync, then os.replace: readers never see a partial
    file, and a failed write (disk full) leaves nothing behind."""
    with staged(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


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
    """Tensors as safetensors (loadable without unpickling), written atomically: serialised in memory, so a
    full disk is an OSError of ours (exit 7) rather than a SafetensorError."""
    from safetensors.torch import save

    atomic_write_bytes(path, save(tensors, metadata=metadata))


@contextlib.contextmanager
def entry_lock(folder: Path, shared: bool = False) -> Iterator[None]:
    """A cache entry's lock (`folder/.lock`, through `filelock`, so on Linux, macOS and Windows alike), held
    while one process writes the entry's files or another reads them: no reader ever sees one writer's metadata
    beside another's weights. `shared` says the holder only reads; readers take the lock in turn too (reads
    are short), which keeps the lock portable."""
    from filelock import FileLock

    with io_errors(folder / ".lock"):
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / ".lock")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def cache_root(configured: str | None) -> Path:
    """Where every cache lives (teachers, teacher logits, downloaded data): ``run.cache_dir``, which resolving
    the configuration always fills in (ltcompress.environment); the default location for a bare call."""
    from ltcompress.environment import default_cache

    return Path(configured).expanduser() if configured else default_cache({})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link (no copy of large weights) where the file system allows; replaces `dst` atomically (resume)."""
    if dst.exists() and os.path.samefile(src, dst):
        return
    with staged(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)


@dataclass
class RunDir:
    path: Path
    _lock: Any = field(default=None, repr=False)

    def file(self, name: str) -> Path:
        return self.path / name

    listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list, repr=False)

    def log_metrics(self, record: dict[str, Any]) -> None:
        """metrics.jsonl, then every listener (the run's tracking sinks)."""
        with io_errors(self.file("metrics.jsonl")), open(self.file("metrics.jsonl"), "a") as fh:
            fh.write(json.dumps(record) + "\n")
        for listener in self.listeners:
            listener(record)

    def log_to_file(self, logger: logging.Logger) -> logging.Handler:
        """`logger` also writes to the run's run.log (INFO and up); remove the handler when the run ends."""
        handler = logging.FileHandler(self.file("run.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        return handler

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.file("config.yaml"), yaml.safe_dump(config, sort_keys=False))

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10))}
_NOT_IN_NAMES = set('<>:"/\\|?*') | {chr(c) for c in range(32)}


def name_problem(name: str) -> str | None:
    """Why `name` cannot be one folder on every OS (a run directory is copied between machines), or None.
    Windows is the strictest: separators, reserved characters and device names, a trailing dot or space."""
    if not name or name in (".", ".."):
        return "is not a folder name"
    bad = sorted(set(name) & _NOT_IN_NAMES)
    if bad:
        return f"contains {', '.join(repr(c) for c in bad)}, which a folder name cannot hold on every OS"
    if name.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        return "is a device name on Windows"
    if name[-1] in ". ":
        return "ends with a dot or a space, which Windows drops"
    return None


def default_name(method: str, student: str) -> str:
    return f"{method}-{student}-{time.strftime('%Y%m%d-%H%M%S')}"


def _lock(path: Path) -> RunDir:
    """The run directory's lock, held until the run ends (filelock: portable; released if the process dies)."""
    from filelock import FileLock, Timeout

    lock = FileLock(path / ".lock", timeout=0)
    try:
        with io_errors(path / ".lock"):  # a read-only file system is exit 7 naming the file, not a crash
            lock.acquire()
    except Timeout:
        raise UsageError(f"run directory {path} is locked by another process") from None
    return RunDir(path, lock)


def reopen(runs_dir: str | Path, name: str | None) -> RunDir:
    """Lock an interrupted run's directory to continue it (--resume)."""
    if not name:
        raise UsageError("--resume needs --name: the run to continue (its folder under --runs-dir)")
    path = Path(runs_dir) / name
    if not (path / "config.yaml").is_file():
        raise UsageError(
            f"nothing to resume: {path} is not a run directory (no config.yaml); drop --resume to start it"
        )
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
            problem = name_problem(candidate)
            if problem:
                raise UsageError(f"run name {candidate!r} {problem}; choose a plain folder name for --name")
            path = root / candidate
            try:
                path.mkdir()
            except FileExistsError:
                if name:
                    raise UsageError(
                        f"run {path} already exists; choose another --name (runs are never "
                        f"overwritten), or add --resume to continue it"
                    ) from None
                continue
            return _lock(path)
    raise UsageError(f"could not find a free run name under {root}")
