"""An exclusive lock on an index folder while it is updated, naming its holder."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tvt.errors import InputError

LOCK_FILE = "index.lock"


@contextmanager
def index_lock(index_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``index_dir`` (``index.lock``, which names the holder) while updating.

    The lock is an ``flock`` on the file, so the system releases it when the holder dies: a
    crashed run never leaves a stale lock. Where ``fcntl`` does not exist (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    path = index_dir / LOCK_FILE
    fd, writable = _open_lock_file(path)
    if fd is None:  # a read-only folder without a lock file: no one can update it, so no one to exclude
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"index {index_dir} is being updated by {_lock_holder(path)}; wait for it to "
                             f"finish (if no such process runs, delete {path})") from None
        if writable:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with the next holder)


def _open_lock_file(path: Path) -> tuple[int | None, bool]:
    """(fd, writable) of the lock file; read-only where the folder is (flock works on either)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644), True
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
    try:
        return os.open(path, os.O_RDONLY), False
    except OSError:
        return None, False


def _lock_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"process {info['pid']} on host {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
