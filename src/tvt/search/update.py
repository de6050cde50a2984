"""Creating and incrementally updating a photo index (:mod:`tvt.search.index` is its format).

An update holds the index lock, plans (:func:`plan_update`: the previous index, a scan of the
photo folder, the partial shards of an interrupted run), embeds only the new or changed photos
into ``partial/`` and commits (:func:`commit_update`: :func:`~tvt.search.index.write_index`,
index.json last). :mod:`tvt.search.sharded` runs the same plan and commit over torchrun ranks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvt.errors import CheckpointError, DataError, InputError
from tvt.search.embed import embed_files
from tvt.search.identity import ModelIdentity
from tvt.search.index import INDEX_FILE, PhotoIndex, index_transform, is_inside, log, scan_photos, write_index
from tvt.search.lock import index_lock
from tvt.search.partial import PARTIAL_DIR, ShardWriter, load_partial


@dataclass
class IndexReport:
    """What one :func:`update_index` call did."""

    index_dir: Path
    total: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embedded: int = 0  # photos embedded by this run (all ranks)
    embed_seconds: float = 0.0  # wall time of the embedding, all ranks together

    def summary(self) -> str:
        speed = (f"; embedded {self.embedded} in {self.embed_seconds:.1f} s "
                 f"({self.embedded / self.embed_seconds:.1f} photos/s)" if self.embedded and self.embed_seconds else "")
        return (f"index {self.index_dir}: {self.total} photos ({self.added} added, {self.changed} changed, "
                f"{self.removed} removed, {self.unchanged} unchanged, {self.resumed} resumed), "
                f"{len(self.skipped)} skipped{speed}")


def _previous(index_dir: Path, model: ModelIdentity, photo_root: Path, rebuild: bool) -> PhotoIndex | None:
    """The committed index to update, after checking it belongs to this model and folder."""
    if rebuild or not (index_dir / INDEX_FILE).is_file():
        return None
    try:
        old = PhotoIndex.load(index_dir)
    except DataError as exc:
        log(f"tvt index: {exc}; the photos are embedded again")
        return None
    if old.model.key() != model.key():
        raise CheckpointError(
            f"index {index_dir} was built with {old.model.checkpoint} (sha256 {str(old.model.sha256)[:12]}, "
            f"{old.model.kind}, dim {old.model.dim}, return_idx {old.model.return_idx}), not with "
            f"{model.checkpoint} (sha256 {str(model.sha256)[:12]}, return_idx {model.return_idx}); "
            "pass --rebuild to re-embed every photo, or choose another --out"
        )
    if os.path.realpath(old.photo_root) != os.path.realpath(photo_root):
        raise InputError(f"index {index_dir} indexes {old.photo_root}, not {photo_root}; "
                         "pass --rebuild to replace it, or choose another --out")
    return old


def update_index(
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
) -> IndexReport:
    """Create or update the index of ``photo_root`` in ``index_dir``; return what changed.

    ``encoder(x [B, 3, S, S], "img") -> [B, D]`` embeds photos preprocessed by ``transform``
    (default: the evaluation transform at ``model.img_size``). Only new or changed files are
    embedded; finished batches go to ``partial/`` every ``flush_every`` photos (and on Ctrl-C),
    so an interrupted run continues where it stopped. Unreadable files are skipped and listed.
    Under torchrun, :func:`tvt.search.sharded.update_index_sharded` splits the embedding over ranks.
    """
    root, out = index_dirs(photo_root, index_dir)
    with index_lock(out):
        return _update_locked(root, out, encoder, model, transform, batch_size, num_workers, rebuild,
                              flush_every, progress, extra_meta)


def index_dirs(photo_root: str | Path, index_dir: str | Path) -> tuple[Path, Path]:
    """(photo folder, index folder) as absolute paths, checked; the index folder is created."""
    root = Path(photo_root).expanduser().absolute()
    if not root.is_dir():
        raise InputError(f"photo folder {root} does not exist or is not a folder")
    out = Path(index_dir).expanduser().absolute()
    if os.path.realpath(out) == os.path.realpath(root):
        raise InputError(f"--out {out} is the photo folder itself; give the index its own folder")
    make_index_dir(out)
    return root, out


def make_index_dir(out: Path) -> None:
    """Create the index folder; InputError when the path is a file or cannot be created."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder; give the index a folder of its own")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the index folder {out}: {exc.strerror or exc}") from exc


def _update_locked(root: Path, out: Path, encoder: Callable[..., Any], model: ModelIdentity,
                   transform: Callable[[Any], Any] | None, batch_size: int, num_workers: int, rebuild: bool,
                   flush_every: int, progress: bool, extra_meta: dict[str, Any] | None) -> IndexReport:
    plan = plan_update(root, out, model, rebuild)
    if plan.nothing_to_write:
        return plan.report  # also works on a read-only or full disk
    writer = ShardWriter(out, model, root, fresh=rebuild)
    start = time.perf_counter()
    done = embed_files(root, plan.todo, plan.files, encoder, transform or index_transform(model),
                       batch_size=batch_size, num_workers=num_workers, writer=writer,
                       flush_every=flush_every, progress=progress)
    plan.report.embedded, plan.report.embed_seconds = len(plan.todo), time.perf_counter() - start
    report = commit_update(plan, model, done, extra_meta)
    writer.remove()
    return report


@dataclass
class UpdatePlan:
    """What an update has to do: ``todo`` photos to embed; ``rows`` already known (unchanged or
    resumed from ``partial/``), ``files`` the {relpath: (size, mtime_ns)} found on disk."""

    root: Path
    out: Path
    old: PhotoIndex | None
    files: dict[str, tuple[int, int]]
    rows: dict[str, tuple[int, int, np.ndarray]]
    unchanged: set[str]
    todo: list[str]
    report: IndexReport
    nothing_to_write: bool = False


def plan_update(root: Path, out: Path, model: ModelIdentity, rebuild: bool) -> UpdatePlan:
    """Read the previous index and the partial shards, list the photos to embed (folders from
    :func:`index_dirs`, index lock held)."""
    old = _previous(out, model, root, rebuild)
    # an index kept inside the photo folder must not index itself
    files, skipped = scan_photos(root, exclude=[out] if is_inside(out, root) else [])
    report = IndexReport(out, skipped=list(skipped))
    stale = old is not None and old.meta.get("preprocess") != _preprocess_meta(model)
    if stale:
        log(f"tvt index: {out} was built with other preprocessing ({old.meta.get('preprocess')}); "
            "every photo is embedded again")
    rows, unchanged = _unchanged_rows(None if stale else old, files)
    part_rows, part_skips = ({}, []) if rebuild else load_partial(out, model, root)
    for rel, (s, m, e) in part_rows.items():
        if rel not in rows and files.get(rel) == (s, m):
            rows[rel] = (s, m, e)
            report.resumed += 1
    done_skips = {rel: reason for rel, reason, s, m in part_skips if files.get(rel) == (s, m)}
    report.skipped += sorted(done_skips.items())
    todo = [rel for rel in sorted(files) if rel not in rows and rel not in done_skips]
    plan = UpdatePlan(root, out, old, files, rows, unchanged, todo, report)
    if old is not None and not stale and _unchanged(old, files, todo, report):
        report.total = report.unchanged = len(old)
        plan.nothing_to_write = True
    return plan


def commit_update(plan: UpdatePlan, model: ModelIdentity, done: Iterable[tuple[str, np.ndarray | None, str]],
                  extra_meta: dict[str, Any] | None = None) -> IndexReport:
    """Add the embedded photos ``done`` [(relpath, embedding [D] or None, skip reason)] to the plan's
    rows, count what changed and write the index (index.json last)."""
    report, rows = plan.report, plan.rows
    for rel, emb, reason in done:
        if emb is None:
            report.skipped.append((rel, reason))
        else:
            rows[rel] = (*plan.files[rel], emb)
    old_paths = set(plan.old.paths) if plan.old is not None else set()
    report.total, report.unchanged = len(rows), len(plan.unchanged)
    report.removed = len(old_paths - set(plan.files))
    report.changed = sum(1 for rel in rows if rel in old_paths and rel not in plan.unchanged)
    report.added = report.total - report.unchanged - report.changed
    created = plan.old.meta.get("created") if plan.old is not None else None
    last = {k: getattr(report, k) for k in ("added", "changed", "removed", "unchanged", "resumed")}
    write_index(plan.out, plan.root, model, rows, report.skipped, created,
                {"preprocess": _preprocess_meta(model), "last_update": last, **(extra_meta or {})})
    return report


def _unchanged(old: PhotoIndex, files: dict[str, tuple[int, int]], todo: list[str], report: IndexReport) -> bool:
    """True when an update would rewrite ``old`` exactly: same files, nothing to embed, same skips."""
    same_skips = sorted((d["path"], d["reason"]) for d in old.skipped) == sorted(report.skipped)
    return (not todo and report.resumed == 0 and set(old.paths) == set(files) and same_skips
            and not (old.index_dir / PARTIAL_DIR).exists())


def _unchanged_rows(old: PhotoIndex | None, files: dict[str, tuple[int, int]],
                    ) -> tuple[dict[str, tuple[int, int, np.ndarray]], set[str]]:
    """Rows of ``old`` whose file still has the same (size, mtime_ns), and their paths."""
    rows: dict[str, tuple[int, int, np.ndarray]] = {}
    if old is not None:
        for i, rel in enumerate(old.paths):
            if files.get(rel) == (int(old.sizes[i]), int(old.mtimes[i])):
                rows[rel] = (*files[rel], old.embeddings[i])
    return rows, set(rows)


def _preprocess_meta(model: ModelIdentity) -> dict[str, Any]:
    norm = {"mean": model.extra["mean"], "std": model.extra["std"]} if "mean" in model.extra else "imagenet"
    return {"resize": [model.img_size, model.img_size], "interpolation": "bilinear", "normalize": norm,
            "alpha_background": "white", "exif_transpose": True, "photo_modality": "img", "query_modality": "skt"}
