"""Atomic checkpoint files, rotation and resume discovery.

Checkpoints are plain dicts of tensors, numbers, strings and lists, loadable with
``torch.load(weights_only=True)``. A save writes ``<name>.tmp`` in the same folder, flushes and
fsyncs it, then renames it over the target, so a crash, ``kill -9`` or a full disk never leaves a
half-written file in place of the last good one. :func:`save_latest` also keeps the file it
replaces as ``checkpoint-prev.pth``, so one older good checkpoint survives even with
``save_every: 0``. ``load_latest`` falls back to that file and to the numbered ones when
``checkpoint.pth`` is unreadable, and says so.

A checkpoint records its position as ``epoch`` (epochs completed) and ``step`` (optimizer steps
completed inside epoch ``epoch``; 0 or absent at an epoch boundary). Every file written here also
holds ``checksum``, a CRC-32 of its content (tensor bytes included), verified on load: one changed
byte makes the file count as damaged, and resume falls back to the previous one.
"""

from __future__ import annotations

import errno
import os
import random
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torch import nn

from tvt.errors import CheckpointError, ConfigError
from tvt.files import atomic_write
from tvt.models.convert import read_checkpoint

FORMAT, VERSION = "tvt", 1  # the "format" / "version" entries of every checkpoint written here
LATEST = "checkpoint.pth"
PREVIOUS = "checkpoint-prev.pth"
_NUMBERED = re.compile(r"checkpoint-(\d{4,})\.pth$")


class DiskFullError(CheckpointError, OSError):
    """No space (or quota) left while writing a checkpoint; the previous file is untouched."""


CHECKSUM = "checksum"


def _crc(obj: Any, crc: int) -> int:
    """CRC-32 of a checkpoint value: nested dicts (keys sorted), lists, tensors (dtype, shape, bytes)."""
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            crc = _crc(obj[key], zlib.crc32(repr(key).encode(), crc))
        return crc
    if isinstance(obj, (list, tuple)):
        for item in obj:
            crc = _crc(item, crc)
        return zlib.crc32(b"]", crc)
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        crc = zlib.crc32(f"{t.dtype}{tuple(obj.shape)}".encode(), crc)
        return zlib.crc32(t.view(torch.uint8).numpy().data if t.numel() else b"", crc)
    return zlib.crc32(repr(obj).encode(), crc)


def checksum(obj: dict[str, Any]) -> str:
    """The CRC-32 (8 hex digits) of everything in ``obj`` but its own ``checksum`` entry."""
    return f"{_crc({k: v for k, v in obj.items() if k != CHECKSUM}, 0):08x}"


def header(stage: str, model: nn.Module, cfg: Any, train_classes: Sequence[str],
           test_classes: Sequence[str]) -> dict[str, Any]:
    """The entries every checkpoint of ours starts with (``stage`` "image", "sketch" or "tvt").

    ``arch`` is :func:`tvt.models.weights.arch_hints` of ``model`` (the ViT sizes, plus token count
    and position resampling for a fusion ViT): what a reader cannot take from the tensors.
    """
    from tvt import config as config_mod
    from tvt.models.weights import arch_hints

    return {"format": FORMAT, "version": VERSION, "stage": stage, "arch": arch_hints(model),
            "config": config_mod.as_plain(cfg), "train_classes": list(train_classes),
            "test_classes": list(test_classes), "dataset": cfg.data.dataset, "split": cfg.data.split}


def _save(obj: dict[str, Any], path: Path, before_replace: Callable[[], object] | None = None) -> Path:
    """Write ``obj`` plus its checksum atomically (fsynced); a full disk raises :class:`DiskFullError`."""
    obj = {**obj, CHECKSUM: checksum(obj)}
    try:
        return atomic_write(path, lambda fh: torch.save(obj, fh), before_replace=before_replace)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            err = DiskFullError(f"could not write checkpoint {path}: {exc.strerror or exc}; the previous "
                                "checkpoint (if any) is intact. Free disk space and run the same command again to "
                                "resume")
            err.errno = exc.errno
            raise err from exc
        raise


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file + fsync + rename).

    A full disk raises :class:`DiskFullError` (a CheckpointError and an OSError) naming the file;
    ``path`` keeps its old content.
    """
    return _save(obj, Path(path))


def save_latest(obj: dict[str, Any], run_dir: str | Path) -> Path:
    """Write ``run_dir/checkpoint.pth`` atomically, keeping the one it replaces as ``checkpoint-prev.pth``.

    Order: new file complete on disk, then old latest -> prev, then new -> latest. A crash
    between the two renames leaves ``checkpoint-prev.pth`` (and the complete temp file), which
    :func:`load_latest` picks up.
    """
    run_dir = Path(run_dir)
    path = run_dir / LATEST

    def keep_previous() -> None:
        if path.is_file():
            os.replace(path, run_dir / PREVIOUS)

    return _save(obj, path, keep_previous)


def load_file(path: str | Path) -> dict[str, Any]:
    """Load one of our checkpoints (:func:`tvt.models.convert.read_checkpoint`: ``weights_only=True``)
    and check its stored checksum; CheckpointError naming the file if unreadable or changed."""
    obj = read_checkpoint(path)
    if CHECKSUM in obj and obj[CHECKSUM] != checksum(obj):
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match the checksum stored with it")
    return obj


def numbered(run_dir: str | Path) -> list[Path]:
    """``checkpoint-XXXX.pth`` files of a run directory, newest (highest number) first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("checkpoint-*.pth") if (m := _NUMBERED.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def candidates(run_dir: str | Path) -> list[Path]:
    """Resume candidates: ``checkpoint.pth`` first, then ``checkpoint-prev.pth`` and the numbered
    files, newest first by modification time (ties: higher number first)."""
    run_dir = Path(run_dir)
    older = [p for p in [run_dir / PREVIOUS, *numbered(run_dir)] if p.is_file()]
    rank = {p: i for i, p in enumerate(older)}  # PREVIOUS, then by number: the tie-break order
    older.sort(key=lambda p: (-p.stat().st_mtime_ns, rank[p]))
    latest = run_dir / LATEST
    return ([latest] if latest.is_file() else []) + older


def load_latest(run_dir: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The most recent readable checkpoint of a run, or None if the run has none.

    ``checkpoint.pth`` first; if it is corrupt, the older candidates of :func:`candidates`, with a
    warning on stderr naming every unreadable file skipped.
    """
    run_dir = Path(run_dir)
    paths = candidates(run_dir)
    if not paths:
        return None
    for path in paths:
        try:
            return load_file(path), path
        except CheckpointError as exc:
            print(f"tvt: warning: {exc}; trying the previous checkpoint", file=sys.stderr)
    raise CheckpointError(f"every checkpoint in {run_dir} is unreadable: {', '.join(p.name for p in paths)}; "
                          "delete them (or use another output_dir) to start over")


@dataclass
class Position:
    """Where training continues: ``step`` optimizer steps into epoch ``epoch``."""

    epoch: int = 0
    step: int = 0
    totals: dict[str, float] = field(default_factory=dict)  # loss sums of the steps done in this epoch
    rng: dict[str, Any] | None = None  # restored after the epoch's loaders are created (mid-epoch only)


def position(state: dict[str, Any]) -> Position:
    """Where training continues from ``state``; at an epoch boundary its RNG state is restored now
    (before the next epoch's loaders exist), mid-epoch it is returned to be restored later."""
    epoch, step = int(state.get("epoch", 0)), int(state.get("step", 0))
    if step == 0:
        set_rng_state(state["rng"])
        return Position(epoch)
    return Position(epoch, step, {k: float(v) for k, v in state.get("epoch_totals", {}).items()}, state["rng"])


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


def save_run_files(state: dict[str, Any], run_dir: str | Path, epoch: int, step: int, save_every: int) -> Path:
    """``checkpoint.pth`` (previous kept as ``checkpoint-prev.pth``); at an epoch boundary also
    ``checkpoint-XXXX.pth`` every ``save_every`` epochs. Returns the latest file's path."""
    path = save_latest(state, run_dir)
    if step == 0 and save_every and epoch % save_every == 0:
        save_atomic(state, Path(run_dir) / f"checkpoint-{epoch:04d}.pth")
    return path


def open_run(run_dir: Path, resume: bool, load: Any) -> tuple[Position, Path | None]:
    """Resume position from the run directory's latest readable checkpoint (``load(state) ->
    Position``) and that file, or the start and None when there is none or ``resume`` is off.

    A checkpoint that does not fit this run (``load`` raises ConfigError) is named in the error.
    """
    if resume and (found := load_latest(run_dir)) is not None:
        try:
            return load(found[0]), found[1]
        except ConfigError as exc:
            raise ConfigError(f"{found[1]} does not fit this run: {exc}. Use another output_dir, delete the "
                              "checkpoint, or start over with --no-resume") from None
    return Position(), None


def load_matching(module: nn.Module, state_dict: dict[str, Any], what: str) -> None:
    """``module.load_state_dict(state_dict)``, with a ConfigError saying which tensors differ in size
    or are missing (e.g. a checkpoint of another model width) instead of PyTorch's traceback."""
    own = module.state_dict()
    sized = [f"{k} is {tuple(v.shape)} there, {tuple(own[k].shape)} here" for k, v in state_dict.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    missing, extra = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    problems = sized[:3] + ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
        [f"unexpected {', '.join(extra[:3])}"] if extra else [])
    if problems:
        raise ConfigError(f"the {what} has another architecture than this run's model ({len(sized)} tensors differ "
                          f"in size: {'; '.join(problems)})")
    module.load_state_dict(state_dict)
