"""A corpus of bad inputs through the public entry points: a clear error or a documented skip, never a
traceback, and nothing already written is lost.

A user error through the CLI must give exit status 2 and a stderr message starting ``tvt: error:``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tvt.cli import main
from tvt.errors import DataError

# the corpus lives in conftest (shared with its fixtures); load it by path for parametrisation
_spec = importlib.util.spec_from_file_location("tvt_robustness_corpus", Path(__file__).with_name("conftest.py"))
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)

ALL_IMAGES = list(corpus.IMAGES)
BAD_IMAGES = corpus.BAD_IMAGES


def _user_error(capsys, argv: list[str], *must_mention: str) -> str:
    """Run the CLI; assert exit 2 and a one-line ``tvt: error:`` message naming ``must_mention``."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("tvt: error:")]
    assert line, err
    for word in must_mention:
        assert word in err, (word, err)
    return err


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- images: loaders


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_load_rgb(tmp_path, name):
    from tvt.data.images import load_rgb

    path = corpus.write_image(tmp_path, name)
    if name in BAD_IMAGES:
        with pytest.raises(DataError) as info:
            load_rgb(path)
        assert str(path) in str(info.value)
    else:
        img = load_rgb(path)
        assert img.mode == "RGB" and img.width >= 1 and img.height >= 1
        if "transparent" in name:  # composited on white: every fully see-through pixel is white
            with Image.open(path) as src:
                alpha = np.asarray(src.convert("RGBA").getchannel("A"))
            rgb = np.asarray(img)
            assert (alpha == 0).any() and (rgb[alpha == 0] == 255).all()


@pytest.mark.parametrize("name", ALL_IMAGES)
def test_class_folder_item(tmp_path, name):
    from tvt.data.folder import ClassFolder

    corpus.write_good(tmp_path / "a" / "0_good.png")
    bad_path = corpus.write_image(tmp_path / "a", name)
    ds = ClassFolder(tmp_path, ["a"])
    idx = [str(p) for p, _ in ds.samples].index(str(bad_path))
    assert ds[1 - idx][0].mode == "RGB"  # the good image is unaffected
    if name in BAD_IMAGES:
        with pytest.raises(DataError, match=bad_path.name):
            ds[idx]
    else:
        assert ds[idx][0].mode == "RGB"


def test_huge_png_is_refused_cheaply(tmp_path):
    from tvt.data.images import open_image

    path = tmp_path / "huge.png"
    path.write_bytes(corpus.huge_png())
    assert path.stat().st_size < 100
    with pytest.raises(DataError, match="too large|above the limit"):
        open_image(path)


# ----------------------------------------------------------------------------- images: data check


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("name", ALL_IMAGES)
def test_data_check_image(tmp_path, capsys, name, strict):
    ds = corpus.make_tree(tmp_path)
    path = corpus.write_image(ds / ("sketch" if strict else "photo") / "b", name)
    report = tmp_path / "out" / "report.json"
    argv = ["data", "check", str(tmp_path), "--dataset", "ds", "--split", "s", "--workers", "1",
            "--json", str(report)] + (["--strict"] if strict else [])
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    problems = json.loads(report.read_text())["problems"]
    mine = [p for p in problems if p["path"] == str(path)]
    expected = corpus.IMAGES[name][2]
    if expected == "ok":
        assert problems == [] and code == 0, problems
        assert "OK: no problems found" in out
    else:
        kinds = {"bad": ("unreadable_image", "truncated_image"), "transparent": ("transparent_png",)}[expected]
        assert len(mine) == 1 and mine[0]["kind"] in kinds and mine[0]["class"] == "b", problems
        assert len(problems) == 1
        assert path.name in out
        assert code == (1 if strict else 0)


# ----------------------------------------------------------------------------- data check: layout


def _rm(p: Path) -> None:
    p.unlink()


def _write(rel: str, text: str):
    return lambda ds: (ds / rel).write_text(text)


LAYOUT_ERRORS = {  # breakage -> words the DataError message must contain
    "no_all_classes": (lambda ds: _rm(ds / "split" / "all_classes.txt"), "all_classes.txt"),
    "no_split_file": (lambda ds: _rm(ds / "split" / "s_classes.txt"), "s_classes.txt"),
    "empty_all_classes": (_write("split/all_classes.txt", ""), "lists no classes"),
    "blank_only_split": (_write("split/s_classes.txt", "\n\n  \n"), "lists no classes"),
    "unknown_test_class": (_write("split/s_classes.txt", "zebra\n"), "zebra"),
    "all_classes_held_out": (_write("split/s_classes.txt", "a\nb\nc\n"), "no training classes"),
    "non_utf8_class_file": (lambda ds: (ds / "split" / "all_classes.txt").write_bytes(b"\xff\xfe\xfa\x00a\n"),
                            "all_classes.txt"),
    "no_split_dir": (lambda ds: [_rm(p) for p in (ds / "split").iterdir()] and (ds / "split").rmdir(), "split"),
}


@pytest.mark.parametrize("case", list(LAYOUT_ERRORS))
def test_data_check_layout_error(tmp_path, capsys, case):
    ds = corpus.make_tree(tmp_path)
    breakage, word = LAYOUT_ERRORS[case]
    breakage(ds)
    _user_error(capsys, ["data", "check", str(tmp_path), "--dataset", "ds", "--split", "s"], word)


@pytest.mark.parametrize("argv_tail, word", [
    (["--dataset", "nope", "--split", "s"], "nope"),
    (["--dataset", "ds", "--split", "missing"], "missing_classes.txt"),
    (["--dataset", "ds", "--split", "../s"], "invalid split name"),
])
def test_data_check_bad_arguments(tmp_path, capsys, argv_tail, word):
    corpus.make_tree(tmp_path)
    _user_error(capsys, ["data", "check", str(tmp_path), *argv_tail], word)


def test_data_check_missing_root(tmp_path, capsys):
    _user_error(capsys, ["data", "check", str(tmp_path / "nowhere"), "--dataset", "ds", "--split", "s"], "ds")


LAYOUT_PROBLEMS = {  # breakage -> (sorted problem kinds or None, note fragment or None)
    "blank_lines": (_write("split/all_classes.txt", "a\n\nb\n\nc\n"), None, "blank line"),
    "duplicate_names": (_write("split/all_classes.txt", "a\nb\nb\nc\n"), None, "duplicate class 'b'"),
    "class_without_folder": (_write("split/all_classes.txt", "a\nb\nc\nd\n"),
                             ["missing_class_folder"] * 2, None),  # photo and sketch
    "misspelled_folder": (lambda ds: (ds / "photo" / "b").rename(ds / "photo" / "bb"),
                          ["extra_folder", "missing_class_folder"], None),
    "empty_class_folder": (lambda ds: [_rm(p) for p in (ds / "sketch" / "a").iterdir()], ["empty_class"], None),
    "non_image_files_only": (lambda ds: [_rm(p) for p in (ds / "photo" / "a").iterdir()]
                             and (ds / "photo" / "a" / "notes.txt").write_text("x"), ["empty_class"], None),
    "extra_folder": (lambda ds: (ds / "photo" / "zzz").mkdir(), ["extra_folder"], None),
}


@pytest.mark.parametrize("case", list(LAYOUT_PROBLEMS))
def test_data_check_layout_problem(tmp_path, capsys, case):
    ds = corpus.make_tree(tmp_path)
    breakage, kind, note = LAYOUT_PROBLEMS[case]
    breakage(ds)
    report = tmp_path / "r.json"
    capsys.readouterr()
    code = main(["data", "check", str(tmp_path), "--dataset", "ds", "--split", "s", "--strict", "--json", str(report)])
    assert "Traceback" not in capsys.readouterr().err
    rep = json.loads(report.read_text())
    if kind is None:  # a documented note, not a problem
        assert code == 0 and rep["problems"] == []
        assert any(note in n for n in rep["notes"]), rep["notes"]
    else:
        assert code == 1 and sorted(p["kind"] for p in rep["problems"]) == kind, rep["problems"]


def test_class_folder_bad_class_lists(tmp_path):
    from tvt.data.folder import ClassFolder

    corpus.write_good(tmp_path / "a" / "0.png")
    for classes, word in (([], "empty class list"), (["a", "a"], "duplicates"), (["a", ""], "empty class name"),
                          (["zzz"], "no images found")):
        with pytest.raises(DataError, match=word):
            ClassFolder(tmp_path, classes)
    with pytest.raises(DataError, match="does not exist"):
        ClassFolder(tmp_path / "nope", ["a"])


# ----------------------------------------------------------------------------- metrics


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


_F = np.eye(4, 3, dtype=np.float32) + 0.1
_L = np.array([0, 1, 0, 1])


def _nan():
    f = _F.copy()
    f[2, 1] = np.nan
    return f


def _inf():
    f = _F.copy()
    f[0, 0] = -np.inf
    return f


METRIC_QUERIES = {  # bad query file -> words the message must contain (the gallery file is fine)
    "missing_features": (lambda p: _npz(p, labels=_L), "missing key 'features'"),
    "missing_labels": (lambda p: _npz(p, features=_F), "missing key 'labels'"),
    "no_keys": (lambda p: _npz(p), "missing key"),
    "length_mismatch": (lambda p: _npz(p, features=_F, labels=_L[:3]), "labels"),
    "nan_features": (lambda p: _npz(p, features=_nan(), labels=_L), "NaN/Inf"),
    "inf_features": (lambda p: _npz(p, features=_inf(), labels=_L), "NaN/Inf"),
    "features_1d": (lambda p: _npz(p, features=_F[:, 0], labels=_L), "2-D"),
    "features_3d": (lambda p: _npz(p, features=_F[None], labels=_L), "2-D"),
    "labels_2d": (lambda p: _npz(p, features=_F, labels=_L[:, None]), "1-D"),
    "other_dim": (lambda p: _npz(p, features=np.ones((4, 5), np.float32), labels=_L), "dimension"),
    "empty_features": (lambda p: _npz(p, features=np.zeros((0, 3), np.float32), labels=_L[:0]), "empty"),
    "zero_width": (lambda p: _npz(p, features=np.zeros((4, 0), np.float32), labels=_L), "empty"),
    "string_labels": (lambda p: _npz(p, features=_F, labels=np.array(["a", "b", "a", "b"])), "labels"),
    "zero_row": (lambda p: _npz(p, features=np.vstack([_F[:3], np.zeros((1, 3), np.float32)]), labels=_L),
                 "all-zero"),
    "float_labels": (lambda p: _npz(p, features=_F, labels=_L.astype(np.float32)), "integers"),
    "string_features": (lambda p: _npz(p, features=np.array([["x"] * 3] * 4), labels=_L), "features"),
    "object_array": (lambda p: np.savez(p, features=np.array([1, "x"], dtype=object), labels=_L) or p,
                     "not a readable"),
    "text_file": (lambda p: p.write_text("features,labels\n1,2\n") or p, "not a readable"),
    "random_bytes": (lambda p: p.write_bytes(corpus._random_bytes(200)) or p, "not a readable"),
    "empty_file": (lambda p: p.write_bytes(b"") or p, "not a readable"),
    "npy_not_npz": (lambda p: np.save(p.with_suffix(".npy"), _F) or p.with_suffix(".npy").rename(p) or p,
                    "not an .npz archive"),
    "directory": (lambda p: p.mkdir() or p, "file not found"),
}


@pytest.mark.parametrize("case", list(METRIC_QUERIES))
def test_metrics_bad_file(tmp_path, capsys, case):
    gallery = _npz(tmp_path / "g.npz", features=_F, labels=_L)
    query = tmp_path / "q.npz"
    METRIC_QUERIES[case][0](query)
    _user_error(capsys, ["metrics", str(query), str(gallery)], str(query), METRIC_QUERIES[case][1])
    _user_error(capsys, ["metrics", str(gallery), str(query)], str(query))  # same file as the gallery


def test_metrics_missing_file_and_bad_cutoff(tmp_path, capsys):
    good = _npz(tmp_path / "g.npz", features=_F, labels=_L)
    _user_error(capsys, ["metrics", str(tmp_path / "nope.npz"), str(good)], "nope.npz", "not found")
    _user_error(capsys, ["metrics", str(good), str(good), "--map-k", "0"], "--map-k")
    capsys.readouterr()
    assert main(["metrics", str(good), str(good)]) == 0  # the good file itself is fine


# ----------------------------------------------------------------------------- embed: checkpoints


def _truncated_torch(p: Path) -> None:
    buf = p.with_suffix(".full")
    corpus.tiny_checkpoint(buf)
    data = buf.read_bytes()
    p.write_bytes(data[: len(data) // 2])


BAD_CHECKPOINTS = {
    "missing": lambda p: None,
    "empty": lambda p: p.write_bytes(b""),
    "random_bytes": lambda p: p.write_bytes(corpus._random_bytes(4096)),
    "text": lambda p: p.write_text("not a checkpoint"),
    "truncated_torch": _truncated_torch,
    "plain_tensor": lambda p: torch.save(torch.zeros(3, 4), p),
    "dict_without_weights": lambda p: torch.save({"epoch": 3, "lr": 0.1}, p),
    "empty_dict": lambda p: torch.save({}, p),
    "our_format_no_student": lambda p: torch.save({"format": "tvt", "version": 1, "stage": "tvt"}, p),
    "student_not_a_dict": lambda p: torch.save({"format": "tvt", "version": 1, "stage": "tvt",
                                                "student": torch.zeros(2)}, p),
    "wrong_shapes": lambda p: torch.save({"format": "tvt", "version": 1, "stage": "tvt",
                                          "student": {"backbone.cls_token": torch.zeros(1, 1, 7)}}, p),
    "a_list": lambda p: torch.save([1, 2, 3], p),
    "directory": lambda p: p.mkdir(),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_embed_bad_checkpoint(tmp_path, capsys, case):
    img = corpus.write_good(tmp_path / "x.png")
    ckpt = tmp_path / "model.pth"
    BAD_CHECKPOINTS[case](ckpt)
    out = tmp_path / "f.npy"
    _user_error(capsys, ["embed", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", "--device", "cpu",
                         str(img)], "model.pth")
    assert not out.exists() and not (tmp_path / "f.npy.tmp").exists()


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_embed_bad_image(tmp_path, capsys, tiny_ckpt, name):
    good = corpus.write_good(tmp_path / "good.png", size=32)
    bad_path = corpus.write_image(tmp_path, name)
    out = tmp_path / "f.npy"
    out.write_bytes(b"previous result")  # an existing output must survive a failed run
    _user_error(capsys, ["embed", "--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-progress",
                         "--device", "cpu", str(good), str(bad_path)], bad_path.name)
    assert out.read_bytes() == b"previous result"
    assert not (tmp_path / "f.npy.tmp").exists()


def test_embed_missing_image_and_bad_options(tmp_path, capsys, tiny_ckpt):
    good = corpus.write_good(tmp_path / "good.png", size=32)
    out = tmp_path / "f.npy"
    base = ["embed", "--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-progress", "--device", "cpu"]
    _user_error(capsys, [*base, str(good), str(tmp_path / "gone.png")], "gone.png", "not found")
    _user_error(capsys, [*base, "--batch-size", "0", str(good)], "--batch-size")
    _user_error(capsys, [*base, "--img-size", "4", str(good)], "--img-size")
    _user_error(capsys, [*base, str(tmp_path)], str(tmp_path))  # a folder is not an image file
    assert not out.exists()
    assert main([*base, str(good)]) == 0 and np.load(out).shape == (1, 32)


# ----------------------------------------------------------------------------- index and search


def test_index_folder_of_only_bad_images(tmp_path, capsys, tiny_ckpt):
    photos = tmp_path / "photos"
    written = [corpus.write_image(photos, name) for name in BAD_IMAGES]
    out = tmp_path / "idx"
    capsys.readouterr()
    code = main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-progress",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err  # documented: unreadable files are skipped and listed
    meta = json.loads((out / "index.json").read_text())
    assert meta["count"] == 0
    assert sorted(s["path"] for s in meta["skipped"]) == sorted(p.name for p in written)
    assert all(s["reason"] for s in meta["skipped"])
    for p in written:
        assert f"skipped {p.name}" in err


def test_index_mixed_folder_keeps_good_photos(tmp_path, capsys, tiny_ckpt):
    photos = tmp_path / "photos"
    for i in range(2):
        corpus.write_good(photos / f"good{i}.png", seed=i, size=32)
    for name in ("truncated_jpg", "text_png", "huge_declared_png", "cmyk_jpg", "png_16bit"):
        corpus.write_image(photos, name)
    out = tmp_path / "idx"
    assert main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    meta = json.loads((out / "index.json").read_text())
    assert meta["count"] == 4  # 2 good + CMYK + 16-bit
    assert sorted(s["path"] for s in meta["skipped"]) == ["huge.png", "text.png", "trunc.jpg"]


def _index_files(idx: Path) -> dict[str, str]:
    """sha256 of each file of an index (the lock file, which names the last updater, is not index data)."""
    return {f.name: _sha(f) for f in idx.iterdir() if f.is_file() and f.name != "index.lock"}


def _copy_index(good_index, tmp_path) -> tuple[Path, Path]:
    import shutil

    photos, idx = good_index
    dst = tmp_path / "idx"
    shutil.copytree(idx, dst)
    return photos, dst


FAILED_UPDATES = {  # a failed `tvt index` on an existing good index -> (extra argv, word)
    "missing_checkpoint": (lambda t: ["--checkpoint", str(t / "gone.pth")], "gone.pth"),
    "corrupt_checkpoint": (lambda t: (t / "bad.pth").write_bytes(b"\0" * 64) and
                           ["--checkpoint", str(t / "bad.pth")], "bad.pth"),
    "other_checkpoint": (lambda t: ["--checkpoint", str(corpus.tiny_checkpoint(t / "other.pth", seed=1))],
                         "--rebuild"),
    "bad_batch_size": (lambda t: ["--batch-size", "0"], "--batch-size"),
}


@pytest.mark.parametrize("case", list(FAILED_UPDATES))
def test_failed_index_update_keeps_the_index(tmp_path, capsys, good_index, case):
    photos, idx = _copy_index(good_index, tmp_path)
    before = _index_files(idx)
    extra, word = FAILED_UPDATES[case]
    _user_error(capsys, ["index", str(photos), "--out", str(idx), "--no-progress", "--device", "cpu",
                         *extra(tmp_path)], word)
    assert _index_files(idx) == before


def test_index_missing_photo_dir_keeps_the_index(tmp_path, capsys, good_index, tiny_ckpt):
    _, idx = _copy_index(good_index, tmp_path)
    before = _sha(idx / "embeddings.npy")
    _user_error(capsys, ["index", str(tmp_path / "nophotos"), "--checkpoint", str(tiny_ckpt), "--out", str(idx),
                         "--no-progress"], "nophotos")
    assert _sha(idx / "embeddings.npy") == before


BAD_QUERIES = {  # query file name -> (content, word)
    "empty.png": (b"", "empty.png"),
    "text.png": (b"not a sketch", "text.png"),
    "noise.jpg": (corpus._random_bytes(300, 9), "noise.jpg"),
    "huge.png": (corpus.huge_png(), "huge.png"),
    "bad_json.ndjson": (b'{"drawing": [[[1, 2], [3, 4]]]\n{oops', "bad_json.ndjson"),
    "empty.ndjson": (b"", "empty.ndjson"),
    "no_drawing.ndjson": (b'{"word": "cat"}\n', "drawing"),
    "empty_drawing.ndjson": (b'{"drawing": []}\n', "drawing"),
    "ragged.ndjson": (b'{"drawing": [[[1, 2, 3], [4]]]}\n', "stroke"),
    "nan.json": (b'[[[0, NaN], [1, 2]]]', "nan.json"),
    "strings.json": (b'{"drawing": [[["a", "b"], ["c", "d"]]]}', "strings.json"),
    "latin1.ndjson": ('{"word": "caf\u00e9"}\n'.encode("latin-1"), "latin1.ndjson"),
    "number.json": (b"42", "number.json"),
}


@pytest.mark.parametrize("name", list(BAD_QUERIES))
def test_search_bad_query(tmp_path, capsys, good_index, name):
    _, idx = good_index
    content, word = BAD_QUERIES[name]
    query = tmp_path / name
    query.write_bytes(content)
    before = _sha(idx / "embeddings.npy")
    _user_error(capsys, ["search", str(query), "--index", str(idx), "--device", "cpu"], word)
    assert _sha(idx / "embeddings.npy") == before


def test_search_drawing_out_of_range_and_bad_k(tmp_path, capsys, good_index):
    _, idx = good_index
    query = tmp_path / "one.ndjson"
    query.write_text('{"drawing": [[[0, 10, 20], [0, 20, 5]]]}\n')
    _user_error(capsys, ["search", str(query), "--index", str(idx), "--drawing", "3"], "--drawing 3")
    _user_error(capsys, ["search", str(query), "--index", str(idx), "-k", "0"], "-k")
    _user_error(capsys, ["search", str(tmp_path / "gone.png"), "--index", str(idx)], "gone.png")
    capsys.readouterr()
    assert main(["search", str(query), "--index", str(idx), "-k", "2", "--device", "cpu"]) == 0


def _break_index(case: str, idx: Path) -> None:
    meta = idx / "index.json"
    if case == "corrupt_index_json":
        meta.write_text("{not json")
    elif case == "index_json_is_a_list":
        meta.write_text("[1, 2]")
    elif case == "wrong_format":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": "other"}))
    elif case == "missing_embeddings":
        (idx / "embeddings.npy").unlink()
    elif case == "corrupt_embeddings":
        (idx / "embeddings.npy").write_bytes(b"garbage")
    elif case == "missing_files_json":
        (idx / "files.json").unlink()
    elif case == "index_json_missing_keys":
        meta.write_text(json.dumps({"format": "tvt-index", "version": 1}))
    elif case == "empty_embeddings":
        (idx / "embeddings.npy").write_bytes(b"")
    elif case == "files_json_is_a_list":
        (idx / "files.json").write_text("[]")
    elif case == "missing_checkpoint":
        meta.write_text(json.dumps({**json.loads(meta.read_text()),
                                    "model": {**json.loads(meta.read_text())["model"],
                                              "checkpoint": str(idx / "gone.pth")}}))


@pytest.mark.parametrize("case", ["missing_index_dir", "empty_dir", "corrupt_index_json", "index_json_is_a_list",
                                  "wrong_format", "missing_embeddings", "corrupt_embeddings",
                                  "missing_files_json", "missing_checkpoint", "index_json_missing_keys",
                                  "empty_embeddings", "files_json_is_a_list"])
def test_search_bad_index(tmp_path, capsys, good_index, case):
    query = corpus.write_good(tmp_path / "q.png", size=32)
    if case == "missing_index_dir":
        idx = tmp_path / "noindex"
    elif case == "empty_dir":
        idx = tmp_path / "empty"
        idx.mkdir()
    else:
        _, idx = _copy_index(good_index, tmp_path)
        _break_index(case, idx)
    _user_error(capsys, ["search", str(query), "--index", str(idx), "--device", "cpu"], idx.name)


# ----------------------------------------------------------------------------- train / eval configs


CONFIG_ERRORS = {  # extra --set / --config arguments -> word
    "unknown_key": (lambda t: ["--set", "train.bogus_key=1"], "bogus_key"),
    "unknown_section": (lambda t: ["--set", "nosuch.epochs=1"], "nosuch"),
    "wrong_type_int": (lambda t: ["--set", "train.epochs=many"], "train.epochs"),
    "wrong_type_float": (lambda t: ["--set", "train.lr=fast"], "train.lr"),
    "malformed_override": (lambda t: ["--set", "train.epochs"], "train.epochs"),
    "missing_config_file": (lambda t: ["--config", str(t / "nope.yaml")], "nope.yaml"),
    "invalid_yaml": (lambda t: (t / "bad.yaml").write_text("train: [unclosed\n") and
                     ["--config", str(t / "bad.yaml")], "bad.yaml"),
    "yaml_unknown_key": (lambda t: (t / "u.yaml").write_text("train:\n  epochz: 3\n") and
                         ["--config", str(t / "u.yaml")], "epochz"),
}


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_train_eval_bad_config(tmp_path, capsys, tiny_overrides, command, case):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    extra, word = CONFIG_ERRORS[case]
    ckpt = ["--checkpoint", str(tmp_path / "c.pth")] if command == "eval" else []
    _user_error(capsys, [command, *sets, *extra(tmp_path), *ckpt, "--device", "cpu", "--no-progress"], word)
    assert not (tmp_path / "tvt").exists()  # nothing was started


@pytest.mark.parametrize("case", ["missing_checkpoint", "corrupt_checkpoint", "no_checkpoint"])
def test_eval_bad_checkpoint(tmp_path, capsys, tiny_overrides, case):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    ckpt = tmp_path / "c.pth"
    if case == "corrupt_checkpoint":
        ckpt.write_bytes(corpus._random_bytes(256))
    argv = ["eval", *sets, "--device", "cpu", "--no-progress", "--out", str(tmp_path / "e")]
    if case != "no_checkpoint":
        argv += ["--checkpoint", str(ckpt)]
    _user_error(capsys, argv, "checkpoint")


def test_missing_data_root(tmp_path, capsys, tiny_overrides, tiny_ckpt):
    sets = [x for o in tiny_overrides for x in ("--set", o)] + ["--set", f"data.root={tmp_path / 'nodata'}"]
    _user_error(capsys, ["eval", *sets, "--checkpoint", str(tiny_ckpt), "--device", "cpu", "--no-progress",
                         "--out", str(tmp_path / "e")], "nodata")
    _user_error(capsys, ["train", *sets, "--set", f"train.image_teacher={tiny_ckpt}",
                         "--set", f"train.sketch_teacher={tiny_ckpt}", "--device", "cpu", "--no-progress"], "nodata")
    _user_error(capsys, ["train", *[x for o in tiny_overrides for x in ("--set", o)],
                         "--set", f"train.image_teacher={tmp_path / 'gone.pth'}",
                         "--set", f"train.sketch_teacher={tmp_path / 'gone.pth'}", "--device", "cpu"], "gone.pth")
