"""Feature extraction: stream a dataset through an encoder into a float32 array.

With ``cache`` set, rows go into a ``.npy`` memory map on disk with a small JSON sidecar that
records how many rows are done and a fingerprint of the inputs (model file, feature choice, image
list). An interrupted extraction resumes at the last flushed batch; a finished one is reused; a
changed model or image list starts over. Memory stays bounded: one batch plus the memory map.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from tvt.files import write_json

FLUSH_SECONDS = 30.0


def fingerprint(*parts: object, files: Sequence[str | Path] = ()) -> str:
    """A short hash of ``parts`` and of a file list (names only, in order)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
    for f in files:
        h.update(str(f).encode() + b"\0")
    return h.hexdigest()[:16]


def file_identity(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns): changes when a checkpoint file is replaced."""
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _open_cache(cache: Path, n: int, dim: int, key: str) -> tuple[np.ndarray, int]:
    """The memory map and the number of rows already done (0 when starting over)."""
    side = cache.with_suffix(".json")
    if side.is_file() and cache.is_file():
        try:
            meta = json.loads(side.read_text())
            if meta.get("fingerprint") == key and meta.get("n") == n and meta.get("dim") == dim:
                return np.load(cache, mmap_mode="r+"), int(meta["rows_done"])
        except (ValueError, OSError):
            pass
    cache.parent.mkdir(parents=True, exist_ok=True)
    arr = np.lib.format.open_memmap(cache, mode="w+", dtype=np.float32, shape=(n, dim))
    write_json(side, {"fingerprint": key, "n": n, "dim": dim, "rows_done": 0}, indent=None)
    return arr, 0


@torch.inference_mode()
def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, *, batch_size: int = 64,
                     device: torch.device | str = "cpu", num_workers: int = 0, desc: str = "features",
                     progress: bool = True, cache: str | Path | None = None, key: str = "",
                     _sharded: bool = False) -> np.ndarray:
    """Run ``encode`` over ``dataset`` in order; returns raw features [N, D] as float32.

    ``dataset[i]`` must return ``(image_tensor [3,H,W], anything)``. With ``cache`` (a ``.npy``
    path) and ``key`` (a fingerprint of what determines the features), work is resumable. Under
    torchrun every rank encodes a contiguous shard and every rank gets all rows in dataset order.
    """
    from tvt.distributed import gather_rows, rank_and_world, shard_dataset

    rank, world = rank_and_world()
    if world > 1 and not _sharded:
        shard_cache = None if cache is None else Path(cache).with_suffix(f".rank{rank}of{world}.npy")
        local = extract_features(encode, shard_dataset(dataset), batch_size=batch_size, device=device,
                                 num_workers=num_workers, desc=desc, progress=progress and rank == 0,
                                 cache=shard_cache, key=key, _sharded=True)
        return gather_rows(local, len(dataset))
    n = len(dataset)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    first = encode(dataset[0][0].unsqueeze(0).to(device)).float().cpu().numpy()
    dim = first.shape[1]
    if cache is not None:
        out, start = _open_cache(Path(cache), n, dim, key)
        if start >= n:
            return np.asarray(out)
    else:
        out, start = np.empty((n, dim), dtype=np.float32), 0
    loader = DataLoader(Subset(dataset, range(start, n)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=torch.device(device).type == "cuda")
    row, last_flush = start, time.monotonic()
    bar = tqdm(total=n, initial=start, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True, unit="img")
    for x, _ in loader:
        f = encode(x.to(device, non_blocking=True)).float().cpu().numpy()
        out[row: row + len(f)] = f
        row += len(f)
        bar.update(len(f))
        if cache is not None and (time.monotonic() - last_flush > FLUSH_SECONDS or row == n):
            out.flush()
            meta = {"fingerprint": key, "n": n, "dim": dim, "rows_done": row}
            write_json(Path(cache).with_suffix(".json"), meta, indent=None)
            last_flush = time.monotonic()
    bar.close()
    return np.asarray(out)
