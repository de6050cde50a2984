"""benchmarks/demo_teachers.py on a tiny stand-in: the signal measures, the head fit, the pool, stage B."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tvt import config as config_mod
from tvt.data.layout import load_split
from tvt.engine import checkpoint as ckpt
from tvt.engine.demo_run import manifest
from tvt.engine.standin import train_standin
from tvt.errors import ConfigError
from tvt.eval.report import chance_levels
from tvt.models.weights import load_teacher

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "demo_teachers.py"
_spec = importlib.util.spec_from_file_location("demo_teachers", _SCRIPT)
dt = importlib.util.module_from_spec(_spec)
sys.modules["demo_teachers"] = dt  # dataclasses look their module up there
_spec.loader.exec_module(dt)


@pytest.fixture
def cfg(tiny_overrides):
    return config_mod.load([], tiny_overrides)


@pytest.fixture
def standin(cfg, tmp_path) -> Path:
    return train_standin(cfg, tmp_path / "image_vit", steps=3, batch_size=16, device="cpu", progress=False)


def _train_photos(cfg) -> torch.Tensor:
    return dt.image_tensor(cfg, "photo", load_split(cfg.data.root, cfg.data.dataset, cfg.data.split).train_classes)


def test_entropy_of_a_uniform_head_is_ln_k(cfg, standin):
    teacher = load_teacher(standin)
    k = cfg.model.out_dim
    const = nn.Linear(cfg.model.embed_dim, k)  # zero weights: the same logits for every image
    nn.init.zeros_(const.weight)
    nn.init.normal_(const.bias, std=5.0)
    teacher.head = const
    row = dt.signal(teacher, _train_photos(cfg))
    assert row["ln K"] == pytest.approx(math.log(k))
    assert row["entropy"] == pytest.approx(math.log(k), abs=1e-5)
    assert row["logit std"] == pytest.approx(0.0, abs=1e-6)
    # one-hot-like targets: each image's own logit far above the rest -> entropy near 0
    assert dt.centred_entropy(torch.eye(k) * 10.0) < 1e-3


def test_fitted_head_sharpens_targets_and_loads_as_a_teacher(cfg, standin, tmp_path):
    out = tmp_path / "fitted" / "checkpoint.pth"
    opts = dt.FitOptions(views=2, steps=300, batch=32)
    path, loss = dt.fitted_teacher(cfg, standin, out, opts)
    assert path == out and math.isfinite(loss)
    photos = _train_photos(cfg)
    fresh, fitted = dt.signal(load_teacher(standin), photos), dt.signal(load_teacher(out), photos)
    assert fitted["entropy"] < fresh["entropy"] - 0.5, (fresh, fitted)
    assert fitted["feature std"] == pytest.approx(fresh["feature std"])  # the backbone stays frozen
    state = ckpt.load_file(out)  # checksum verified
    source = ckpt.load_file(standin)
    assert state["standin_head"] == "classes-fitted"
    assert {k for k in state if k != "teacher"} == {k for k in source if k != "teacher"}
    assert dt.fitted_teacher(cfg, standin, out, opts) == (out, None)  # reused, not refitted


def test_pool_never_holds_an_unseen_class(cfg, tmp_path):
    split = load_split(cfg.data.root, cfg.data.dataset, cfg.data.split)
    unseen = split.test_classes
    classes = dt.pool_classes(unseen)
    assert set(split.train_classes) <= set(classes) and not set(classes) & set(unseen)
    with pytest.raises(ConfigError, match="unseen"):
        dt.write_pool(tmp_path / "leak", [*classes[:2], unseen[0]], unseen, photos=1)
    path = dt.pool_standin(cfg, tmp_path, steps=2, run="pool", photos=1)
    root = tmp_path / "pool_data" / cfg.data.dataset
    drawn = {p.name for p in (root / "photo").iterdir()}
    assert drawn == set(classes)
    pool_split = load_split(tmp_path / "pool_data", cfg.data.dataset, cfg.data.split)
    assert pool_split.test_classes == sorted(unseen) and pool_split.train_classes == sorted(classes)
    state = ckpt.load_file(path)
    assert not set(state["train_classes"]) & set(unseen)


def test_demo_config_and_stage_b_rows(cfg, standin, tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    record = manifest(cfg, demo, seed=0, classes=6)
    (demo / "demo.json").write_text(json.dumps(record))
    again = dt.demo_cfg(demo, ["train.seed=3"])
    assert again.data.root == cfg.data.root and again.train.seed == 3 and again.model.depth == cfg.model.depth
    with pytest.raises(ConfigError, match="not a finished demo"):
        dt.demo_cfg(tmp_path / "nothing", [])

    from tvt.engine.demo import _stage_a

    sketch = _stage_a(cfg, "sketch", str(standin), tmp_path / "sketch_vit", "cpu", False)
    sets = dt.unseen_sets(cfg)
    rows = dt.stage_b_rows(cfg, sets, {"shipped": (standin, sketch)}, tmp_path / "runs", epochs=1, tag="t")
    assert set(rows) == {"shipped teachers, all terms", "shipped teachers, CE only"}
    feats_chance = chance_levels(sets.sketches.targets, sets.photos.targets)
    for row in rows.values():
        assert row["chance mAP@all"] == pytest.approx(feats_chance["mAP@all"])
        assert all(0.0 <= v <= 1.0 for v in row.values())
    # the start is the same network before stage B whatever the terms; the trained ones differ
    a, b = rows.values()
    assert a["start mAP@all"] == b["start mAP@all"]
    assert (tmp_path / "runs" / "stage_b" / "shipped-CE_only-t" / "checkpoint.pth").is_file()
    table = dt.table(rows, "teachers, terms")
    assert table.count("\n") == 3 and "| shipped teachers, CE only |" in table
