"""`tvt demo` end to end with a tiny model and few classes (the real demo runs the same code)."""

from __future__ import annotations

import json

from PIL import Image

from tvt.cli import main

TINY = ["data.img_size=32", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.out_dim=64",
        "model.head_hidden_dim=32", "model.head_bottleneck_dim=16", "sketch.epochs=1", "sketch.batch_size=16",
        "sketch.max_steps_per_epoch=2", "sketch.local_crops=2", "sketch.local_crops_size=16", "train.epochs=1",
        "train.batch_size=16", "train.max_steps_per_epoch=2", "train.warmup_epochs=1",
        "train.align_uniform_epochs=1", "train.accum_steps=2", "eval.grid_queries=2", "eval.grid_k=4"]


def test_demo_writes_metrics_for_three_models(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path / "demo"), "--classes", "5", "--device", "cpu", "--no-progress",
            "--standin-steps", "3"]
    for o in TINY:
        args += ["--set", o]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(metrics) >= {"tvt", "start", "image_teacher"}
    for model in ("tvt", "start", "image_teacher"):
        for key in ("mAP@all", "mAP@200", "P@100", "P@200"):
            assert 0.0 <= metrics[model][key] <= 1.0, (model, key)
    with Image.open(tmp_path / "demo" / "retrievals.png") as im:
        assert im.width > 32 and im.height > 32
    out = capsys.readouterr().out
    assert "tvt" in out and "image_teacher" in out and "mAP@all" in out
