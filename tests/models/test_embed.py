"""`tvt embed` in-process: row order, unit norm, equality with a direct model call, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tvt.cli import main
from tvt.data.images import load_rgb
from tvt.data.transforms import eval_transform
from tvt.models.weights import arch_hints


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate((32, 40, 24)):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def tvt_ckpt(tools, student, tmp_path):
    path = tmp_path / "tvt.pth"
    torch.save({"format": "tvt", "version": 1, "stage": "tvt", "student": student.state_dict(),
                "arch": arch_hints(student)}, path)
    return path


def direct(model_fn, paths, size: int = 32) -> np.ndarray:
    tf = eval_transform(size)
    x = torch.stack([tf(load_rgb(p)) for p in paths])
    with torch.no_grad():
        return F.normalize(model_fn(x), dim=-1).numpy()


@pytest.mark.parametrize("return_idx", [0, 3])
def test_embed_tvt_rows_in_argument_order(student, tvt_ckpt, pngs, tmp_path, return_idx):
    out = tmp_path / "feats.npy"
    order = [pngs[2], pngs[0], pngs[1], pngs[0]]
    argv = ["embed", "--checkpoint", str(tvt_ckpt), "--out", str(out), "--batch-size", "3",
            "--return-idx", str(return_idx), "--modality", "img", "--device", "cpu", "--no-progress"]
    assert main(argv + [str(p) for p in order]) == 0
    feats = np.load(out)
    assert feats.dtype == np.float32 and feats.shape == (4, 64 if return_idx == 0 else 16)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    ref = direct(lambda x: student.features(x, "img", return_idx), order)
    assert np.allclose(feats, ref, atol=1e-5)
    assert np.allclose(feats[1], feats[3], atol=1e-6)


def test_embed_plain_vit_and_img_size(teacher, pngs, tmp_path):
    ckpt = tmp_path / "vit.pth"
    torch.save(teacher.backbone.state_dict(), ckpt)
    out = tmp_path / "sub" / "v.npy"
    argv = ["embed", "--checkpoint", str(ckpt), "--out", str(out), "--img-size", "48", "--device", "cpu"]
    assert main(argv + [str(p) for p in pngs]) == 0
    feats = np.load(out)
    assert np.allclose(feats, direct(teacher.backbone, pngs, size=48), atol=1e-5)


def test_embed_errors_write_nothing(tvt_ckpt, pngs, tmp_path, capsys):
    out = tmp_path / "never.npy"
    base = ["embed", "--checkpoint", str(tvt_ckpt), "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(base + [str(pngs[0]), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(pngs[0].read_bytes()[:40])
    assert main(base + [str(pngs[0]), str(broken)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["embed", "--checkpoint", str(tmp_path / "no.pth"), "--out", str(out), str(pngs[0])]) == 2
    assert "no.pth" in capsys.readouterr().err
    assert main(base + ["--img-size", "4", str(pngs[0])]) == 2
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
