"""`tvt index` and `tvt search` in-process, with a real tiny TVT checkpoint and synthetic photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tvt.cli import main


@pytest.fixture
def photos(synth_photos, tmp_path):
    """A private copy of the synthetic photos (tests change it)."""
    return shutil.copytree(synth_photos / "photo", tmp_path / "photos")


def test_index_then_search(photos, tmp_path, tiny_ckpt, synth_photos, capsys):
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-progress"]) == 0
    assert "24 photos (24 added" in capsys.readouterr().out
    meta = json.loads((out / "index.json").read_text())
    assert meta["model"]["kind"] == "tvt" and meta["model"]["dim"] == 32 and meta["model"]["img_size"] == 32
    assert meta["model"]["checkpoint"] == str(tiny_ckpt) and len(meta["model"]["sha256"]) == 64
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (24, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)

    # incremental: nothing to do, then one new photo; the checkpoint comes from the index
    assert main(["index", str(photos), "--out", str(out), "--no-progress"]) == 0
    assert "24 unchanged" in capsys.readouterr().out
    Image.open(next(photos.rglob("*.png"))).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "new.png")
    assert main(["index", str(photos), "--out", str(out), "--no-progress"]) == 0
    assert "25 photos (1 added" in capsys.readouterr().out

    sketch = next((synth_photos / "sketch").rglob("*.png"))
    sheet = tmp_path / "sheet.png"
    assert main(["search", str(sketch), "--index", str(out), "-k", "5", "--json", "--sheet", str(sheet)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in res["results"]] == [1, 2, 3, 4, 5] and res["backend"] == "exact"
    scores = [r["score"] for r in res["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all((photos / r["relpath"]).is_file() for r in res["results"])
    assert Image.open(sheet).size[0] > 0

    # a photo as its own query, whole frame (the default crop to ink is for drawings)
    assert main(["search", str(photos / "new.png"), "--index", str(out), "-k", "3", "--no-crop"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1" and lines[0].endswith("new.png")

    strokes = tmp_path / "q.ndjson"
    strokes.write_text(json.dumps({"drawing": [[[0, 100, 50, 0], [0, 0, 90, 0]]]}) + "\n")
    assert main(["search", str(strokes), "--index", str(out), "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 2


def test_cli_errors(photos, tmp_path, tiny_ckpt, helpers, capsys):
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--out", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["index", str(tmp_path / "nope"), "--checkpoint", str(tiny_ckpt), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-progress"]) == 0
    other = helpers.tiny_checkpoint(tmp_path / "other.pth", seed=1)
    assert main(["index", str(photos), "--checkpoint", str(other), "--out", str(out), "--no-progress"]) == 2
    assert "--rebuild" in capsys.readouterr().err
    assert main(["index", str(photos), "--checkpoint", str(other), "--out", str(out), "--rebuild",
                 "--no-progress"]) == 0
    capsys.readouterr()
    sketch = next(photos.rglob("*.png"))
    assert main(["search", str(sketch), "--index", str(tmp_path), "-k", "3"]) == 2
    assert "not a tvt index" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "none.png"), "--index", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["search", str(sketch), "--index", str(out), "--checkpoint", str(tiny_ckpt)]) == 2
    assert "is not the one" in capsys.readouterr().err
    assert main(["search", str(sketch), "--index", str(out), "--backend", "annoy"]) == 2
    assert "unknown search backend" in capsys.readouterr().err
