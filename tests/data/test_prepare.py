"""``tvt data prepare`` on tiny trees in each download layout (tvt.data.prepare)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tvt.cli import main
from tvt.data.layout import list_images, load_split
from tvt.data.prepare import PrepareOptions, find_folder, prepare
from tvt.data.splits import load_protocol
from tvt.data.strokes import render_strokes
from tvt.errors import DataError, InputError


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4), value).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png(0)


def _tree(root: Path, folders: dict[str, list[str]]) -> None:
    """Create root/<folder>/<file> for each folder (folder names may contain '/')."""
    for folder, files in folders.items():
        for name in files:
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (root / folder / name).write_bytes(PNG + name.encode())  # distinct contents


def _sketchy_source(tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    """Sketchy download: rendered_256x256 + EXTEND_image_sketchy, with SEM-PCYC spellings."""
    src = tmp_path / "downloads"
    base = src / "rendered_256x256" / "256x256"
    spelled = {"hot-air_balloon": "hot_air_balloon", "jack-o-lantern": "jack_o_lantern"}
    for cls in load_protocol("sketchy_no21").all_classes:
        if cls in drop:
            continue
        folder = spelled.get(cls, cls)
        _tree(base / "sketch" / "tx_000000000000", {folder: ["n1-1.png", "n1-2.png"]})
        _tree(base / "sketch" / "tx_000000000001", {folder: ["n1-1.png"]})  # other variant: ignored
        _tree(base / "photo" / "tx_000000000000", {folder: ["n1.jpg"]})
        _tree(src / "EXTEND_image_sketchy", {folder: ["n1.jpg", "ext_1.jpg", "sub/ext_2.JPG"]})
    _tree(base / "sketch" / "tx_000000000000", {"not_a_class": ["x.png"]})
    (base / "sketch" / "tx_000000000000" / "readme.txt").write_text("not a folder")
    return src


def test_sketchy_symlink_layout_split_and_manifest(tmp_path: Path) -> None:
    src = _sketchy_source(tmp_path)
    out = tmp_path / "data"
    m = prepare(src, "sketchy", "sketchy_no21", out, PrepareOptions(progress=False))
    root = out / "sketchy"
    split = load_split(out, "sketchy", "zeroshot")
    assert (len(split.all_classes), len(split.train_classes), len(split.test_classes)) == (125, 104, 21)
    assert split.test_classes == load_protocol("sketchy_no21").test_classes
    assert (root / "split" / "all_classes.txt").read_text().splitlines() == split.all_classes
    # canonical folder names; SEM-PCYC spellings were renamed; extended photos incl. sub-folders
    assert sorted(p.name for p in (root / "sketch").iterdir()) == split.all_classes
    photos = list_images(root / "photo" / "jack-o-lantern")
    assert [p.relative_to(root / "photo" / "jack-o-lantern").as_posix() for p in photos] == [
        "ext_1.jpg", "n1.jpg", "sub/ext_2.JPG"]
    link = root / "sketch" / "hot-air_balloon" / "n1-2.png"
    assert link.is_symlink() and Path(os.readlink(link)).is_absolute()
    assert link.resolve() == (src / "rendered_256x256/256x256/sketch/tx_000000000000/hot_air_balloon/n1-2.png").resolve()
    assert m["renamed"]["sketch"] == {"hot_air_balloon": "hot-air_balloon", "jack_o_lantern": "jack-o-lantern"}
    assert m["unknown_folders"] == {"sketch": ["not_a_class"], "photo": []}
    assert m["totals"]["train"] == {"classes": 104, "sketches": 208, "photos": 312}
    assert m["totals"]["test"] == {"classes": 21, "sketches": 42, "photos": 63}
    assert m["classes"]["mouse"] == {"role": "test", "sketches": 2, "sketch_source": "mouse",
                                     "photos": 3, "photo_source": "mouse"}
    assert m["split"] == "zeroshot" and m["notes"] == []
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == m
    files = sorted(p.relative_to(root).as_posix()
                   for mod in ("photo", "sketch") for p in (root / mod).rglob("*") if not p.is_dir())
    assert m["num_files"] == len(files) == 125 * 5
    assert m["file_list_sha256"] == hashlib.sha256("\n".join(files).encode()).hexdigest()


def test_copy_mode_checksums_limit_and_original_photos(tmp_path: Path) -> None:
    src = _sketchy_source(tmp_path)
    base = src / "rendered_256x256"
    out = tmp_path / "data"
    opts = PrepareOptions(mode="copy", checksums=True, max_per_class=1, split="random1", progress=False)
    m = prepare(base, "sketchy", "sketchy25_sake", out, opts)  # EXTEND is outside `base`
    root = out / "sketchy"
    f = root / "sketch" / "teddy_bear" / "n1-1.png"
    assert f.is_file() and not f.is_symlink()
    assert f.read_bytes() == (base / "256x256/sketch/tx_000000000000/teddy_bear/n1-1.png").read_bytes()
    assert m["totals"]["test"] == {"classes": 25, "sketches": 25, "photos": 25}
    assert len(m["files"]) == m["num_files"] == 250
    assert all(hashlib.sha256((root / k).read_bytes()).hexdigest() == v for k, v in m["files"].items())
    assert (root / "split" / "random1_classes.txt").read_text().splitlines() == load_protocol("sketchy25_sake").test_classes
    assert any("EXTEND_image_sketchy" in n for n in m["notes"])


def test_missing_classes_error_then_allow_missing(tmp_path: Path) -> None:
    src = _sketchy_source(tmp_path, drop=("cow", "zebra"))
    out = tmp_path / "data"
    with pytest.raises(DataError, match=r"2 class\(es\).*'cow', 'zebra'.*not_a_class"):
        prepare(src, "sketchy", "sketchy_no21", out, PrepareOptions(progress=False))
    assert not out.exists()  # checked before anything is written
    m = prepare(src, "sketchy", "sketchy_no21", out, PrepareOptions(allow_missing=True, progress=False))
    assert m["missing_classes"] == {"sketch": ["cow", "zebra"], "photo": ["cow", "zebra"]}
    assert m["classes"]["cow"]["sketches"] == 0 and len(load_split(out, "sketchy", "zeroshot").all_classes) == 125
    # a second run needs --overwrite; other split files survive it
    with pytest.raises(DataError, match="--overwrite"):
        prepare(src, "sketchy", "sketchy_no21", out, PrepareOptions(allow_missing=True, progress=False))
    opts = PrepareOptions(allow_missing=True, overwrite=True, progress=False)
    prepare(src, "sketchy", "sketchy25_sempcyc", out, opts)
    assert {p.name for p in (out / "sketchy" / "split").iterdir()} == {
        "all_classes.txt", "zeroshot_classes.txt", "sempcyc_classes.txt"}


def test_tuberlin_layout_with_imageresized_spellings(tmp_path: Path) -> None:
    protocol = load_protocol("tuberlin30_sempcyc")
    resized = {"mouse (animal)": "mouse", "trombone": "tromobone", "space shuttle": "spacesshuttle",
               "bear (animal)": "bearanimal", "door handle": "doorhandle"}
    src = tmp_path / "TU-Berlin"
    for cls in protocol.all_classes:
        _tree(src / "png", {cls: ["1.png"]})
        _tree(tmp_path / "photos" / "ImageResized", {resized.get(cls, cls.replace(" ", "")): ["a.JPEG", "b.JPEG"]})
    (src / "png" / "filelist.txt").write_text("ignored")
    out = tmp_path / "data"
    m = prepare(src, "tuberlin", "tuberlin30_sempcyc", out, PrepareOptions(photos=tmp_path / "photos", progress=False))
    split = load_split(out, "tuberlin", "sempcyc")
    assert (len(split.train_classes), len(split.test_classes)) == (220, 30)
    assert "door handle" in split.test_classes and "door_handle" not in split.test_classes
    assert len(list_images(out / "tuberlin" / "photo" / "mouse (animal)")) == 2
    assert m["renamed"]["photo"]["tromobone"] == "trombone"
    assert m["totals"]["test"] == {"classes": 30, "sketches": 30, "photos": 60}
    with pytest.raises(DataError, match="--photos"):  # TU-Berlin has no photos of its own
        prepare(src, "tuberlin", "tuberlin30_sake", tmp_path / "other", PrepareOptions(progress=False))


def _quickdraw_photos(root: Path) -> None:
    for cls in load_protocol("quickdraw30").all_classes:
        _tree(root / "QuickDraw_images", {cls: ["image_00001.jpg"]})


def test_quickdraw_extended_layout(tmp_path: Path) -> None:
    src = tmp_path / "QuickDraw"
    _quickdraw_photos(src)
    for cls in load_protocol("quickdraw30").all_classes:
        _tree(src / "QuickDraw_sketches", {cls.replace(" ", "_"): ["4567.png"]})
    m = prepare(src, "quickdraw-extended", "quickdraw30", tmp_path / "data", PrepareOptions(progress=False))
    split = load_split(tmp_path / "data", "quickdraw", "zeroshot")
    assert (len(split.train_classes), len(split.test_classes)) == (80, 30)
    assert (tmp_path / "data/quickdraw/sketch/palm tree/4567.png").is_symlink()
    assert m["renamed"]["sketch"]["palm_tree"] == "palm tree"
    assert m["totals"]["train"] == {"classes": 80, "sketches": 80, "photos": 80}


QD_NAMES = {"crocodilian": "crocodile", "eiffel tower": "The Eiffel Tower", "motorcycle": "motorbike",
            "teddy_bear": "teddy-bear", "alarm_clock": "alarm clock"}


def _ndjson_source(tmp_path: Path) -> Path:
    src = tmp_path / "ndjson"
    src.mkdir()
    for cls in load_protocol("quickdraw30").all_classes:
        name = QD_NAMES.get(cls, cls)
        lines = [json.dumps({"word": name, "key_id": str(1000 + k), "recognized": True,
                             "drawing": [[[0, 50, 90], [0, 80, 10 * k]]]}) for k in range(3)]
        (src / f"full_simplified_{name}.ndjson").write_text("\n".join(lines) + "\n")
    return src


def test_quickdraw_ndjson_rendering(tmp_path: Path) -> None:
    src = _ndjson_source(tmp_path)
    _quickdraw_photos(tmp_path / "qd")
    out = tmp_path / "data"
    opts = PrepareOptions(photos=tmp_path / "qd", size=32, line_width=2, padding=3, max_per_class=2,
                          mode="copy", progress=False)
    assert main(["data", "prepare", str(src), "--format", "quickdraw-ndjson", "--protocol", "quickdraw30",
                 "--out", str(out), "--photos", str(tmp_path / "qd"), "--size", "32", "--line-width", "2",
                 "--padding", "3", "--max-per-class", "2", "--quiet"]) == 0
    m = json.loads((out / "quickdraw" / "manifest.json").read_text())
    files = sorted(p.name for p in (out / "quickdraw/sketch/eiffel tower").iterdir())
    assert files == ["1000.png", "1001.png"]
    got = np.asarray(Image.open(out / "quickdraw/sketch/crocodilian/1001.png").convert("RGB"))
    want = np.asarray(render_strokes([[[0, 50, 90], [0, 80, 10]]], size=32, line_width=2, padding=3))
    assert np.array_equal(got, want)
    assert m["mode"] == "render" and m["render"]["size"] == 32
    assert m["totals"]["test"] == {"classes": 30, "sketches": 60, "photos": 30}
    assert m["renamed"]["sketch"]["The Eiffel Tower"] == "eiffel tower"
    # same options through the API on a fresh root give the same manifest file list
    m2 = prepare(src, "quickdraw-ndjson", "quickdraw30", tmp_path / "data2", opts)
    assert m2["file_list_sha256"] == m["file_list_sha256"]


def test_quickdraw_ndjson_bad_line_names_line_and_writes_nothing(tmp_path: Path) -> None:
    src = _ndjson_source(tmp_path)
    _quickdraw_photos(tmp_path / "qd")
    bad = src / "full_simplified_zebra.ndjson"
    bad.write_text(bad.read_text() + '{"drawing": [[[0, 1], [0]]]}\n')
    out = tmp_path / "data"
    with pytest.raises(DataError, match="zebra.ndjson, line 4: stroke 0"):
        prepare(src, "quickdraw-ndjson", "quickdraw30", out, PrepareOptions(photos=tmp_path / "qd", progress=False))
    assert not out.exists()


def test_input_errors_and_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "QuickDraw"
    _quickdraw_photos(src)
    with pytest.raises(InputError, match="quickdraw dataset"):
        prepare(src, "sketchy", "quickdraw30", tmp_path / "o")
    _tree(src / "QuickDraw_sketches", {c: ["1.png"] for c in load_protocol("quickdraw30").all_classes})
    with pytest.raises(InputError, match="overlaps"):
        prepare(src, "quickdraw-extended", "quickdraw30", src / "QuickDraw_sketches", PrepareOptions(progress=False))
    _tree(src / "QuickDraw_sketches", {"teddy-bear": ["1.png"]})  # a second spelling of teddy_bear
    code = main(["data", "prepare", str(src), "--format", "quickdraw-extended", "--protocol", "quickdraw30",
                 "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "teddy-bear" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no sketch folder"):
        prepare(tmp_path / "empty", "sketchy", "sketchy_no21", tmp_path / "x")


def test_find_folder_prefers_earlier_names_and_rejects_ambiguity(tmp_path: Path) -> None:
    for d in ("a/images", "b/c/QuickDraw_images", "x/sketch", "y/sketch"):
        (tmp_path / d).mkdir(parents=True)
    assert find_folder(tmp_path, ("QuickDraw_images", "images")) == tmp_path / "b/c/QuickDraw_images"
    assert find_folder(tmp_path, ("nothing",)) is None
    with pytest.raises(DataError, match="several folders named 'sketch'"):
        find_folder(tmp_path, ("sketch",))
