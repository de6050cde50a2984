"""Files written whole or not at all, JSON files and file digests (the bottom layer, like ``errors``).

Every file the package writes for later reading (checkpoints, indexes, caches, reports, manifests)
goes through :func:`atomic_write`: the content goes to a temporary file beside the target, which is
then renamed over it, so a crash, ``kill -9`` or a full disk never leaves a half-written file in
place of the last good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX); skipped where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object], *, fsync: bool = True,
                 unique: bool = False, before_replace: Callable[[], object] | None = None) -> Path:
    """Write ``path`` whole or not at all: ``write(fh)`` fills a temporary file that replaces ``path``.

    Args:
        path: the target; its folder is created when missing.
        write: called once with the temporary file, open for binary writing.
        fsync: flush the file before the rename and the folder after it, so the new content
            survives a power cut (False for caches that are rebuilt when lost).
        unique: a temporary name of its own (``<name>.<pid>-<random>.tmp``, created exclusively)
            where several processes may write the same target at once; otherwise ``<name>.tmp``,
            so the leftover of a killed run is reused rather than piling up.
        before_replace: called when the temporary file is complete, just before the rename (to
            keep the old file under another name, for instance).
    Returns:
        ``path``. On any error the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if unique:
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    else:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with open(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def atomic_write_all(items: Sequence[tuple[Path, Callable[[IO[bytes]], object]]]) -> None:
    """Write several files as one commit: every ``(path, write)`` goes to ``<name>.tmp`` (fsynced)
    first, and the renames start only when all are complete, so a full or read-only disk fails
    before any target is touched (a crash between two renames is for the reader's checksums)."""
    tmps: list[Path] = []
    try:
        for path, write in items:
            tmp = Path(path).with_name(Path(path).name + ".tmp")
            tmps.append(tmp)
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        for (path, _), tmp in zip(items, tmps):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    if items:
        fsync_dir(Path(items[0][0]).parent)


def write_text(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`); returns ``path``."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data), fsync=fsync)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2, fsync: bool = True, **dumps: Any) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically; returns ``path``.

    ``indent`` None writes one compact line; ``dumps`` go to :func:`json.dumps` (``default``,
    ``ensure_ascii``, ``sort_keys``...). The object is encoded before anything is written, so an
    object JSON cannot hold leaves the old file untouched.
    """
    return write_text(path, json.dumps(obj, indent=indent, **dumps) + "\n", fsync=fsync)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``, read in ``chunk``-byte blocks (1 MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
