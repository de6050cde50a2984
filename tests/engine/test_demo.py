"""`tvt demo` end to end with a tiny model and few classes (the real demo runs the same code)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tvt.cli import main
from tvt.engine.demo import DemoOptions, dataset_label, demo_config
from tvt.engine.demo_run import claim_folder, last_iteration, manifest
from tvt.errors import ConfigError
from tvt.eval.report import chance_levels

TINY = ["data.img_size=32", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.out_dim=64",
        "model.head_hidden_dim=32", "model.head_bottleneck_dim=16", "sketch.epochs=1", "sketch.batch_size=16",
        "sketch.max_steps_per_epoch=2", "sketch.local_crops=2", "sketch.local_crops_size=16", "train.epochs=1",
        "train.batch_size=16", "train.max_steps_per_epoch=2", "train.warmup_epochs=1",
        "train.align_uniform_epochs=1", "train.accum_steps=2", "eval.grid_queries=2", "eval.grid_k=4"]


def _args(out, *extra: str) -> list[str]:
    args = ["demo", "--out", str(out), "--classes", "5", "--device", "cpu", "--no-progress", "--standin-steps", "3",
            *extra]
    for o in TINY:
        args += ["--set", o]
    return args


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(_args(out)) == 0
    return out


def test_ablation_table_and_chart(demo_dir, monkeypatch, capsys):
    from tvt.engine import demo_ablation

    # two of the five variants keep the test short; the loop is the same for all of them
    monkeypatch.setattr(demo_ablation, "VARIANTS", {k: demo_ablation.VARIANTS[k] for k in ("tvt", "ce_only")})
    result = demo_ablation.run_ablation(demo_dir, DemoOptions(classes=5, standin_steps=3, overrides=TINY), seeds=2,
                                        device="cpu", progress=False)
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    tvt_runs = result["variants"]["tvt"]["runs"]
    assert [r["seed"] for r in tvt_runs] == [0, 1]
    assert tvt_runs[0]["mAP@all"] == pytest.approx(metrics["tvt"]["mAP@all"])  # seed 0 is the demo's own run
    v = result["variants"]["ce_only"]["mAP@all"]
    assert v["min"] <= v["mean"] <= v["max"]
    # every run is also scored on the training classes (the fit column), and so is the start
    fit = [r[demo_ablation.SEEN] for n in ("tvt", "ce_only") for r in result["variants"][n]["runs"]]
    assert len(fit) == 4 and all(0.0 < x <= 1.0 for x in fit)
    assert 0.0 < result["start"][demo_ablation.SEEN] <= 1.0 and 0.0 < result["chance"][demo_ablation.SEEN] < 1.0
    spread = result["variants"]["tvt"][demo_ablation.SEEN]
    assert spread["mean"] == pytest.approx(np.mean([r[demo_ablation.SEEN] for r in tvt_runs]))
    table = (demo_dir / "ablation.md").read_text()
    assert "ce_only" in table and "chance (random ranking)" in table and "start (before stage B)" in table
    assert "training classes" in table and f"{result['start'][demo_ablation.SEEN]:.4f}" in table
    with Image.open(demo_dir / "ablation.png") as im:
        assert im.width > 300
    assert "ce_only" in capsys.readouterr().out


def test_demo_end_to_end_refusal_and_resume(demo_dir, capsys):
    out = demo_dir
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("tvt", "start", "image_teacher", "chance"):
        for key in ("mAP@all", "mAP@200", "P@100", "P@200"):
            assert 0.0 <= metrics[model][key] <= 1.0, (model, key)
    # the chance row is the random-ranking level of this gallery, recomputed independently here
    q = np.load(out / "eval" / "tvt_queries.npz")["labels"]
    g = np.load(out / "eval" / "tvt_gallery.npz")["labels"]
    assert metrics["chance"] == pytest.approx(chance_levels(q, g))
    assert metrics["chance"]["P@100"] == pytest.approx(np.mean([(g == c).mean() for c in q]), abs=0.03)
    assert "synthetic" in metrics["run"]["dataset"] and "seed 0" in metrics["run"]["dataset"]
    for name in ("retrievals.png", "eval/tvt_embedding.png", "eval/tvt_pr_curve.png",
                 "eval/tvt_per_class.png", "eval/tvt_attention.png"):
        with Image.open(out / name) as im:
            assert im.width > 100 and im.height > 100, name


    # another dataset seed into the same folder: refused, naming what differs; nothing overwritten
    assert main(_args(out, "--seed", "1")) == 2
    assert "seed: 0 there, 1 now" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text()) == metrics

    # the same arguments again: resumes every stage and gives the same table
    (out / "metrics.json").unlink()
    assert main(_args(out)) == 0
    printed = capsys.readouterr().out
    assert "chance (random ranking)" in printed and "mAP@all" in printed and "synthetic" in printed
    again = json.loads((out / "metrics.json").read_text())
    assert {k: again[k] for k in ("tvt", "start", "image_teacher", "chance")} == \
        {k: metrics[k] for k in ("tvt", "start", "image_teacher", "chance")}


def test_folder_with_other_config_or_other_files_is_refused(tmp_path):
    out = tmp_path / "d"
    record = manifest(demo_config(out), out, seed=0, classes=30)
    assert claim_folder(out, record) is False and claim_folder(out, record) is True
    other = manifest(demo_config(out, ["train.epochs=2"]), out, seed=0, classes=30)
    with pytest.raises(ConfigError, match="config.train.epochs"):
        claim_folder(out, other)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a demo folder"):
        claim_folder(busy, record)


def test_dataset_label_says_synthetic_only_for_data_the_demo_drew(tmp_path):
    out = tmp_path / "d"
    assert "synthetic" in dataset_label(demo_config(out), out, DemoOptions(seed=3, classes=12))
    label = dataset_label(demo_config(out, ["data.root=/data/sketchy", "data.dataset=sketchy"]), out, DemoOptions())
    assert "synthetic" not in label and "sketchy" in label


def test_last_iteration_reads_the_training_log(tmp_path):
    log = tmp_path / "log.jsonl"
    assert last_iteration(log) == -1
    log.write_text('{"type": "step", "it": 4}\n{"type": "epoch", "epoch": 0}\n{"type": "step", "it": 9}\n{"type"')
    assert last_iteration(log) == 9
