"""Images -> L2-normalised float32 embeddings, in batches, skipping unreadable files.

Finished batches go to a writer (:class:`tvt.search.partial.ShardWriter` during an index update)
so that an interrupted run keeps its work.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from tvt.data.images import load_rgb
from tvt.errors import DataError
from tvt.vectors import l2_normalize

Encoder = Callable[[torch.Tensor, str], torch.Tensor]


def embed_batch(encoder: Encoder, x: torch.Tensor, modality: str, autocast: torch.dtype | None = None) -> np.ndarray:
    """``encoder(x [B, 3, S, S], modality)`` -> normalised embeddings [B, D] (float32, host).

    ``autocast`` (e.g. ``torch.bfloat16`` on a GPU) runs the encoder under ``torch.autocast`` on
    the encoder's device; the embeddings are normalised in float32 either way.
    """
    device = torch.device(getattr(encoder, "device", "cpu"))
    amp = (torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext())
    with torch.inference_mode(), amp:
        return l2_normalize(encoder(x, modality).float()).cpu().numpy()


class _Files(Dataset):
    """``(tensor or None, position, reason)`` for each relative path; never raises on bad files."""

    def __init__(self, root: Path, rels: Sequence[str], transform: Callable[[Any], torch.Tensor],
                 load: Callable[[Path], Any]) -> None:
        self.root, self.rels, self.transform, self.load = root, list(rels), transform, load

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str]:
        try:
            return self.transform(self.load(self.root / self.rels[i])), i, ""
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
    modality: str = "img",
    load: Callable[[Path], Any] | None = None,
) -> list[tuple[str, np.ndarray | None, str]]:
    """Embed the images ``root/rels``: ``[(rel, embedding [D] or None, reason)]`` in order.

    The one embedding loop of the package (``tvt index``, ``tvt embed``). ``load(path)`` reads an
    image (default: RGB on white, EXIF orientation applied, as photos are shown); an unreadable
    file gives ``None`` and the reason. Each result is also handed to ``writer.add`` (``stats``
    gives each file's (size, mtime_ns)) and ``writer.flush()`` runs every ``flush_every`` images
    and when anything (Ctrl-C included) interrupts the loop, so the work done so far survives.
    ``num_workers`` processes decode images while the encoder runs; ``modality`` and ``autocast``
    go to :func:`embed_batch`.
    """
    if not rels:
        return []
    on_gpu = torch.device(getattr(encoder, "device", "cpu")).type == "cuda"
    # phone photos store "rotate me" in EXIF: index them upright, as they are shown (a partial pickles)
    load = load or functools.partial(load_rgb, exif_transpose=True)
    loader = DataLoader(_Files(root, rels, transform, load), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate, pin_memory=on_gpu)
    results: list[tuple[str, np.ndarray | None, str]] = []
    since_flush = 0
    try:
        with tqdm(total=len(rels), desc="embedding photos" if modality == "img" else "embedding", unit="img",
                  file=sys.stderr, disable=not progress, dynamic_ncols=True) as bar:
            for x, ok, bad in loader:
                emb = embed_batch(encoder, x, modality, autocast) if x is not None else np.zeros((0, 0), np.float32)
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
