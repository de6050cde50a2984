"""A photo-folder embedding index on disk, updated incrementally and resumable.

Layout of an index directory::

    index.json       metadata (written last: it is the commit point of an update)
    embeddings.npy   float32 [N, D], L2-normalised; row i belongs to files.json paths[i]
    files.json       {"paths": [relative POSIX paths], "size": [...], "mtime_ns": [...]}
    partial/         shards of an update in progress (removed once the update is committed)
    cache/           derived search structures (FAISS indexes), safe to delete
    index.lock       held (flock) by the `tvt index` run updating the folder; names its pid and host

``index.json`` records the format version, the model identity (kind, dim, img_size, return_idx,
checkpoint path and sha256), the photo root (absolute), creation/update times, counts, the
checksums of the two data files and the files that were skipped with the reason. Every file is
written to a temporary name and renamed, and the checksums catch a crash between two renames.
A file is re-embedded when its (size, mtime_ns) changed; removed files are dropped: the update
itself (plan, embed, commit) is :mod:`tvt.search.update`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvt.errors import DataError, InputError
from tvt.files import atomic_write_all, sha256_file
from tvt.search.identity import ModelIdentity

INDEX_FORMAT = "tvt-index"
INDEX_VERSION = 1
INDEX_FILE, EMB_FILE, FILES_FILE = "index.json", "embeddings.npy", "files.json"
CACHE_DIR = "cache"


def _sha256_array(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def display_name(path: str) -> str:
    """``path`` safe to print or send as JSON: bytes that are not UTF-8 (kept by Python as lone
    surrogates) are shown as ``\\xNN`` and control characters (a terminal escape, a newline) as
    ``\\x1b``, ``\\n``; the file itself is still opened by its real name."""
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file system produced (e.g. from JSON)
        raw = path.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def is_inside(path: str | Path, root: str | Path) -> bool:
    """True when ``path`` resolves (symlinks followed) to ``root`` or below it."""
    return _under(os.path.realpath(path), os.path.realpath(root))


def scan_photos(photo_root: str | Path,
                exclude: Iterable[str | Path] = ()) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """Image files under ``photo_root`` -> ({relpath: (size, mtime_ns)}, [(relpath, reason)]).

    The walk is :func:`tvt.data.layout.list_images` (recursive, follows symlinks, common image
    extensions). A symlink that resolves outside the root is skipped, so the server can never be
    made to read a file outside it; so are files below ``exclude`` (e.g. the index itself).
    """
    from tvt.data.images import file_kind
    from tvt.data.layout import list_images

    root = Path(photo_root)
    top = os.path.realpath(root)
    excluded = [os.path.realpath(e) for e in exclude]
    dir_real: dict[str, str] = {}  # realpath per directory: one lookup per folder, not per file
    files: dict[str, tuple[int, int]] = {}
    skipped: list[tuple[str, str]] = []
    for p in list_images(root):
        rel = p.relative_to(root).as_posix()
        parent = str(p.parent)
        if parent not in dir_real:
            dir_real[parent] = os.path.realpath(parent)
        real = os.path.realpath(p) if p.is_symlink() else os.path.join(dir_real[parent], p.name)
        if any(_under(real, e) for e in excluded):
            continue
        if not _under(real, top):
            skipped.append((rel, "symlink to a file outside the photo root"))
            continue
        try:
            st = p.stat()
        except OSError as exc:
            skipped.append((rel, f"cannot stat: {exc.strerror or exc}"))
            continue
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader forever, a device read endlessly
            skipped.append((rel, f"not a regular file ({file_kind(st.st_mode)})"))
            continue
        files[rel] = (int(st.st_size), int(st.st_mtime_ns))
    return files, skipped


def _under(real: str, top: str) -> bool:
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


@dataclass
class PhotoIndex:
    """An index loaded in memory: ``embeddings[i]`` [D] is the photo ``paths[i]``."""

    index_dir: Path
    photo_root: Path
    model: ModelIdentity
    paths: list[str]
    sizes: np.ndarray  # int64 [N]
    mtimes: np.ndarray  # int64 [N], ns
    embeddings: np.ndarray  # float32 [N, D], L2-normalised
    skipped: list[dict[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def checksum(self) -> str:
        """sha256 of the embeddings as recorded in index.json (identifies derived caches)."""
        return str(self.meta.get("embeddings", {}).get("sha256", ""))

    def abspath(self, i: int) -> Path:
        return self.photo_root / self.paths[i]

    def safe_path(self, i: int) -> Path:
        """Resolved path of photo ``i``; InputError unless it is an existing file inside the root."""
        if not 0 <= i < len(self.paths):
            raise InputError(f"photo id {i} is not in the index (0..{len(self.paths) - 1})")
        path = self.abspath(i)
        if not is_inside(path, self.photo_root):
            raise InputError(f"photo id {i} resolves outside the photo root {self.photo_root}")
        if not path.is_file():
            raise InputError(f"photo id {i} ({self.paths[i]}) no longer exists; re-run `tvt index`")
        return Path(os.path.realpath(path))

    @classmethod
    def load(cls, index_dir: str | Path, verify: bool = True, mmap: bool = False) -> PhotoIndex:
        """Read an index directory; DataError if it is missing, of another version or damaged.

        ``mmap``: leave the embeddings on disk as a read-only ``np.memmap`` (for the compact search
        backend, which reads only the rows it re-ranks)."""
        d = Path(index_dir).expanduser()
        meta = _read_meta(d)
        try:
            table = json.loads((d / FILES_FILE).read_text(encoding="utf-8"))
            emb = np.load(d / EMB_FILE, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty embeddings file
            raise DataError(f"index {d} is damaged ({exc}); re-run `tvt index` with --rebuild") from exc
        try:
            return cls._from_parts(d, meta, table, emb, verify)
        except (KeyError, TypeError, AttributeError) as exc:  # a hand-edited or foreign index.json/files.json
            raise DataError(f"index {d} is damaged (missing or malformed entry {exc}); "
                            "re-run `tvt index` with --rebuild") from exc

    @classmethod
    def _from_parts(cls, d: Path, meta: dict[str, Any], table: Any, emb: Any, verify: bool) -> PhotoIndex:
        if not isinstance(emb, np.ndarray):
            raise DataError(f"index {d}: {EMB_FILE} is not a single array; re-run `tvt index` with --rebuild")
        if verify and (_sha256_array(emb) != meta["embeddings"]["sha256"]
                       or sha256_file(d / FILES_FILE) != meta["files"]["sha256"]):
            raise DataError(f"index {d}: embeddings.npy/files.json do not match index.json (an update was "
                            "interrupted while committing); re-run `tvt index` to repair it")
        n = len(table["paths"])
        if emb.ndim != 2 or emb.shape[0] != n or n != meta["count"]:
            raise DataError(f"index {d}: {n} paths but embeddings of shape {emb.shape}; re-run `tvt index`")
        return cls(d, Path(meta["photo_root"]), ModelIdentity.from_dict(meta["model"]), list(table["paths"]),
                   np.asarray(table["size"], np.int64), np.asarray(table["mtime_ns"], np.int64),
                   emb.astype(np.float32, copy=False), list(meta.get("skipped", [])), meta)


def _read_meta(d: Path) -> dict[str, Any]:
    path = d / INDEX_FILE
    if not path.is_file():
        raise DataError(f"{d} is not a tvt index (no {INDEX_FILE}); create one with `tvt index PHOTO_DIR --out {d}`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"index file {path} is unreadable ({exc}); re-run `tvt index` with --rebuild") from exc
    if not isinstance(meta, dict):
        raise DataError(f"index file {path} holds a JSON {type(meta).__name__}, not an object; "
                        "re-run `tvt index` with --rebuild")
    if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
        raise DataError(f"{path} is format {meta.get('format')!r} version {meta.get('version')!r}; this tvt reads "
                        f"{INDEX_FORMAT!r} version {INDEX_VERSION}: rebuild it with `tvt index --rebuild`")
    return meta


def write_index(index_dir: Path, photo_root: Path, model: ModelIdentity, rows: dict[str, tuple[int, int, np.ndarray]],
                skipped: list[tuple[str, str]], created: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    """Commit ``rows`` {relpath: (size, mtime_ns, embedding [D])}: data files first, index.json last."""
    paths = sorted(rows)
    emb = np.stack([rows[p][2] for p in paths]).astype(np.float32) if paths else np.zeros((0, model.dim), np.float32)
    table = {"paths": paths, "size": [rows[p][0] for p in paths], "mtime_ns": [rows[p][1] for p in paths]}
    files_bytes = json.dumps(table).encode("utf-8")
    meta = {
        "format": INDEX_FORMAT, "version": INDEX_VERSION, "model": model.to_dict(),
        "photo_root": str(photo_root), "created": created or _now(), "updated": _now(),
        "count": len(paths), "dim": int(emb.shape[1]),
        "embeddings": {"file": EMB_FILE, "sha256": _sha256_array(emb), "dtype": "float32", "normalised": True},
        "files": {"file": FILES_FILE, "sha256": hashlib.sha256(files_bytes).hexdigest()},
        "skipped": [{"path": p, "reason": r} for p, r in sorted(skipped)],
        **extra,
    }
    atomic_write_all([(index_dir / EMB_FILE, lambda fh: np.save(fh, emb, allow_pickle=False)),
                          (index_dir / FILES_FILE, lambda fh: fh.write(files_bytes)),
                          (index_dir / INDEX_FILE, lambda fh: fh.write(json.dumps(meta, indent=1).encode("utf-8")))])
    return meta


def log(msg: str) -> None:
    print(msg, file=sys.stderr)


def index_transform(model: ModelIdentity) -> Callable[[Any], Any]:
    """The evaluation transform of the model that built an index (its mean/std when recorded)."""
    from tvt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform

    return eval_transform(model.img_size, mean=model.extra.get("mean", IMAGENET_MEAN),
                          std=model.extra.get("std", IMAGENET_STD))
