"""Search without training (--backbone/--weights), exported model folders, and weak-model warnings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tvt.cli import main


@pytest.fixture
def photos(synth_photos, tmp_path):
    return shutil.copytree(synth_photos / "photo", tmp_path / "photos")


def _search(sketch, index, capsys, *extra: str) -> list[tuple[str, float]]:
    assert main(["search", str(sketch), "--index", str(index), "-k", "6", "--json", *extra]) == 0
    return [(r["relpath"], r["score"]) for r in json.loads(capsys.readouterr().out)["results"]]


def _tiny_backbone(name: str, size: int, path):
    from tvt.models.backbones import build_named_vit

    torch.manual_seed(0)
    vit = build_named_vit(name, size, depth=2).eval()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return vit


def test_export_then_index_and_search_equal_checkpoint(photos, synth_photos, tmp_path, tiny_ckpt, capsys):
    folder = tmp_path / "model"
    assert main(["export", str(tiny_ckpt), "--out", str(folder), "--licence", "cc-by-4.0"]) == 0
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["kind"] == "tvt" and cfg["backbone"] == "dino_vit" and cfg["img_size"] == 32
    assert cfg["tokens"] == ["dist_img_token", "fusion_token"] and cfg["licence"] == "cc-by-4.0"
    assert cfg["mean"] == pytest.approx([0.485, 0.456, 0.406]) and cfg["return_idx"] == 0
    capsys.readouterr()
    a, b = tmp_path / "idx_ckpt", tmp_path / "idx_folder"
    assert main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(a), "--no-progress"]) == 0
    assert main(["index", str(photos), "--checkpoint", str(folder), "--out", str(b), "--no-progress"]) == 0
    assert np.array_equal(np.load(a / "embeddings.npy"), np.load(b / "embeddings.npy"))
    capsys.readouterr()
    sketch = next((synth_photos / "sketch").rglob("*.png"))
    assert _search(sketch, a, capsys) == _search(sketch, b, capsys)
    # a moved folder is found again by its checksum
    moved = shutil.move(str(folder), str(tmp_path / "moved"))
    assert _search(sketch, b, capsys, "--checkpoint", moved) == _search(sketch, a, capsys)


def test_folder_loads_without_unpickling(tmp_path, tiny_ckpt, monkeypatch):
    from tvt.models.export import export_model
    from tvt.models.encoder import load_encoder

    # an evaluation beside the checkpoint ends up in the model card
    ckpt = tmp_path / "run" / "checkpoint.pth"
    ckpt.parent.mkdir()
    shutil.copy(tiny_ckpt, ckpt)
    (ckpt.parent / "eval").mkdir()
    (ckpt.parent / "eval" / "tvt_results.json").write_text(json.dumps({"mAP@all": 0.4321, "P@100": 0.5}))
    folder = export_model(ckpt, tmp_path / "m", return_idx=2)
    card = (folder / "README.md").read_text()
    assert "| mAP@all | 0.4321 |" in card and "| licence | unspecified |" in card
    x = torch.randn(3, 3, 32, 32)
    want = load_encoder(ckpt, return_idx=2)(x, "skt")

    def no_pickle(*a, **k):
        raise AssertionError("torch.load called while loading a model folder")

    monkeypatch.setattr(torch, "load", no_pickle)
    enc = load_encoder(folder, return_idx=None)  # the folder's own return_idx (2)
    assert enc.return_idx == 2 and torch.equal(enc(x, "skt"), want)


def test_index_with_pretrained_backbone(photos, synth_photos, tmp_path, capsys):
    from tvt.data.images import load_rgb
    from tvt.data.transforms import eval_transform
    from tvt.search.retriever import Retriever

    weights = tmp_path / "clip_tiny.safetensors"
    vit = _tiny_backbone("clip_vitb16", 32, weights)
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--backbone", "clip_vitb16", "--weights", str(weights), "--img-size", "32",
                 "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err  # nothing known to be weak about a pretrained backbone
    capsys.readouterr()
    meta = json.loads((out / "index.json").read_text())
    assert meta["model"]["extra"]["pretrained_backbone"] == "clip_vitb16" and meta["model"]["kind"] == "vit"
    assert meta["preprocess"]["normalize"]["mean"] == pytest.approx(list(vit.arch.mean))
    # embeddings = the backbone's pooled feature with CLIP's own normalisation, L2-normalised
    paths = json.loads((out / "files.json").read_text())["paths"]
    tf = eval_transform(32, mean=vit.arch.mean, std=vit.arch.std)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(vit(torch.stack([tf(load_rgb(photos / p)) for p in paths])), dim=1)
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), ref.numpy(), rtol=1e-4, atol=1e-5)
    sketch = next((synth_photos / "sketch").rglob("*.png"))
    hits = _search(sketch, out, capsys)
    assert len(hits) == 6
    r = Retriever.from_index(out, quiet=True)
    assert [h.relpath for h in r.search(sketch, k=6)] == [h for h, _ in hits]
    # an update finds the backbone and weights in the index
    assert main(["index", str(photos), "--out", str(out), "--no-progress"]) == 0
    assert "24 unchanged" in capsys.readouterr().out


def test_pretrained_backbone_needs_weights_and_downloads_only_when_asked(photos, tmp_path, monkeypatch, capsys):
    import tvt.models.resolve as resolve

    calls = []

    def fake_build(name, img_size=None, download=False, **kw):  # stands in for timm's download
        from tvt.models.backbones import build_named_vit

        calls.append(download)
        torch.manual_seed(0)
        return build_named_vit(name, 32, depth=2)

    monkeypatch.setattr(resolve, "build_named_vit", fake_build)
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--backbone", "dino_vits16", "--out", str(out)]) == 2
    assert "needs --weights" in capsys.readouterr().err
    assert main(["index", str(photos), "--backbone", "dino_vits16", "--weights", str(tmp_path / "none"),
                 "--out", str(out)]) == 2
    assert "do not exist" in capsys.readouterr().err and calls == []
    fetched = tmp_path / "fetched"
    assert main(["index", str(photos), "--backbone", "dino_vits16", "--weights", str(fetched), "--download",
                 "--img-size", "32", "--out", str(out), "--no-progress"]) == 0
    assert calls == [True] and (fetched / "config.json").is_file() and (fetched / "model.safetensors").is_file()
    assert json.loads((out / "index.json").read_text())["model"]["checkpoint"] == str(fetched)


def test_weak_model_warning_once(photos, tmp_path, tiny_ckpt, capsys):
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ckpt.update(dataset="synth", train_classes=["a", "b", "c", "d"])
    torch.save(ckpt, tmp_path / "demo.pth")
    assert main(["index", str(photos), "--checkpoint", str(tmp_path / "demo.pth"), "--out", str(tmp_path / "i"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: this model was trained on the synthetic 'synth'") == 1 and "--backbone" in err
    ckpt.update(dataset="sketchy", train_classes=[f"c{i}" for i in range(10)])
    torch.save(ckpt, tmp_path / "few.pth")
    assert main(["export", str(tmp_path / "few.pth"), "--out", str(tmp_path / "few")]) == 0
    assert main(["index", str(photos), "--checkpoint", str(tmp_path / "few"), "--out", str(tmp_path / "j"),
                 "--no-progress"]) == 0
    assert capsys.readouterr().err.count("only 10 classes") == 1
    ckpt.update(train_classes=[f"c{i}" for i in range(100)])
    torch.save(ckpt, tmp_path / "many.pth")
    assert main(["index", str(photos), "--checkpoint", str(tmp_path / "many.pth"), "--out", str(tmp_path / "k"),
                 "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_index_with_timm_model_folder_as_checkpoint(photos, synth_photos, tmp_path, capsys):
    """A timm/HF model folder names its own backbone: --checkpoint FOLDER is enough, also to search."""
    from timm.models._hub import save_for_hf

    from tvt.models.backbones import build_named_vit

    torch.manual_seed(0)
    save_for_hf(build_named_vit("dinov2_vits14", 28, depth=2), str(tmp_path / "hf"), safe_serialization=True)
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--checkpoint", str(tmp_path / "hf"), "--out", str(out), "--no-progress"]) == 0
    model = json.loads((out / "index.json").read_text())["model"]
    assert model["extra"]["pretrained_backbone"] == "vit_small_patch14_dinov2.lvd142m" and model["img_size"] == 224
    capsys.readouterr()
    sketch = next((synth_photos / "sketch").rglob("*.png"))
    assert len(_search(sketch, out, capsys)) == 6


def test_serve_warns_once_about_a_weak_model(photos, tmp_path, tiny_ckpt, monkeypatch, capsys):
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ckpt.update(dataset="synth", train_classes=["a", "b"])
    torch.save(ckpt, tmp_path / "demo.pth")
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--checkpoint", str(tmp_path / "demo.pth"), "--out", str(out),
                 "--no-progress"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)  # no server: only the start-up messages
    assert main(["serve", "--index", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().err.count("trained on the synthetic 'synth'") == 1
