from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps

from tvt.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, GaussianBlur, Solarization, dino_multicrop_transform,
                                 eval_transform, tvt_train_transform)
from tvt.errors import ConfigError

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _image(w: int = 50, h: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_eval_transform_matches_manual_resize_and_normalize():
    img = _image()
    out = eval_transform(32)(img)
    # reference: PIL bilinear squash to 32x32 (no aspect ratio, no crop) [Q29], /255, ImageNet stats
    ref = np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
    ref_t = (torch.from_numpy(ref).permute(2, 0, 1) - MEAN) / STD
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, ref_t, atol=1e-5)


def test_crop_counts_and_sizes():
    img = _image()
    crops = tvt_train_transform(size=32)(img)
    assert [c.shape for c in crops] == [(3, 32, 32)]
    t = tvt_train_transform(size=32, global_crops=2, local_crops=3, local_size=16)
    assert t.num_crops == 5
    assert [tuple(c.shape) for c in t(img)] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    d = dino_multicrop_transform(global_size=32, local_size=16, local_crops=4)
    assert [tuple(c.shape) for c in d(img)] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4
    with pytest.raises(ConfigError, match="global_crops"):
        tvt_train_transform(global_crops=3)
    with pytest.raises(ConfigError, match="scale"):
        tvt_train_transform(scale=(0.5, 0.2))


def _run(transform, img, seed):
    torch.manual_seed(seed)
    random.seed(seed)
    return transform(img)


@pytest.mark.parametrize("make", [lambda: tvt_train_transform(size=32, global_crops=2, local_crops=2, local_size=16),
                                  lambda: dino_multicrop_transform(32, 16, local_crops=2)])
def test_train_transforms_are_deterministic_under_seeds(make):
    img = _image()
    t = pickle.loads(pickle.dumps(make()))  # picklable, for DataLoader workers
    a, b, c = _run(t, img, 0), _run(t, img, 0), _run(t, img, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def _min_value(crop: torch.Tensor) -> float:
    return float((crop * STD + MEAN).min())


def test_solarize_switch():
    # A white image stays >= 0.6 * 255 through crop, jitter (brightness >= 0.6; contrast, saturation
    # and hue do nothing to a flat grey), grayscale and blur; only solarization can push it below 0.5.
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    off = tvt_train_transform(size=16, solarize=False)
    on = tvt_train_transform(size=16, solarize=True)
    random.seed(0)
    torch.manual_seed(0)
    assert min(_min_value(off(white)[0]) for _ in range(150)) > 0.55
    solarized = [_min_value(on(white)[0]) < 0.45 for _ in range(150)]
    assert 10 <= sum(solarized) <= 50  # p = 0.2 -> about 30 of 150


def test_blur_and_solarize_match_pil():
    img = _image()
    random.seed(3)
    draw = random.random()  # the gate draw, then the radius
    radius = random.uniform(0.1, 2.0)
    random.seed(3)
    out = GaussianBlur(p=1.0)(img)
    assert draw <= 1.0
    assert np.array_equal(np.asarray(out), np.asarray(img.filter(ImageFilter.GaussianBlur(radius))))
    random.seed(3)
    assert GaussianBlur(p=draw - 1e-9)(img) is img  # applied only when random() <= p
    random.seed(3)
    assert GaussianBlur(p=draw)(img) is not img
    random.seed(3)
    assert np.array_equal(np.asarray(Solarization(p=1.0)(img)), np.asarray(ImageOps.solarize(img, 128)))
    random.seed(3)
    assert Solarization(p=draw)(img) is img  # applied only when random() < p
