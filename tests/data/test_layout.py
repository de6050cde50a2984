from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tvt.data.layout import (IMG_EXTENSIONS, SKETCHY_OUTLIERS, drop_outliers, list_images, load_split,
                             outliers_for, read_class_file)
from tvt.errors import DataError


def test_split_derivation_and_sorted_labels(make_dataset):
    ds = make_dataset(all_classes=["c", "a", "d", "b"], splits={"zeroshot": ["d", "b"], "my split": ["a"]})
    sp = load_split(ds.parent, "ds", "zeroshot")
    assert sp.all_classes == ["a", "b", "c", "d"]
    assert sp.test_classes == ["b", "d"]
    assert sp.train_classes == ["a", "c"]
    assert sp.photo_dir == ds / "photo" and sp.sketch_dir == ds / "sketch"
    assert sp.notes == []
    # split names are free strings [Q1]
    assert load_split(str(ds.parent), "ds", "my split").train_classes == ["b", "c", "d"]


def test_blank_lines_and_duplicates_are_dropped_with_notes(make_dataset):
    ds = make_dataset()
    (ds / "split" / "all_classes.txt").write_text("b\n\na\r\n  \nc\nd\na\n")
    sp = load_split(ds.parent, "ds", "zeroshot")
    assert sp.all_classes == ["a", "b", "c", "d"]
    assert "" not in sp.train_classes
    assert any("blank line" in n and "[Q30]" in n and "2, 4" in n for n in sp.notes)
    assert any("duplicate class 'a'" in n for n in sp.notes)


def test_read_class_file_keeps_spaces_and_order(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("\ufeffpalm tree\nhot air balloon\n")  # with a byte-order mark
    names, notes = read_class_file(f)
    assert names == ["palm tree", "hot air balloon"] and notes == []


@pytest.mark.parametrize("breakage, needle", [
    (lambda ds: shutil.rmtree(ds), "dataset folder"),
    (lambda ds: shutil.rmtree(ds / "photo"), "photo"),
    (lambda ds: shutil.rmtree(ds / "sketch"), "sketch"),
    (lambda ds: shutil.rmtree(ds / "split"), "split folder"),
    (lambda ds: (ds / "split" / "zeroshot_classes.txt").unlink(), "zeroshot_classes.txt"),
    (lambda ds: (ds / "split" / "all_classes.txt").unlink(), "all_classes.txt"),
    (lambda ds: (ds / "split" / "zeroshot_classes.txt").write_text("\n\n"), "lists no classes"),
    (lambda ds: (ds / "split" / "zeroshot_classes.txt").write_text("a\nb\nc\nd\n"), "no training classes"),
])
def test_bad_layouts_raise_data_error(make_dataset, breakage, needle):
    ds = make_dataset()
    breakage(ds)
    with pytest.raises(DataError) as info:
        load_split(ds.parent, "ds", "zeroshot")
    assert needle in str(info.value)
    assert str(ds) in str(info.value)


def test_missing_split_lists_available_ones(make_dataset):
    ds = make_dataset(splits={"zeroshot": ["b"], "random1": ["a"]})
    with pytest.raises(DataError, match="available splits: random1, zeroshot"):
        load_split(ds.parent, "ds", "random2")


def test_unknown_test_classes_are_named(make_dataset):
    ds = make_dataset()
    (ds / "split" / "zeroshot_classes.txt").write_text("b\nzebra\nyak\n")
    with pytest.raises(DataError, match=r"2 test class\(es\) not in .*all_classes.txt: 'yak', 'zebra'"):
        load_split(ds.parent, "ds", "zeroshot")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_list_images_order_and_extension_filter(tmp_path):
    cls = tmp_path / "cls"
    for rel in ["b.png", "a.PNG", "notes.txt", "c.gif", "x/2.jpg", "x/1.JPEG", "x y/0.webp", "x/z/9.Tiff",
                "x/z/readme.md"]:
        _touch(cls / rel)
    got = [p.relative_to(cls).as_posix() for p in list_images(cls)]
    # directories in sorted order of their path, as sorted(os.walk()): "x y" sorts before "x/z"
    # because " " < "/"; names sorted inside each directory (upper case before lower case).
    assert got == ["a.PNG", "b.png", "x/1.JPEG", "x/2.jpg", "x y/0.webp", "x/z/9.Tiff"]
    assert all(p.is_absolute() == cls.is_absolute() for p in list_images(cls))
    assert ".webp" in IMG_EXTENSIONS and ".gif" not in IMG_EXTENSIONS


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_list_images_follows_symlinks_and_survives_cycles(tmp_path):
    cls = tmp_path / "cls"
    _touch(cls / "own.png")
    _touch(tmp_path / "elsewhere" / "linked.jpg")
    os.symlink(tmp_path / "elsewhere", cls / "more")
    os.symlink(cls, cls / "loop")  # a cycle must not hang the walk
    got = [p.relative_to(cls).as_posix() for p in list_images(cls)]
    assert got == ["own.png", "more/linked.jpg"]


def test_outliers(tmp_path):
    assert sum(len(v) for v in SKETCHY_OUTLIERS.values()) == 12
    assert outliers_for("sketchy") == SKETCHY_OUTLIERS and outliers_for("tuberlin") == {}
    cls = tmp_path / "airplane"
    top = _touch(cls / "n02691156_359-5.png")
    nested = _touch(cls / "sub" / "n02691156_359-5.png")
    other = _touch(cls / "keep.png")
    kept, removed = drop_outliers(list_images(cls), cls, SKETCHY_OUTLIERS["airplane"])
    assert removed == [top]
    assert kept == [other, nested]
