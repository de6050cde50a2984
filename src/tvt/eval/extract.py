"""Feature extraction: stream a dataset through an encoder into a float32 array."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


@torch.inference_mode()
def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, *, batch_size: int = 64,
                     device: torch.device | str = "cpu", num_workers: int = 0, desc: str = "features",
                     progress: bool = True) -> np.ndarray:
    """Run ``encode`` over ``dataset`` in order; returns raw features [N, D] as float32.

    ``dataset[i]`` must return ``(image_tensor [3,H,W], anything)``. Memory holds one batch on the
    device plus the [N, D] result on the host.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda")
    out: np.ndarray | None = None
    row = 0
    for x, _ in tqdm(loader, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True):
        f = encode(x.to(device, non_blocking=True)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(dataset), f.shape[1]), dtype=np.float32)
        out[row: row + len(f)] = f
        row += len(f)
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out
