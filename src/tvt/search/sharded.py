"""Indexing over several processes: ``torchrun --nproc_per_node N -m tvt.cli index ...``.

Rank 0 plans the update (scan, previous index, partial shards of an interrupted run) and sends
the list of photos to embed to every rank. Each rank embeds a contiguous share of whole batches
into its own ``partial/shard-NNNNNN-rR.npz`` files (flushed every ``flush_every`` photos, on
Ctrl-C and on SIGTERM), so an interrupted run, on any number of processes, resumes from them.
After a barrier rank 0 reads every shard and commits the index exactly as a single process does.
Shares are cut at batch boundaries, so every batch the encoder sees is a batch of the
single-process run: the index is the same, byte for byte, when the encoder is deterministic.

Multi-node runs (torchrun's rendezvous) need ``--out`` on a filesystem that every node sees.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tvt.errors import DataError
from tvt.search.embed import embed_files
from tvt.search.identity import ModelIdentity
from tvt.search.index import index_transform
from tvt.search.lock import index_lock
from tvt.search.partial import ShardWriter, load_partial
from tvt.search.update import IndexReport, UpdatePlan, commit_update, index_dirs, plan_update, update_index


def batch_share(items: Sequence[str], batch_size: int, rank: int, world: int) -> list[str]:
    """Rank ``rank``'s contiguous share of ``items``, cut at multiples of ``batch_size``.

    Batches are dealt out like rows of :func:`tvt.distributed.shard_bounds`: contiguous,
    counts differ by at most one, every item exactly once.
    """
    n_batches = -(-len(items) // batch_size)
    first, stop = rank * n_batches // world, (rank + 1) * n_batches // world
    return list(items[first * batch_size: stop * batch_size])


def update_index_sharded(
    photo_root: str | Path,
    index_dir: str | Path,
    encoder: Callable[..., Any],
    model: ModelIdentity,
    *,
    transform: Callable[[Any], Any] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    rebuild: bool = False,
    flush_every: int = 256,
    progress: bool = True,
    extra_meta: dict[str, Any] | None = None,
    autocast: torch.dtype | None = None,
) -> IndexReport | None:
    """:func:`tvt.search.update.update_index` split over the ranks of the current process group.

    Returns the report on rank 0 and None on the other ranks. One process: the plain update.
    """
    from tvt.distributed import rank_and_world

    rank, world = rank_and_world()
    if world == 1 and autocast is None:
        return update_index(photo_root, index_dir, encoder, model, transform=transform, batch_size=batch_size,
                            num_workers=num_workers, rebuild=rebuild, flush_every=flush_every, progress=progress,
                            extra_meta=extra_meta)
    if rank != 0:
        return _embed_share(None, encoder, model, transform, batch_size, num_workers, flush_every, progress, autocast,
                            extra_meta)
    root, out = index_dirs(photo_root, index_dir)
    with index_lock(out):  # held by rank 0 from the plan to the commit
        plan = plan_update(root, out, model, rebuild)
        ShardWriter(out, model, root, fresh=rebuild)  # clears stale shards before any rank writes
        return _embed_share(plan, encoder, model, transform, batch_size, num_workers, flush_every, progress,
                            autocast, extra_meta)


def _embed_share(plan: UpdatePlan | None, encoder: Callable[..., Any], model: ModelIdentity,
                 transform: Callable[[Any], Any] | None, batch_size: int, num_workers: int, flush_every: int,
                 progress: bool, autocast: torch.dtype | None, extra_meta: dict[str, Any] | None) -> IndexReport | None:
    """Every rank: embed its share of rank 0's plan; rank 0 then commits (``plan`` is None elsewhere)."""
    from tvt.distributed import barrier, broadcast_object, rank_and_world

    rank, world = rank_and_world()
    payload = None if plan is None else (str(plan.root), str(plan.out), plan.todo,
                                         {rel: plan.files[rel] for rel in plan.todo})
    root_s, out_s, todo, stats = broadcast_object(payload)  # type: ignore[misc]
    root, out = Path(root_s), Path(out_s)
    writer = ShardWriter(out, model, root, fresh=False, rank=rank)
    mine = batch_share(todo, batch_size, rank, world)
    start = time.perf_counter()
    with _flush_on_sigterm():
        embed_files(root, mine, stats, encoder, transform or index_transform(model), batch_size=batch_size,
                    num_workers=num_workers, writer=writer, flush_every=flush_every,
                    progress=progress and rank == 0, autocast=autocast)
    barrier()  # every rank's shards are on disk
    report = None
    if plan is not None:
        report = plan.report
        if not plan.nothing_to_write:
            report.embedded, report.embed_seconds = len(todo), time.perf_counter() - start
            report = commit_update(plan, model, _merged(out, model, root, todo, stats), extra_meta)
        writer.remove()
    barrier()  # the other ranks return once the index is committed
    return report


def _merged(out: Path, model: ModelIdentity, root: Path, todo: list[str], stats: dict[str, tuple[int, int]],
            ) -> list[tuple[str, np.ndarray | None, str]]:
    """The results of this run for ``todo``, read back from every rank's partial shards."""
    rows, skips = load_partial(out, model, root)
    skipped = {rel: reason for rel, reason, s, m in skips if stats.get(rel) == (s, m)}
    done: list[tuple[str, np.ndarray | None, str]] = []
    missing = []
    for rel in todo:
        if rel in rows and rows[rel][:2] == stats[rel]:
            done.append((rel, rows[rel][2], ""))
        elif rel in skipped:
            done.append((rel, None, skipped[rel]))
        else:
            missing.append(rel)
    if missing:
        raise DataError(f"{len(missing)} photos (e.g. {missing[0]}) have no embedding in {out / 'partial'} after "
                        "every rank finished: was --out on a filesystem that all ranks see? Re-run to resume")
    return done


@contextlib.contextmanager
def _flush_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (torchrun stopping the other ranks after one failed, a scheduler's
    pre-emption) into SystemExit, so the embedding loop flushes its shard before exiting."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
