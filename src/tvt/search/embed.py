"""Images -> L2-normalised float32 embeddings, in batches, skipping unreadable files.

Progress of an index update is kept in ``INDEX_DIR/partial/shard-NNNNNN.npz`` files (one per
flush, written atomically) so that an interrupted update resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tvt.errors import DataError
from tvt.search.index import PARTIAL_DIR, ModelIdentity, sha256_file, write_atomic, write_json

Encoder = Callable[[torch.Tensor, str], torch.Tensor]


# Files of a model folder that identify the model (README.md, the editable card, does not).
MODEL_FOLDER_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")


def model_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint file, or of a model folder's config and weights files."""
    import hashlib

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for name in MODEL_FOLDER_FILES:
        if (p / name).is_file():
            h.update(f"{name}:{sha256_file(p / name)}\n".encode())
    return h.hexdigest()


def model_identity(encoder: Any, source: str | Path) -> ModelIdentity:
    """The :class:`ModelIdentity` of an encoder loaded from ``source`` (file or folder).

    ``extra`` records the architecture, the input normalisation, the pretrained backbone's name
    when the encoder is one used without training, and what is known of the training data.
    """
    from tvt.models.weights import arch_hints

    extra: dict[str, Any] = {"arch": arch_hints(encoder.model), "mean": list(encoder.mean), "std": list(encoder.std)}
    info = dict(encoder.info)
    if info.get("pretrained_backbone"):
        extra["pretrained_backbone"] = info["pretrained_backbone"]
    if info.get("dataset") or info.get("train_classes"):
        extra["training"] = {"dataset": info.get("dataset"), "split": info.get("split"),
                             "num_train_classes": len(info.get("train_classes") or [])}
    path = Path(source)
    return ModelIdentity(kind=encoder.kind, dim=encoder.dim, img_size=encoder.img_size,
                         return_idx=encoder.return_idx, checkpoint=str(path), sha256=model_sha256(path), extra=extra)


def normalise(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Rows of ``x`` [N, D] scaled to unit L2 norm (a zero row stays zero), as float32 numpy."""
    t = torch.as_tensor(x).detach().float().cpu()
    return torch.nn.functional.normalize(t, dim=1, eps=1e-12).numpy()


def embed_batch(encoder: Encoder, x: torch.Tensor, modality: str, autocast: torch.dtype | None = None) -> np.ndarray:
    """``encoder(x [B, 3, S, S], modality)`` -> normalised embeddings [B, D] (float32, host).

    ``autocast`` (e.g. ``torch.bfloat16`` on a GPU) runs the encoder under ``torch.autocast`` on
    the encoder's device; the embeddings are normalised in float32 either way.
    """
    device = torch.device(getattr(encoder, "device", "cpu"))
    amp = (torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext())
    with torch.inference_mode(), amp:
        return normalise(encoder(x, modality))


class _Files(Dataset):
    """``(tensor or None, position, reason)`` for each relative path; never raises on bad files."""

    def __init__(self, root: Path, rels: Sequence[str], transform: Callable[[Any], torch.Tensor]) -> None:
        self.root, self.rels, self.transform = root, list(rels), transform

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        from tvt.data.images import load_rgb

        try:
            # phone photos store "rotate me" in EXIF: index them upright, as they are shown
            return self.transform(load_rgb(self.root / self.rels[i], exif_transpose=True)), i, ""
        except DataError as exc:
            return None, i, str(exc).replace(str(self.root / self.rels[i]), self.rels[i])
        except (OSError, ValueError, RuntimeError) as exc:  # a transform that chokes on odd content
            return None, i, f"{type(exc).__name__}: {exc}"


def _collate(batch: list[tuple[torch.Tensor | None, int, str]],
             ) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    good = [(x, i) for x, i, _ in batch if x is not None]
    bad = [(i, reason) for x, i, reason in batch if x is None]
    x = torch.stack([g[0] for g in good]) if good else None
    return x, [g[1] for g in good], bad


def embed_files(
    root: Path,
    rels: Sequence[str],
    stats: dict[str, tuple[int, int]],
    encoder: Encoder,
    transform: Callable[[Any], torch.Tensor],
    *,
    batch_size: int = 32,
    num_workers: int = 0,
    writer: Any = None,
    flush_every: int = 256,
    progress: bool = True,
    autocast: torch.dtype | None = None,
) -> list[tuple[str, np.ndarray | None, str]]:
    """Embed the photos ``root/rels`` (modality ``img``): ``[(rel, embedding [D] or None, reason)]``.

    Each result is also handed to ``writer.add`` and ``writer.flush()`` runs every
    ``flush_every`` photos and when anything (Ctrl-C included) interrupts the loop, so the work
    done so far survives. ``num_workers`` processes decode images while the encoder runs;
    ``autocast`` goes to :func:`embed_batch`.
    """
    if not rels:
        return []
    on_gpu = torch.device(getattr(encoder, "device", "cpu")).type == "cuda"
    loader = DataLoader(_Files(root, rels, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, pin_memory=on_gpu)
    results: list[tuple[str, np.ndarray | None, str]] = []
    since_flush = 0
    try:
        with tqdm(total=len(rels), desc="embedding photos", unit="img", file=sys.stderr,
                  disable=not progress, dynamic_ncols=True) as bar:
            for x, ok, bad in loader:
                emb = embed_batch(encoder, x, "img", autocast) if x is not None else np.zeros((0, 0), np.float32)
                for row, i in enumerate(ok):
                    results.append((rels[i], emb[row], ""))
                results += [(rels[i], None, reason) for i, reason in bad]
                if writer is not None:
                    for rel, e, reason in results[len(results) - len(ok) - len(bad):]:
                        writer.add(rel, stats[rel], e, reason)
                since_flush += len(ok) + len(bad)
                if writer is not None and since_flush >= flush_every:
                    writer.flush()
                    since_flush = 0
                bar.update(len(ok) + len(bad))
    except BaseException:
        if writer is not None:
            writer.flush()
        raise
    if writer is not None:
        writer.flush()
    return results


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
            write_json(self.dir / "meta.json", meta)
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
        write_atomic(self.dir / f"shard-{self.next:06d}{self.suffix}.npz", lambda fh: np.savez(fh, **arrays))
        self.next += 1
        self.rows, self.skips = [], []

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
