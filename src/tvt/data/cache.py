"""On-disk cache of decoded RGB images, so PNG/JPEG decoding is paid once, not every epoch.

Augmentations run after decoding, so caching the decoded image (before any transform) is exact:
:meth:`DecodedCache.get` returns pixel-for-pixel what :func:`~tvt.data.folder.load_rgb` returns.

One file per (source image, ``alpha_background``, ``exif_transpose``) under
``<cache_dir>/<2 hex>/<32 hex>.npy``, the name a SHA-256 of the resolved source path and the mode.
Each file is a plain ``.npy`` (``np.load(path, allow_pickle=False)`` reads it): ``uint8 [H, W, 3]``,
or ``uint8 [H, W]`` when the three channels are equal (sketches; one third of the disk, expanded
back exactly on load), followed by a 48-byte trailer that ``np.load`` ignores::

    magic (8) | key digest (16) | source size (int64) | source mtime_ns (int64) | crc32 (uint32) | 0 (4)

A hit needs the trailer to match the source's current size and mtime_ns, the file length to match
its header, and the crc32 to match the pixels; anything else (a changed source, a truncated or
corrupt file) is a miss that decodes again and rewrites the file. Files are written to a temporary
name and moved into place with ``os.replace``, so concurrent DataLoader workers and ranks sharing
the folder never read half a file. Files of deleted sources are left behind: delete the folder to
reclaim the space.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import secrets
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tvt.data.images import ALPHA_BACKGROUNDS, DATASET_MAX_PIXELS, load_rgb
from tvt.errors import DataError
from tvt.files import atomic_write

_MAGIC = b"TVTDC\x00\x01\n"  # last two bytes: format version; a new format simply misses
_TRAILER = struct.Struct("<8s16sqqI4x")  # 48 bytes, layout in the module docstring
_NPY_HEADER = re.compile(rb"\{'descr': '\|u1', 'fortran_order': False, 'shape': \((\d+), (\d+)(?:, (3))?\), \} *\n")


class DecodedCache:
    """Decoded-image cache in folder ``root`` (created if missing).

    ``hits`` / ``misses`` count :meth:`get` calls in this process (each DataLoader worker keeps its
    own counts). ``write_errors`` counts cache files that could not be written (e.g. a full disk):
    the image is still returned and a single warning is issued. ``verify=False`` skips the crc32 of
    each hit (about a third of the hit time); truncation and stale sources are still detected.
    Raises :class:`DataError` naming ``root`` when it cannot be created or written to.
    """

    def __init__(self, root: str | Path, *, verify: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.verify = verify
        self.hits = 0
        self.misses = 0
        self.write_errors = 0
        self._digests: dict[tuple[str, str, bool], bytes] = {}
        _check_writable(self.root)

    def get(self, path: str | Path, alpha_background: str = "white", max_pixels: int | None = DATASET_MAX_PIXELS,
            *, exif_transpose: bool = False) -> Image.Image:
        """``load_rgb(path, alpha_background, max_pixels=..., exif_transpose=...)``, from the cache when valid.

        Returns an RGB PIL image. Raises what :func:`load_rgb` raises (``ImageReadError`` for an
        unreadable or too-large source); a failed decode writes nothing.
        """
        if alpha_background not in ALPHA_BACKGROUNDS:
            raise DataError(f"alpha_background must be one of {ALPHA_BACKGROUNDS}, got {alpha_background!r}")
        try:
            st = os.stat(path)
        except OSError:  # missing or inaccessible: load_rgb raises the usual ImageReadError
            return load_rgb(path, alpha_background, max_pixels=max_pixels, exif_transpose=exif_transpose)
        digest = self._digest(path, alpha_background, exif_transpose)
        name = digest.hex()
        file = self.root / name[:2] / f"{name}.npy"
        arr = _read(file, digest, st.st_size, st.st_mtime_ns, self.verify)
        if arr is not None:
            h, w = arr.shape[:2]
            if max_pixels is not None and h * w > max_pixels:  # let load_rgb raise its own error
                return load_rgb(path, alpha_background, max_pixels=max_pixels, exif_transpose=exif_transpose)
            self.hits += 1
            return _to_image(arr)
        self.misses += 1
        # Stat taken before decoding: a source edited meanwhile is stored as stale and re-decoded.
        img = load_rgb(path, alpha_background, max_pixels=max_pixels, exif_transpose=exif_transpose)
        self._write(file, digest, st.st_size, st.st_mtime_ns, img)
        return img

    def _digest(self, path: str | Path, alpha_background: str, exif_transpose: bool) -> bytes:
        """16-byte key of (resolved path, mode); memoised because resolving costs a syscall per folder."""
        memo = (os.fspath(path), alpha_background, exif_transpose)
        digest = self._digests.get(memo)
        if digest is None:
            material = f"{os.path.realpath(path)}\0{alpha_background}\0{int(exif_transpose)}"
            digest = self._digests[memo] = hashlib.sha256(material.encode("utf-8", "surrogateescape")).digest()[:16]
        return digest

    def _write(self, file: Path, digest: bytes, size: int, mtime_ns: int, img: Image.Image) -> None:
        try:
            _write_atomic(file, _to_array(img), digest, size, mtime_ns)
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:
                warnings.warn(f"decoded-image cache {self.root}: cannot write {file} ({exc}); images are "
                              "decoded without caching. Free space or fix permissions there", stacklevel=3)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_digests"] = {}  # per-process memo: not worth shipping to every DataLoader worker
        return state

    def __repr__(self) -> str:
        return f"DecodedCache(root={str(self.root)!r}, hits={self.hits}, misses={self.misses})"


def _check_writable(root: Path) -> None:
    """Create ``root`` and prove a file can be made there, else raise :class:`DataError`."""
    probe = root / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(f"decoded-image cache folder {root} is not a writable folder ({type(exc).__name__}: "
                        f"{exc}); choose another cache_dir or fix its permissions") from exc


def _to_array(img: Image.Image) -> np.ndarray:
    """RGB image -> ``uint8 [H, W, 3]``, or ``uint8 [H, W]`` when the three channels are equal."""
    arr = np.asarray(img, dtype=np.uint8)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    if np.array_equal(r, g) and np.array_equal(r, b):
        return np.ascontiguousarray(r)
    return np.ascontiguousarray(arr)


def _to_image(arr: np.ndarray) -> Image.Image:
    """Inverse of :func:`_to_array`: L -> RGB copies the grey value to all channels, exactly."""
    img = Image.fromarray(arr)
    return img.convert("RGB") if arr.ndim == 2 else img


def _write_atomic(file: Path, arr: np.ndarray, digest: bytes, size: int, mtime_ns: int) -> None:
    """Write ``.npy`` + trailer to a temporary name of its own beside ``file``, then rename it in."""
    trailer = _TRAILER.pack(_MAGIC, digest, size, mtime_ns, zlib.crc32(arr))

    def write(f: Any) -> None:
        np.save(f, arr, allow_pickle=False)
        f.write(trailer)

    # unique: DataLoader workers and ranks may write the same entry at once; no fsync: a lost entry
    # is only decoded again
    atomic_write(file, write, fsync=False, unique=True)


def _read(file: Path, digest: bytes, size: int, mtime_ns: int, verify: bool) -> np.ndarray | None:
    """The cached array if ``file`` is a complete, intact entry for this source state, else None."""
    try:
        with open(file, "rb", buffering=0) as f:
            buf = f.read()  # one system call: cache files are a few hundred KiB
        header = _parse_header(buf)
    except Exception:  # missing, unreadable or garbled in any way: a miss, never a crash
        return None
    if header is None:
        return None
    shape, offset = header
    count = math.prod(shape)
    if offset + count + _TRAILER.size != len(buf):  # truncated, or bytes appended
        return None
    magic, key, src_size, src_mtime, crc = _TRAILER.unpack_from(buf, offset + count)
    if magic != _MAGIC or key != digest or src_size != size or src_mtime != mtime_ns:
        return None
    if verify and zlib.crc32(memoryview(buf)[offset:offset + count]) != crc:
        return None
    return np.frombuffer(buf, dtype=np.uint8, count=count, offset=offset).reshape(shape)


def _parse_header(buf: bytes) -> tuple[tuple[int, ...], int] | None:
    """Shape and data offset of a ``uint8 [H, W]`` or ``[H, W, 3]`` C-order ``.npy``, else None.

    The exact header ``np.save`` writes is matched with a regular expression (numpy's own parser
    costs about a third of a hit); any other header goes through ``numpy.lib.format``.
    """
    if buf[:8] == b"\x93NUMPY\x01\x00":
        end = 10 + int.from_bytes(buf[8:10], "little")
        m = _NPY_HEADER.fullmatch(buf, 10, end)
        if m:
            return tuple(int(v) for v in m.groups() if v is not None), end
    f = io.BytesIO(buf)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return None
    if dtype != np.uint8 or fortran or len(shape) not in (2, 3) or min(shape) < 0 or shape[2:] not in ((), (3,)):
        return None
    return tuple(shape), f.tell()
