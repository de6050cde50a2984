from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tvt.data.folder import ClassFolder
from tvt.data.images import ImageReadError, load_rgb, to_rgb
from tvt.data.layout import SKETCHY_OUTLIERS
from tvt.errors import DataError


def test_class_folder_labels_order_and_missing_classes(make_dataset):
    ds = make_dataset(photos={"b": 2, "a": 1, "d": 2}, sketches={})
    classes = ["d", "c", "b", "a"]  # "c" has no folder: skipped, label kept
    folder = ClassFolder(ds / "photo", classes)
    assert classes == ["d", "c", "b", "a"]  # the caller's list is not sorted in place
    assert folder.classes == ["a", "b", "c", "d"]
    assert folder.class_to_idx == {"a": 0, "b": 1, "c": 2, "d": 3}
    assert folder.missing_classes == ["c"]
    rel = [(p.relative_to(ds / "photo").as_posix(), y) for p, y in folder.samples]
    assert rel == [("a/000.png", 0), ("b/000.png", 1), ("b/001.png", 1), ("d/000.png", 3), ("d/001.png", 3)]
    assert folder.targets == [0, 1, 1, 3, 3]
    img, y = folder[2]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and y == 1
    expected = np.asarray(Image.open(folder.samples[2][0]).convert("RGB"))
    assert np.array_equal(np.asarray(img), expected)


def test_return_index_and_transform(make_dataset):
    ds = make_dataset()
    folder = ClassFolder(ds / "sketch", ["a", "b"], transform=lambda im: im.size, return_index=True)
    assert [folder[i] for i in range(len(folder))] == [((8, 8), i) for i in range(4)]


def test_outliers_removed_only_at_top_level(tmp_path, image_writer):
    root = tmp_path / "sketch"
    name = SKETCHY_OUTLIERS["airplane"][0]
    top = image_writer(root / "airplane" / name)
    nested = image_writer(root / "airplane" / "sub" / name)
    keep = image_writer(root / "airplane" / "keep.png")
    other = image_writer(root / "bear" / name)  # same name in another class is not an outlier
    folder = ClassFolder(root, ["airplane", "bear"], outliers=SKETCHY_OUTLIERS)
    assert [p for p, _ in folder.samples] == [keep, nested, other]
    assert folder.outliers_removed == [top]
    assert len(ClassFolder(root, ["airplane", "bear"])) == 4


def test_empty_or_bad_folders_raise(tmp_path, make_dataset):
    ds = make_dataset()
    with pytest.raises(DataError, match="no images found"):
        ClassFolder(ds / "photo", ["zebra"])
    with pytest.raises(DataError, match="does not exist"):
        ClassFolder(tmp_path / "nowhere", ["a"])
    with pytest.raises(DataError, match="duplicates: 'a'"):
        ClassFolder(ds / "photo", ["a", "b", "a"])
    with pytest.raises(DataError, match="empty class name"):
        ClassFolder(ds / "photo", ["a", ""])


def test_broken_image_in_getitem_names_the_file(make_dataset):
    ds = make_dataset()
    bad = ds / "photo" / "a" / "001.png"
    bad.write_bytes(bad.read_bytes()[:40])
    folder = ClassFolder(ds / "photo", ["a"])
    folder[0]
    with pytest.raises(DataError, match="001.png"):
        folder[1]


def _reload(img: Image.Image, fmt: str = "PNG", **kw) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


def _load(tmp_path, img: Image.Image, name: str = "x.png", alpha_background: str = "white", **save_kw) -> np.ndarray:
    path = tmp_path / name
    img.save(path, **save_kw)
    out = load_rgb(path, alpha_background)
    assert out.mode == "RGB" and out.size == img.size
    return np.asarray(out)


def test_rgba_transparent_png_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)  # fully transparent black everywhere ...
    arr[1, 1] = (0, 0, 0, 255)  # ... except one opaque black stroke pixel
    arr[2, 2] = (200, 100, 0, 128)  # and one half-transparent orange pixel
    img = Image.fromarray(arr)
    white = _load(tmp_path, img)
    assert (white[0, 0] == 255).all() and (white[1, 1] == 0).all()
    # alpha compositing: out = a * c + (1 - a) * 255 with a = 128/255
    a = 128 / 255
    assert np.allclose(white[2, 2], [a * 200 + (1 - a) * 255, a * 100 + (1 - a) * 255, (1 - a) * 255], atol=1)
    official = _load(tmp_path, img, alpha_background="none")
    assert (official[0, 0] == 0).all()  # the official conversion turns the background black


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.putdata([0, 1, 0])
    out = _load(tmp_path, img, transparency=0)
    assert out[0].tolist() == [[255, 255, 255], [10, 20, 30], [255, 255, 255]]


def test_la_image(tmp_path):
    img = Image.fromarray(np.array([[[50, 255], [50, 0]]], np.uint8))
    assert img.mode == "LA"
    out = _load(tmp_path, img)
    assert out[0].tolist() == [[50, 50, 50], [255, 255, 255]]


def test_16_bit_greyscale_is_scaled(tmp_path):
    vals = np.array([[0, 257 * 128, 65535, 257 * 10 + 100]], np.uint16)
    img = Image.fromarray(vals)
    assert img.mode.startswith("I;16")
    out = _load(tmp_path, img)
    assert out[0, :, 0].tolist() == [0, 128, 255, 10]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    # 32-bit "I" holding 16-bit data (older Pillow reads 16-bit PNGs this way)
    wide = to_rgb(Image.fromarray(vals.astype(np.int32)))
    assert np.asarray(wide)[0, :, 0].tolist() == [0, 128, 255, 10]


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (3, 1))
    img.putdata([(0, 0, 0, 0), (0, 0, 0, 255), (255, 0, 0, 0)])
    out = _load(tmp_path, img, name="x.tif")
    assert out[0].tolist() == [[255, 255, 255], [0, 0, 0], [0, 255, 255]]


def test_exif_orientation_is_optional(tmp_path):
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif.tobytes())
    assert load_rgb(path).size == (4, 2)  # the benchmark default ignores EXIF, as the official code
    assert load_rgb(path, exif_transpose=True).size == (2, 4)


def test_unreadable_truncated_and_huge_files(tmp_path, image_writer):
    good = image_writer(tmp_path / "good.png", size=16)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(ImageReadError, match="cut.png is truncated") as info:
        load_rgb(cut)
    assert info.value.kind == "truncated_image" and isinstance(info.value, DataError)
    with pytest.raises(ImageReadError, match="fake.png cannot be read") as info:
        load_rgb(fake)
    assert info.value.kind == "unreadable_image"
    with pytest.raises(DataError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")
    with pytest.raises(DataError, match="above the limit of 255"):
        load_rgb(good, max_pixels=255)
    assert load_rgb(good, max_pixels=256).size == (16, 16)
    with pytest.raises(DataError, match="alpha_background"):
        load_rgb(good, "black")
