"""Retriever: query types, ranking against a brute-force reference, cropping, contact sheet."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tvt.errors import CheckpointError, InputError
from tvt.search.index import PhotoIndex
from tvt.search.update import update_index
from tvt.search.retriever import Retriever, contact_sheet, crop_to_ink, load_query_image


@pytest.fixture
def retriever(photo_dir, tmp_path, encoder, helpers) -> Retriever:
    update_index(photo_dir, tmp_path / "idx", encoder, helpers.identity(encoder), progress=False)
    return Retriever.from_index(tmp_path / "idx", encoder=encoder, backend="exact", quiet=True)


def test_search_ranks_like_brute_force(retriever, photo_dir):
    hits = retriever.search(photo_dir / "a" / "2.png", k=5, crop=False)  # a photo finds itself: whole frame
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0].relpath == "a/2.png" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].path == photo_dir.absolute() / "a" / "2.png"
    q = retriever.embed(photo_dir / "a" / "2.png", crop=False)[0]
    ref = np.argsort(-(retriever.index.embeddings @ q), kind="stable")[:5]
    assert [h.id for h in hits] == ref.tolist()
    assert [retriever.index.paths[h.id] for h in hits] == [h.relpath for h in hits]
    assert len(retriever.search(photo_dir / "9.jpg", k=1000)) == 12
    with pytest.raises(InputError, match="k must be"):
        retriever.search(photo_dir / "9.jpg", k=0)
    batch = retriever.search_many([photo_dir / "a" / "2.png", photo_dir / "9.jpg"], k=3, crop=False)
    assert [h.id for h in batch[0]] == [h.id for h in hits[:3]] and batch[1][0].relpath == "9.jpg"
    np.testing.assert_allclose([h.score for h in batch[0]], [h.score for h in hits[:3]], atol=1e-5)
    assert json.loads(json.dumps(hits[0].to_dict()))["relpath"] == "a/2.png"


def test_query_types_agree(retriever, photo_dir, tmp_path):
    path = photo_dir / "a" / "3.png"
    img = Image.open(path)
    ref = retriever.embed(path)
    np.testing.assert_allclose(retriever.embed(img), ref, atol=1e-6)
    np.testing.assert_allclose(retriever.embed(np.asarray(img.convert("RGB"))), ref, atol=1e-6)
    rgba = img.convert("RGBA")
    rgba.putalpha(255)
    np.testing.assert_allclose(retriever.embed(rgba), ref, atol=1e-6)
    drawing = [[[0, 50, 100], [0, 80, 0]], [[10, 90], [60, 60]]]
    (tmp_path / "q.ndjson").write_text(json.dumps({"word": "x", "drawing": drawing}) + "\n")
    from tvt.data.strokes import render_strokes

    rendered = retriever.embed(render_strokes(drawing, size=256, line_width=4, padding=16))
    np.testing.assert_allclose(retriever.embed(drawing), rendered, atol=1e-6)
    np.testing.assert_allclose(retriever.embed(tmp_path / "q.ndjson"), rendered, atol=1e-6)
    with pytest.raises(InputError, match="does not exist"):
        retriever.embed(tmp_path / "missing.png")
    with pytest.raises(InputError):
        load_query_image(12345)
    with pytest.raises(InputError, match="out of range"):
        load_query_image(tmp_path / "q.ndjson", drawing_index=3)


def test_crop_to_ink_by_hand():
    img = Image.new("RGB", (100, 60), "white")
    img.paste((0, 0, 0), (20, 10, 40, 50))  # a 20 x 40 black bar
    out = crop_to_ink(img, margin=0.1)
    assert out.size == (48, 48)  # side 40 + 2 * round(4.0) padding
    arr = np.asarray(out.convert("L"))
    ys, xs = np.nonzero(arr < 128)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (14, 33, 4, 43)  # centred horizontally
    blank = Image.new("RGB", (30, 30), "white")
    assert crop_to_ink(blank) is blank


def test_contact_sheet_layout(retriever, photo_dir):
    hits = retriever.search(photo_dir / "a" / "0.png", k=7)
    sheet = contact_sheet(Image.open(photo_dir / "a" / "0.png"), hits, thumb=40, cols=5)
    assert sheet.size == (6 * 46 + 6, 2 * (40 + 14 + 6) + 6)
    # the first result tile is the query photo itself, scaled to 40 px
    tile = np.asarray(sheet.crop((52, 6, 92, 46)), dtype=float)
    ref = np.asarray(Image.open(photo_dir / "a" / "0.png").convert("RGB").resize((40, 40)), dtype=float)
    assert np.abs(tile - ref).mean() < 20


def test_checkpoint_checks(photo_dir, tmp_path, encoder, helpers, tiny_ckpt):
    from tvt.files import sha256_file
    from tvt.search import ModelIdentity
    from tvt.search.retriever import load_index_encoder

    update_index(photo_dir, tmp_path / "idx", encoder, helpers.identity(encoder), progress=False)
    index = PhotoIndex.load(tmp_path / "idx")
    with pytest.raises(CheckpointError, match="is not there"):
        load_index_encoder(index, None)  # the stand-in's "proj.pth" does not exist
    with pytest.raises(CheckpointError, match="is not the one"):
        load_index_encoder(index, tiny_ckpt)  # sha256 differs from the recorded one
    index.model = ModelIdentity("tvt", 32, 32, 0, str(tiny_ckpt), sha256_file(tiny_ckpt))
    assert load_index_encoder(index, None).dim == 32
    with pytest.raises(CheckpointError, match="-d"):
        Retriever(index, helpers.Encoder())  # 16-d encoder, index says 32-d
