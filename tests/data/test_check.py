from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from tvt.cli import main
from tvt.data.check import check_dataset, format_report
from tvt.data.layout import SKETCHY_OUTLIERS


def test_clean_dataset_counts(make_dataset):
    ds = make_dataset(photos={"a": 3, "b": 1, "c": 2, "d": 4}, sketches={"a": 2, "b": 5, "c": 1, "d": 1})
    report = check_dataset(ds.parent, "ds", "zeroshot", strict=True, workers=1)
    assert report["problems"] == [] and report["ok"] is True
    assert report["train_classes"] == ["a", "c"] and report["test_classes"] == ["b", "d"]
    assert report["per_class"] == {"a": {"role": "train", "photos": 3, "sketches": 2},
                                   "c": {"role": "train", "photos": 2, "sketches": 1},
                                   "b": {"role": "test", "photos": 1, "sketches": 5},
                                   "d": {"role": "test", "photos": 4, "sketches": 1}}
    assert report["totals"] == {"train": {"classes": 2, "photos": 5, "sketches": 3},
                                "test": {"classes": 2, "photos": 5, "sketches": 6}}
    json.dumps(report)  # JSON-ready
    text = format_report(report)
    assert "train classes (2)" in text and "test classes (2)" in text and "OK: no problems found" in text


def _break(ds):
    """Damage a default tree in every way the check must report; return the expected problems."""
    shutil.rmtree(ds / "sketch" / "c")  # listed class without a sketch folder
    for p in (ds / "photo" / "d").iterdir():  # a class folder with no images at all
        p.unlink()
    (ds / "photo" / "d" / "readme.txt").write_text("no images here")
    good = (ds / "photo" / "a" / "000.png").read_bytes()
    (ds / "photo" / "a" / "001.png").write_bytes(good[: len(good) // 2])
    (ds / "sketch" / "b" / "000.png").write_text("not an image")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:4, 2:4, 3] = 255
    Image.fromarray(rgba).save(ds / "sketch" / "a" / "001.png")
    (ds / "sketch" / "cc").mkdir()  # not a listed class, looks like the missing "c"
    return {("missing_class_folder", "c", ds / "sketch" / "c"),
            ("empty_class", "d", ds / "photo" / "d"),
            ("truncated_image", "a", ds / "photo" / "a" / "001.png"),
            ("unreadable_image", "b", ds / "sketch" / "b" / "000.png"),
            ("transparent_png", "a", ds / "sketch" / "a" / "001.png"),
            ("extra_folder", None, ds / "sketch" / "cc")}


def test_bad_tree_problems_and_counts(make_dataset):
    ds = make_dataset()
    expected = _break(ds)
    report = check_dataset(ds.parent, "ds", "zeroshot", strict=True, workers=2)
    got = {(p["kind"], p["class"], ds.parent / p["path"]) for p in report["problems"]}
    assert got == expected
    assert report["ok"] is False
    assert report["per_class"]["c"] == {"role": "train", "photos": 3, "sketches": 0}
    assert report["per_class"]["d"]["photos"] == 0
    assert report["per_class"]["a"] == {"role": "train", "photos": 3, "sketches": 2}  # broken files still count
    missing = next(p for p in report["problems"] if p["kind"] == "missing_class_folder")
    assert "'cc' exists, is it misspelled?" in missing["message"]
    text = format_report(report)
    for kind, cls, path in expected:
        assert f"[{kind}]" in text and str(path) in text
    assert "6 problem(s) found" in text
    # without opening images only the layout problems remain
    quick = check_dataset(ds.parent, "ds", "zeroshot", verify_images=False)
    assert {p["kind"] for p in quick["problems"]} == {"missing_class_folder", "empty_class", "extra_folder"}
    assert any("--no-verify-images" in n for n in quick["notes"]) and quick["ok"] is True


def test_sketchy_outliers_are_reported(make_dataset, image_writer):
    ds = make_dataset(dataset="sketchy", photos={"airplane": 1, "cat": 1}, sketches={"airplane": 1, "cat": 1},
                      splits={"zeroshot": ["cat"]})
    outlier = image_writer(ds / "sketch" / "airplane" / SKETCHY_OUTLIERS["airplane"][1])
    image_writer(ds / "sketch" / "airplane" / "deep" / SKETCHY_OUTLIERS["airplane"][1])
    report = check_dataset(ds.parent, "sketchy", "zeroshot")
    assert report["outliers_removed"] == [str(outlier)]
    assert report["per_class"]["airplane"]["sketches"] == 2
    assert str(outlier) in format_report(report)


def test_cli_data_check(make_dataset, tmp_path, capsys):
    ds = make_dataset()
    out = tmp_path / "reports" / "check.json"
    argv = ["data", "check", str(ds.parent), "--dataset", "ds", "--split", "zeroshot"]
    assert main(argv + ["--json", str(out), "--strict"]) == 0
    assert json.loads(out.read_text())["totals"]["train"] == {"classes": 2, "photos": 6, "sketches": 4}
    assert "OK: no problems found" in capsys.readouterr().out
    (ds / "photo" / "b" / "000.png").write_text("broken")
    assert main(argv + ["--json", str(out)]) == 0  # problems alone do not fail without --strict
    assert main(argv + ["--json", str(out), "--strict"]) == 1
    problems = json.loads(out.read_text())["problems"]
    assert [(p["kind"], p["class"]) for p in problems] == [("unreadable_image", "b")]
    assert main(argv + ["--strict", "--no-verify-images"]) == 0
    capsys.readouterr()
    assert main(["data", "check", str(ds.parent), "--dataset", "ds", "--split", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tvt: error:") and str(ds / "split" / "nope_classes.txt") in err
