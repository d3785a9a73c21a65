"""One process per run directory: an exclusive OS lock that dies with its holder.

Two processes working in one run directory would both do all the work and interleave their files (duplicated
``loss.csv`` rows, a mixed ``audit.log``). Every command that writes into a run directory therefore holds an
exclusive ``flock`` on the directory itself while it runs. The kernel releases the lock when the holder's file
descriptor closes, however the process ends, so a SIGKILLed run never leaves a stale lock behind. The holder's
PID is written to ``<run>/.lock`` only to name it in the refusal; that file is not the lock, and a leftover one
means nothing.

The lock is re-entrant within a process (``audit`` inside a ``sweep``, or the CLI around ``run_audit``), and under
a data-parallel launch only the main process takes it: the other ranks work under the main one's lock. Commands
that only read (``report --json`` / ``--fail-above`` without ``--write``, ``verify``, ``audit --dry-run``) take no
lock; ``report`` takes it when it writes. On a platform without ``fcntl`` (Windows) there is
no lock.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from .errors import DiffauditError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

PID_FILE = ".lock"
_held: dict[Path, int] = {}  # resolved run directory -> how many nested holders in this process


def check_run_dir(path: str | os.PathLike, option: str = "--run-dir") -> Path:
    """``path`` as a run directory that exists or can be created; refuses a file (or a file on the way to it)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise DiffauditError(f"{option} {path}: {p} is a file, not a folder; choose another {option}")
    return path


def _holder(path: Path) -> str:
    try:
        return (path / PID_FILE).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def run_lock(path: str | os.PathLike, *, option: str = "--run-dir") -> Iterator[Path]:
    """Hold the exclusive lock of run directory ``path`` (created if missing) for the ``with`` block.

    A second process asking for it fails at once with the holder's PID. A folder this call created and that is
    still empty afterwards (the command failed before writing anything) is removed again."""
    path = check_run_dir(path, option)
    if int(os.environ.get("RANK", "0")) > 0:  # a data-parallel rank other than the main one: the main one holds it
        yield path
        return
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DiffauditError(f"cannot create {option} {path} ({err.strerror}); choose a writable folder") from None
    key = path.resolve()
    if fcntl is None or key in _held:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield path
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DiffauditError(f"{path} is in use by another diffaudit process (PID {_holder(path)}); wait for it to "
                             f"finish, or use another {option}") from None
    _held[key] = 1
    try:
        (path / PID_FILE).write_text(f"{os.getpid()}\n")
        yield path
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            (path / PID_FILE).unlink()
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds when the failed command left the new folder empty
        os.close(fd)  # releases the lock
