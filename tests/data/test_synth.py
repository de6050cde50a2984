"""Tests of the synthetic dataset generator (tvt.data.synth) and `tvt data synth`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tvt.cli import main
from tvt.data.synth import CLASS_NAMES, class_names, contact_sheet, generate, render_photo, render_sketch
from tvt.errors import ConfigError, DataError


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root: Path, modality: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [N, H, W, 3] float in [0, 1], labels [N], per-class index [N]."""
    xs, ys, idx = [], [], []
    for label, c in enumerate(classes):
        for j, f in enumerate(sorted((root / modality / c).glob("*.png"))):
            xs.append(np.asarray(Image.open(f), dtype=np.float64) / 255)
            ys.append(label)
            idx.append(j)
    return np.stack(xs), np.array(ys), np.array(idx)


def _hog(x: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
    """Plain histogram of oriented gradients: [N, H, W, 3] -> L2-normalised [N, (H/cell)^2 * bins]."""
    g = x.mean(-1)
    gy, gx = np.gradient(g, axis=(1, 2))
    mag, ang = np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)
    b = np.minimum((ang / np.pi * bins).astype(int), bins - 1)
    n, h, w = g.shape
    hist = np.stack([(mag * (b == k)).reshape(n, h // cell, cell, w // cell, cell).sum((2, 4))
                     for k in range(bins)], axis=-1)
    hist = np.sqrt(hist).reshape(n, -1)
    return hist / (np.linalg.norm(hist, axis=1, keepdims=True) + 1e-12)


def _nearest_mean_accuracy(f: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    """Fit class means on ``train`` rows, classify the other rows by the nearest mean (L2)."""
    classes = np.unique(y)
    mu = np.stack([f[train & (y == c)].mean(0) for c in classes])
    test = ~train
    pred = classes[np.argmin(((f[test, None] - mu[None]) ** 2).sum(-1), axis=1)]
    return float((pred == y[test]).mean())


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), num_classes=6, seed=3, photos_per_class=3,
                    sketches_per_class=2, size=32, progress=False)


def test_class_designs() -> None:
    assert len(CLASS_NAMES) >= 48
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", c) for c in CLASS_NAMES)
    assert class_names(2) == list(CLASS_NAMES[:2])
    assert class_names(len(CLASS_NAMES)) == list(CLASS_NAMES)
    for bad in (1, 0, len(CLASS_NAMES) + 1):
        with pytest.raises(ConfigError, match="num_classes"):
            class_names(bad)


def test_every_design_draws_something() -> None:
    # Every class renders in both modalities: photos have an object that differs from the
    # background, sketches have dark ink on white.
    for i, name in enumerate(CLASS_NAMES):
        photo = np.asarray(render_photo(name, np.random.default_rng(i), size=32), dtype=float)
        sketch = np.asarray(render_sketch(name, np.random.default_rng(i), size=32), dtype=float)
        assert photo.shape == sketch.shape == (32, 32, 3)
        assert photo.std(axis=(0, 1)).max() > 10, name
        assert (sketch.min(-1) < 128).mean() > 0.01, name
        assert (sketch.min(-1) > 200).mean() > 0.6, name


def test_layout_split_and_counts(small: Path) -> None:
    assert small.name == "synth"
    all_lines = (small / "split" / "all_classes.txt").read_text().splitlines()
    unseen = (small / "split" / "zeroshot_classes.txt").read_text().splitlines()
    assert all_lines == sorted(CLASS_NAMES[:6])
    assert sorted(p.name for p in (small / "split").iterdir()) == ["all_classes.txt", "zeroshot_classes.txt"]
    assert len(unseen) == 2 == len(set(unseen))  # default max(2, 6 // 4)
    assert set(unseen) <= set(all_lines) and unseen == sorted(unseen)
    assert len(set(all_lines) - set(unseen)) == 4
    for modality, count in (("photo", 3), ("sketch", 2)):
        assert sorted(p.name for p in (small / modality).iterdir()) == all_lines
        for c in all_lines:
            files = sorted((small / modality / c).iterdir())
            assert [f.suffix for f in files] == [".png"] * count
    readme = (small / "README.txt").read_text()
    assert "generator version" in readme and "seed: 3" in readme and "photos per class: 3" in readme


def test_images_rgb_sketch_white_photo_not(small: Path) -> None:
    for modality in ("photo", "sketch"):
        for f in sorted((small / modality).rglob("*.png")):
            with Image.open(f) as im:
                assert im.mode == "RGB" and im.size == (32, 32)
                a = np.asarray(im, dtype=float)
            white = (a.min(-1) > 220).mean()
            if modality == "sketch":
                assert white > 0.6 and a.min() < 90, f  # mostly white paper, some dark strokes
                assert np.abs(a - a.mean(-1, keepdims=True)).max() < 1.0  # grey ink
            else:
                assert white < 0.5, f


def test_determinism_and_seed(tmp_path: Path) -> None:
    kw = dict(num_classes=3, photos_per_class=2, sketches_per_class=2, size=32, progress=False)
    a = _tree_bytes(generate(tmp_path / "a", seed=5, **kw))
    b = _tree_bytes(generate(tmp_path / "b", seed=5, **kw))
    c = _tree_bytes(generate(tmp_path / "c", seed=6, **kw))
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in pngs)
    # Each image has its own generator: more classes leave the shared classes' images unchanged.
    d = _tree_bytes(generate(tmp_path / "d", seed=5, **{**kw, "num_classes": 4}))
    assert all(d[k] == a[k] for k in pngs)


def test_unseen_choice(tmp_path: Path) -> None:
    def unseen(seed: int, n: int) -> list[str]:
        root = generate(tmp_path / f"u{seed}_{n}", num_classes=12, seed=seed, photos_per_class=1,
                        sketches_per_class=1, size=16, num_unseen=n, progress=False)
        return (root / "split" / "zeroshot_classes.txt").read_text().splitlines()

    picks = [unseen(s, 5) for s in range(4)]
    assert all(len(p) == 5 and set(p) <= set(CLASS_NAMES[:12]) for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # a random subset, not a fixed one
    assert unseen(0, 5) == picks[0]
    with pytest.raises(ConfigError, match="num_unseen"):
        generate(tmp_path / "bad", num_classes=4, num_unseen=4, progress=False)
    with pytest.raises(ConfigError, match="num_classes"):
        generate(tmp_path / "bad", num_classes=len(CLASS_NAMES) + 1, progress=False)


def test_colour_is_uninformative_shape_is(tmp_path: Path) -> None:
    """Mean photo colour classifies at chance level; gradient histograms (shape) do much better,
    within photos and from sketches to photos."""
    root = generate(tmp_path, num_classes=8, seed=0, photos_per_class=24, sketches_per_class=12,
                    size=64, progress=False)
    classes = (root / "split" / "all_classes.txt").read_text().splitlines()
    photos, py, pi = _load(root, "photo", classes)
    sketches, sy, _ = _load(root, "sketch", classes)
    chance = 1 / len(classes)
    train = pi % 2 == 0
    colour_acc = _nearest_mean_accuracy(photos.mean((1, 2)), py, train)
    hp, hs = _hog(photos), _hog(sketches)
    shape_acc = _nearest_mean_accuracy(hp, py, train)
    cross_acc = float((py[np.argmax(hs @ hp.T, axis=1)] == sy).mean())  # sketch -> nearest photo
    print(f"chance {chance:.3f} colour {colour_acc:.3f} photo-HOG {shape_acc:.3f} sketch->photo {cross_acc:.3f}")
    assert colour_acc < 2 * chance
    assert shape_acc > 3 * chance
    assert cross_acc > 3 * chance


def test_contact_sheet(small: Path, tmp_path: Path) -> None:
    out = contact_sheet(small, tmp_path / "sheet.png", classes=4, per_class=2)
    with Image.open(out) as im:
        assert im.mode == "RGB" and im.height == 4 * 64 and im.width > 4 * 64
    with pytest.raises(DataError, match="nope"):
        contact_sheet(small, tmp_path / "x.png", classes=["star5", "nope"])


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["data", "synth", str(tmp_path), "--classes", "3", "--unseen", "1", "--photos-per-class", "2",
            "--sketches-per-class", "1", "--size", "32", "--seed", "1", "--dataset", "toy", "--quiet"]
    assert main(argv) == 0
    root = tmp_path / "toy"
    out = capsys.readouterr().out
    assert str(root) in out and "photos: 6" in out and "sketches: 3" in out
    assert (root / "preview.png").is_file()
    assert len((root / "split" / "zeroshot_classes.txt").read_text().splitlines()) == 1
    assert len(list((root / "photo").rglob("*.png"))) == 6
    first = _tree_bytes(root)
    (root / "photo" / "stale").mkdir()
    assert main(argv) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force", "--no-sheet"]) == 0
    assert not (root / "photo" / "stale").exists() and not (root / "preview.png").exists()
    assert {k: v for k, v in first.items() if k != "preview.png"} == _tree_bytes(root)
    assert main(["data", "synth", str(tmp_path / "x"), "--classes", "999", "--quiet"]) == 2
    assert "num_classes" in capsys.readouterr().err
