"""Atomic checkpoint files and resume discovery.

Checkpoints are plain dicts of tensors, numbers, strings and lists, loadable with
``torch.load(weights_only=True)``. A save writes ``<name>.tmp`` in the same folder, flushes and
fsyncs it, then renames it over the target, so a crash or a full disk never leaves a half-written
file in place of the last good one. ``load_latest`` falls back to the newest *numbered* checkpoint
when ``checkpoint.pth`` is unreadable, and says so.
"""

from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvt.errors import CheckpointError

LATEST = "checkpoint.pth"
_NUMBERED = re.compile(r"checkpoint-(\d{4,})\.pth$")


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_file(path: str | Path) -> dict[str, Any]:
    """Load one of our checkpoints with ``weights_only=True``; CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a torch file
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict")
    return obj


def numbered(run_dir: str | Path) -> list[Path]:
    """``checkpoint-XXXX.pth`` files of a run directory, newest (highest number) first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint-*.pth") if (m := _NUMBERED.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest(run_dir: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The most recent readable checkpoint of a run, or None if the run has none.

    ``checkpoint.pth`` first; if it is corrupt, the numbered ones from newest to oldest, with a
    warning on stderr for every unreadable file skipped.
    """
    run_dir = Path(run_dir)
    candidates = [run_dir / LATEST] + numbered(run_dir)
    candidates = [p for p in candidates if p.is_file()]
    if not candidates:
        return None
    for path in candidates:
        try:
            return load_file(path), path
        except CheckpointError as exc:
            print(f"tvt: warning: {exc}; trying the previous checkpoint", file=sys.stderr)
    raise CheckpointError(f"every checkpoint in {run_dir} is unreadable: {', '.join(p.name for p in candidates)}")


def rng_state() -> dict[str, Any]:
    """RNG states of torch, numpy and Python ``random`` in a weights_only-loadable form."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gauss": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
