"""Progress of an index update: finished batches in ``INDEX_DIR/partial/shard-NNNNNN.npz`` files.

One shard per flush, written atomically, so that an interrupted update resumes where it stopped;
shards of another model or photo folder are never mixed in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from tvt.files import atomic_write, write_json
from tvt.search.identity import ModelIdentity

PARTIAL_DIR = "partial"


def _partial_meta(model: ModelIdentity, photo_root: Path) -> dict[str, Any]:
    return {"model": list(model.key()), "photo_root": str(photo_root)}


def load_partial(index_dir: Path, model: ModelIdentity, photo_root: Path,
                 ) -> tuple[dict[str, tuple[int, int, np.ndarray]], list[tuple[str, str, int, int]]]:
    """Rows and skips saved by an interrupted update of the same model and root (else nothing)."""
    pdir = index_dir / PARTIAL_DIR
    try:
        same = json.loads((pdir / "meta.json").read_text()) == _partial_meta(model, photo_root)
    except (OSError, ValueError):
        same = False
    rows: dict[str, tuple[int, int, np.ndarray]] = {}
    skips: list[tuple[str, str, int, int]] = []
    if not same:
        return rows, skips
    for shard in sorted(pdir.glob("shard-*.npz")):
        try:
            with np.load(shard, allow_pickle=False) as z:
                for p, s, m, e in zip(z["paths"].tolist(), z["size"].tolist(), z["mtime_ns"].tolist(), z["emb"]):
                    rows[p] = (int(s), int(m), e)
                skips += list(zip(z["skip_paths"].tolist(), z["skip_reasons"].tolist(),
                                  z["skip_size"].tolist(), z["skip_mtime_ns"].tolist()))
        except (OSError, ValueError, KeyError):
            continue  # a shard cut short by a crash: its photos are simply embedded again
    return rows, skips


class ShardWriter:
    """Appends finished batches to ``partial/shard-NNNNNN.npz`` files (atomic, one per flush).

    Under torchrun every rank has its own writer: rank ``r`` > 0 names its files
    ``shard-NNNNNN-r{r}.npz`` and leaves the folder and its ``meta.json`` to rank 0, which must
    create its writer first (:func:`tvt.search.sharded.update_index_sharded` orders this).
    """

    def __init__(self, index_dir: Path, model: ModelIdentity, photo_root: Path, fresh: bool, rank: int = 0) -> None:
        self.dir = index_dir / PARTIAL_DIR
        self.suffix = f"-r{rank}" if rank else ""
        if rank == 0:
            meta = _partial_meta(model, photo_root)
            try:
                same = json.loads((self.dir / "meta.json").read_text()) == meta
            except (OSError, ValueError):
                same = False
            if (fresh or not same) and self.dir.exists():
                shutil.rmtree(self.dir)  # shards of another model or folder must never be mixed in
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.dir / "meta.json", meta, indent=1)
        self.next = 1 + max((int(p.stem.split("-")[1]) for p in self.dir.glob("shard-*.npz")), default=-1)
        self.rows: list[tuple[str, int, int, np.ndarray]] = []
        self.skips: list[tuple[str, str, int, int]] = []

    def add(self, rel: str, stat: tuple[int, int], emb: np.ndarray | None, reason: str = "") -> None:
        if emb is None:
            self.skips.append((rel, reason, stat[0], stat[1]))
        else:
            self.rows.append((rel, stat[0], stat[1], emb))

    def flush(self) -> None:
        if not self.rows and not self.skips:
            return
        r, s = self.rows, self.skips
        arrays = {
            "paths": np.array([x[0] for x in r], dtype=str), "size": np.array([x[1] for x in r], np.int64),
            "mtime_ns": np.array([x[2] for x in r], np.int64),
            "emb": np.stack([x[3] for x in r]).astype(np.float32) if r else np.zeros((0, 0), np.float32),
            "skip_paths": np.array([x[0] for x in s], dtype=str),
            "skip_reasons": np.array([x[1] for x in s], dtype=str),
            "skip_size": np.array([x[2] for x in s], np.int64), "skip_mtime_ns": np.array([x[3] for x in s], np.int64),
        }
        atomic_write(self.dir / f"shard-{self.next:06d}{self.suffix}.npz", lambda fh: np.savez(fh, **arrays))
        self.next += 1
        self.rows, self.skips = [], []

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
