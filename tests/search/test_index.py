"""Index building: contents, incremental updates, skipping, resume after interruption, safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tvt.errors import CheckpointError, DataError, InputError
from tvt.search.index import PhotoIndex
from tvt.search.update import update_index


def _build(photo_dir: Path, out: Path, enc, helpers, **kw):
    return update_index(photo_dir, out, enc, helpers.identity(enc), progress=False, **kw)


def _reference_embedding(path: Path, enc) -> np.ndarray:
    """Independent computation: load, resize, project, normalise."""
    from tvt.data.images import load_rgb
    from tvt.data.transforms import eval_transform

    x = eval_transform(enc.img_size)(load_rgb(path))[None]
    f = (x.flatten(1) @ enc.w)[0].numpy()
    return f / np.linalg.norm(f)


def test_build_contents(photo_dir, tmp_path, encoder, helpers):
    report = _build(photo_dir, tmp_path / "idx", encoder, helpers, batch_size=5)
    assert (report.total, report.added, report.removed, report.skipped) == (12, 12, 0, [])
    idx = PhotoIndex.load(tmp_path / "idx")
    assert idx.paths == sorted(idx.paths) and len(idx.paths) == 12
    assert "a/0.png" in idx.paths and "b/c/5.png" in idx.paths and "9.jpg" in idx.paths
    assert idx.embeddings.dtype == np.float32 and idx.embeddings.shape == (12, 16)
    np.testing.assert_allclose(np.linalg.norm(idx.embeddings, axis=1), 1.0, atol=1e-5)
    for rel in ("a/0.png", "9.jpg"):
        i = idx.paths.index(rel)
        np.testing.assert_allclose(idx.embeddings[i], _reference_embedding(photo_dir / rel, encoder), atol=1e-5)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["model"]["kind"] == "proj" and meta["model"]["sha256"] == "0" * 64
    assert meta["photo_root"] == str(photo_dir.absolute()) and meta["count"] == 12
    assert idx.sizes[0] == (photo_dir / idx.paths[0]).stat().st_size
    assert not (tmp_path / "idx" / "partial").exists()


def test_incremental_update(photo_dir, tmp_path, encoder, helpers):
    out = tmp_path / "idx"
    _build(photo_dir, out, encoder, helpers)
    before = PhotoIndex.load(out)
    helpers.write_photo(photo_dir / "new" / "x.png", seed=100)
    helpers.write_photo(photo_dir / "y.png", seed=101)
    (photo_dir / "a" / "1.png").unlink()
    changed = helpers.write_photo(photo_dir / "b" / "c" / "5.png", seed=102)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # mtime resolution can be coarse
    enc2 = helpers.Encoder()
    report = _build(photo_dir, out, enc2, helpers)
    assert enc2.seen == 3  # two new files and one changed file, nothing else
    assert (report.added, report.changed, report.removed, report.unchanged, report.total) == (2, 1, 1, 10, 13)
    after = PhotoIndex.load(out)
    assert "a/1.png" not in after.paths and {"new/x.png", "y.png"} <= set(after.paths)
    for rel in ("a/0.png", "9.jpg"):
        np.testing.assert_array_equal(after.embeddings[after.paths.index(rel)],
                                      before.embeddings[before.paths.index(rel)])
    np.testing.assert_allclose(after.embeddings[after.paths.index("b/c/5.png")], _reference_embedding(changed, encoder),
                               atol=1e-5)
    enc3 = helpers.Encoder()
    assert _build(photo_dir, out, enc3, helpers).unchanged == 13 and enc3.seen == 0


def test_unreadable_files_are_skipped_and_listed(photo_dir, tmp_path, encoder, helpers):
    (photo_dir / "broken.png").write_bytes(b"not an image at all")
    (photo_dir / "a" / "cut.jpg").write_bytes((photo_dir / "8.jpg").read_bytes()[:60])
    report = _build(photo_dir, tmp_path / "idx", encoder, helpers)
    assert sorted(p for p, _ in report.skipped) == ["a/cut.jpg", "broken.png"]
    assert report.total == 12
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert sorted(s["path"] for s in meta["skipped"]) == ["a/cut.jpg", "broken.png"]
    assert all(s["reason"] for s in meta["skipped"])
    assert "broken.png" not in PhotoIndex.load(tmp_path / "idx").paths


def test_interrupted_run_resumes_without_reembedding(photo_dir, tmp_path, encoder, helpers):
    out = tmp_path / "idx"
    crashing = helpers.Encoder(interrupt_at=4)  # batches of 2: 3 batches (6 photos) finish first
    with pytest.raises(KeyboardInterrupt):
        _build(photo_dir, out, crashing, helpers, batch_size=2, flush_every=2)
    assert not (out / "index.json").exists() and len(list((out / "partial").glob("shard-*.npz"))) == 3
    resumed = helpers.Encoder()
    report = _build(photo_dir, out, resumed, helpers, batch_size=2)
    assert resumed.seen == 6 and report.resumed == 6 and report.total == 12
    _build(photo_dir, tmp_path / "clean", helpers.Encoder(), helpers)
    a, b = PhotoIndex.load(out), PhotoIndex.load(tmp_path / "clean")
    assert a.paths == b.paths
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)
    assert not (out / "partial").exists()


def test_other_checkpoint_or_folder_needs_rebuild(photo_dir, tmp_path, encoder, helpers):
    out = tmp_path / "idx"
    _build(photo_dir, out, encoder, helpers)
    other = helpers.identity(encoder, sha="1" * 64)
    with pytest.raises(CheckpointError, match="--rebuild"):
        update_index(photo_dir, out, encoder, other, progress=False)
    enc = helpers.Encoder()
    report = update_index(photo_dir, out, enc, other, progress=False, rebuild=True)
    assert enc.seen == 12 and report.added == 12
    assert PhotoIndex.load(out).model.sha256 == "1" * 64
    elsewhere = tmp_path / "other_photos"
    helpers.write_photo(elsewhere / "z.png", seed=5)
    with pytest.raises(InputError, match="--rebuild"):
        update_index(elsewhere, out, encoder, other, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        update_index(tmp_path / "missing", tmp_path / "idx2", encoder, other, progress=False)


def test_symlink_escape_and_index_inside_root(photo_dir, tmp_path, encoder, helpers):
    outside = helpers.write_photo(tmp_path / "secret" / "s.png", seed=9)
    os.symlink(outside, photo_dir / "link.png")
    os.symlink(tmp_path / "secret", photo_dir / "linkdir")
    report = _build(photo_dir, photo_dir / ".index", encoder, helpers)
    reasons = dict(report.skipped)
    assert set(reasons) == {"link.png", "linkdir/s.png"} and "outside the photo root" in reasons["link.png"]
    idx = PhotoIndex.load(photo_dir / ".index")
    assert len(idx) == 12 and not any(p.startswith(".index") for p in idx.paths)
    assert idx.safe_path(0) == (photo_dir / idx.paths[0]).resolve()
    # a tampered index that points outside the root is refused at read time
    idx.paths[0] = "../secret/s.png"
    with pytest.raises(InputError, match="outside the photo root"):
        idx.safe_path(0)
    with pytest.raises(InputError):
        idx.safe_path(len(idx))


def test_damaged_index_is_detected_and_repaired(photo_dir, tmp_path, encoder, helpers):
    out = tmp_path / "idx"
    _build(photo_dir, out, encoder, helpers)
    emb = np.load(out / "embeddings.npy")
    np.save(out / "embeddings.npy", emb[::-1].copy())  # same shape, wrong rows
    with pytest.raises(DataError, match="interrupted"):
        PhotoIndex.load(out)
    (out / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        PhotoIndex.load(out)
    with pytest.raises(DataError, match="not a tvt index"):
        PhotoIndex.load(tmp_path)
    enc = helpers.Encoder()
    assert _build(photo_dir, out, enc, helpers).total == 12 and enc.seen == 12
    np.testing.assert_allclose(PhotoIndex.load(out).embeddings, emb, atol=1e-6)


def test_index_with_real_photos_dataloader_workers_equal(photo_dir, tmp_path, encoder, helpers):
    torch.manual_seed(0)
    _build(photo_dir, tmp_path / "a", encoder, helpers, batch_size=3)
    _build(photo_dir, tmp_path / "b", encoder, helpers, batch_size=12)
    np.testing.assert_allclose(PhotoIndex.load(tmp_path / "a").embeddings, PhotoIndex.load(tmp_path / "b").embeddings,
                               atol=1e-5)


def test_partial_shards_of_another_model_are_discarded(photo_dir, tmp_path, encoder, helpers):
    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        update_index(photo_dir, out, helpers.Encoder(interrupt_at=2), helpers.identity(encoder, sha="1" * 64),
                     batch_size=4, flush_every=1, progress=False)
    assert len(list((out / "partial").glob("shard-*.npz"))) == 1
    enc = helpers.Encoder(seed=5)  # another model: its embeddings differ from the shard's
    report = _build(photo_dir, out, enc, helpers)
    assert report.resumed == 0 and enc.seen == 12
    ref = helpers.Encoder(seed=5)
    _build(photo_dir, tmp_path / "clean", ref, helpers)
    np.testing.assert_allclose(PhotoIndex.load(out).embeddings, PhotoIndex.load(tmp_path / "clean").embeddings,
                               atol=1e-6)


def test_index_folder_placement(photo_dir, tmp_path, encoder, helpers):
    with pytest.raises(InputError, match="photo folder itself"):
        _build(photo_dir, photo_dir, encoder, helpers)
    report = _build(photo_dir, tmp_path, encoder, helpers)  # the index folder contains the photos
    assert report.total == 12
