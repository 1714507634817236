"""One owner per checkpoint directory: an exclusive lock taken before training.

`DirectoryLock` holds ``<checkpoint_dir>/fit.lock`` for the whole of a `jaxce.fit`
/ `jaxce.fit_ensemble` call. On POSIX it is an `fcntl.flock` on that file, which
the operating system releases when the process ends in any way (SIGKILL
included), so the lock of a dead process is never stale; the file itself stays
(removing it would let two processes lock two different files) and records the
owner's pid and host for the error message. Elsewhere the file is created
exclusively and holds the pid: a lock whose process no longer exists on this
host is taken over, and the file is removed on release.

Taking the lock also shows that the directory can be created and written, so a
bad ``checkpoint_dir`` fails before anything is compiled.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time
from typing import Any

from ._files import pid_alive

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCKNAME = "fit.lock"


class LockError(Exception):
    """Raised by `DirectoryLock.acquire` (the caller picks the public type)."""


def _owner_text(path: pathlib.Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"pid {owner['pid']} on host {owner['host']!r}, since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


def _owner() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


class DirectoryLock:
    """An exclusive lock on ``directory`` (created if missing) for one process."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        self.path = self.directory / LOCKNAME
        self.fd: int | None = None

    def _prepare(self) -> None:
        name = os.fspath(self.directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise LockError(f"{name!r} exists and is not a directory.")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LockError(f"{name!r} cannot be created: {err}.") from err

    def acquire(self) -> None:
        """Take the lock, or raise `LockError` saying who holds it / what failed."""
        self._prepare()
        if fcntl is None:  # pragma: no cover - Windows
            return self._acquire_exclusive_file()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise LockError(
                f"{os.fspath(self.directory)!r} is not writable: {err}."
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise LockError(
                f"{os.fspath(self.directory)!r} is in use by another training run "
                f"({_owner_text(self.path)}); wait for it to finish or use another "
                "directory."
            ) from err
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        self.fd = fd

    def _acquire_exclusive_file(self) -> None:  # pragma: no cover - Windows
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                    stale = owner["host"] == socket.gethostname() and not pid_alive(
                        int(owner["pid"])
                    )
                except (OSError, ValueError, KeyError, TypeError):
                    stale = False
                if stale:
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockError(
                    f"{os.fspath(self.directory)!r} is in use by another training "
                    f"run ({_owner_text(self.path)}); wait for it to finish, or "
                    f"delete {os.fspath(self.path)!r} if that run is gone."
                ) from None
            except OSError as err:
                raise LockError(
                    f"{os.fspath(self.directory)!r} is not writable: {err}."
                ) from err
            os.write(fd, json.dumps(_owner()).encode())
            self.fd = fd
            return
        raise LockError(f"could not take the lock {os.fspath(self.path)!r}.")

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if fcntl is None:  # pragma: no cover - Windows
            os.close(fd)
            self.path.unlink(missing_ok=True)
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
