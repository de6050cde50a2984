from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tvt.data.cache import DecodedCache
from tvt.data.folder import ClassFolder
from tvt.data.images import ImageReadError, load_rgb
from tvt.data.transforms import eval_transform, tvt_train_transform
from tvt.errors import DataError

W, H = 13, 9  # non-square, so a swapped height/width would show


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _write(path: Path, kind: str, seed: int = 0) -> Path:
    """A tiny image of ``kind`` whose pixels depend on ``seed``."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(_rgb(seed))
    if kind == "rgb_png":
        rgb.save(path)
    elif kind == "rgb_jpeg":
        rgb.save(path, quality=90)
    elif kind == "rgba":  # random alpha including fully transparent pixels over random colours
        alpha = rng.choice([0, 77, 255], size=(H, W)).astype(np.uint8)
        Image.fromarray(np.dstack([_rgb(seed), alpha])).save(path)
    elif kind == "palette":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    elif kind == "palette_transparent":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path, transparency=0)
    elif kind == "grey":
        rgb.convert("L").save(path)
    elif kind == "grey_alpha":
        rgb.convert("LA").save(path)
    elif kind == "grey16":
        Image.fromarray(rng.integers(0, 65536, size=(H, W), dtype=np.uint16)).save(path)
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees
        rgb.save(path, quality=95, exif=exif)
    else:
        raise AssertionError(kind)
    return path


KINDS = {"rgb_png": "png", "rgb_jpeg": "jpg", "rgba": "png", "palette": "png", "palette_transparent": "png",
         "grey": "png", "grey_alpha": "png", "grey16": "png", "exif_rotated": "jpg"}


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.npy"))


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode == "RGB" and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("alpha_background", ["white", "none"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cached_image_equals_load_rgb(tmp_path, kind, alpha_background):
    src = _write(tmp_path / f"img.{KINDS[kind]}", kind, seed=3)
    cache = DecodedCache(tmp_path / "cache")
    for exif in (False, True):
        expected = load_rgb(src, alpha_background, exif_transpose=exif)
        cold = cache.get(src, alpha_background, exif_transpose=exif)
        warm = cache.get(src, alpha_background, exif_transpose=exif)
        assert _same(cold, expected) and _same(warm, expected)
    assert (cache.misses, cache.hits) == (2, 2)
    assert len(_entries(tmp_path / "cache")) == 2  # exif_transpose is part of the key


def test_white_and_none_are_separate_entries(tmp_path):
    src = _write(tmp_path / "a.png", "rgba", seed=1)
    cache = DecodedCache(tmp_path / "cache")
    white, none = cache.get(src, "white"), cache.get(src, "none")
    assert not np.array_equal(np.asarray(white), np.asarray(none))  # hidden colours differ from white
    assert _same(cache.get(src, "white"), load_rgb(src, "white"))
    assert _same(cache.get(src, "none"), load_rgb(src, "none"))
    assert (cache.misses, cache.hits) == (2, 2)


def test_entry_is_a_plain_npy_and_grey_is_stored_as_one_channel(tmp_path):
    cache = DecodedCache(tmp_path / "cache")
    grey = _write(tmp_path / "g.png", "grey", seed=2)
    colour = _write(tmp_path / "c.png", "rgb_png", seed=2)
    cache.get(grey)
    (g_file,) = _entries(tmp_path / "cache")
    cache.get(colour)
    (c_file,) = set(_entries(tmp_path / "cache")) - {g_file}
    g, c = np.load(g_file, allow_pickle=False), np.load(c_file, allow_pickle=False)
    assert g.shape == (H, W) and c.shape == (H, W, 3) and g.dtype == c.dtype == np.uint8
    assert np.array_equal(g, np.asarray(Image.open(grey)))
    assert np.array_equal(c, _rgb(2))


def test_same_file_through_another_path_shares_the_entry(tmp_path, monkeypatch):
    src = _write(tmp_path / "a.png", "rgb_png")
    cache = DecodedCache(tmp_path / "cache")
    cache.get(src)
    monkeypatch.chdir(tmp_path)
    assert _same(cache.get(Path("a.png")), load_rgb(src))
    assert (cache.misses, cache.hits) == (1, 1)


@pytest.mark.parametrize("same_size", [True, False])
def test_modified_source_is_decoded_again(tmp_path, same_size):
    src = _write(tmp_path / "a.png", "rgb_png", seed=1)
    cache = DecodedCache(tmp_path / "cache")
    old = cache.get(src)
    st = os.stat(src)
    if same_size:  # new pixels, same byte count: only the mtime tells them apart
        arr = np.asarray(Image.open(src)).copy()
        arr[0, 0] ^= 1
        Image.fromarray(arr).save(src)
        assert os.stat(src).st_size == st.st_size
    else:
        _write(src, "rgb_png", seed=2)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    new = cache.get(src)
    assert _same(new, load_rgb(src)) and not _same(new, old)
    assert (cache.misses, cache.hits) == (2, 0)
    assert _same(cache.get(src), load_rgb(src)) and cache.hits == 1
    assert len(_entries(tmp_path / "cache")) == 1  # rewritten in place, not added


def _flip_pixel(data: bytes) -> bytes:
    i = len(data) - 48 - 5  # inside the pixel data, before the trailer
    return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:]


CORRUPTIONS = {
    "empty": lambda d: b"",
    "truncated": lambda d: d[:-60],
    "one_byte_short": lambda d: d[:-1],
    "extra_byte": lambda d: d + b"\0",
    "garbage": lambda d: bytes(range(256)) * 4,
    "zeros": lambda d: bytes(len(d)),
    "pixel_flipped": _flip_pixel,
    "bad_header": lambda d: d[:10] + b"{'descr': '|O', 'fortran_order': False, 'shape': (9, 13, 3), }" + d[72:],
    "bad_magic": lambda d: d[:-48] + b"XXXXXXXX" + d[-40:],
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_entry_is_a_miss_and_is_rewritten(tmp_path, corruption):
    src = _write(tmp_path / "a.png", "rgb_png", seed=5)
    cache = DecodedCache(tmp_path / "cache")
    cache.get(src)
    (file,) = _entries(tmp_path / "cache")
    good = file.read_bytes()
    file.write_bytes(CORRUPTIONS[corruption](good))
    assert _same(cache.get(src), load_rgb(src))
    assert (cache.misses, cache.hits) == (2, 0)
    assert file.read_bytes() == good  # rewritten
    assert _same(cache.get(src), load_rgb(src)) and cache.hits == 1


def test_other_valid_npy_header_is_still_a_hit(tmp_path):
    src = _write(tmp_path / "a.png", "rgb_png", seed=5)
    cache = DecodedCache(tmp_path / "cache")
    cache.get(src)
    (file,) = _entries(tmp_path / "cache")
    data = file.read_bytes()
    hlen = int.from_bytes(data[8:10], "little")
    header = f"{{'shape': ({H}, {W}, 3), 'descr': '|u1', 'fortran_order': False}}".encode()  # another key order
    file.write_bytes(data[:10] + header.ljust(hlen - 1) + b"\n" + data[10 + hlen:])
    assert np.array_equal(np.load(file, allow_pickle=False), _rgb(5))  # still a valid .npy
    assert _same(cache.get(src), load_rgb(src)) and (cache.misses, cache.hits) == (1, 1)


def test_entry_of_another_source_is_not_used(tmp_path):
    a = _write(tmp_path / "a.png", "rgb_png", seed=1)
    b = _write(tmp_path / "b.png", "rgb_png", seed=2)
    os.utime(b, ns=(os.stat(a).st_atime_ns, os.stat(a).st_mtime_ns))  # same size and mtime as a
    assert os.stat(a).st_size == os.stat(b).st_size
    cache = DecodedCache(tmp_path / "cache")
    cache.get(a)
    (file_a,) = _entries(tmp_path / "cache")
    cache.get(b)
    (file_b,) = set(_entries(tmp_path / "cache")) - {file_a}
    file_b.write_bytes(file_a.read_bytes())  # a's entry under b's name: the key digest rejects it
    assert _same(cache.get(b), load_rgb(b)) and (cache.misses, cache.hits) == (3, 0)
    assert _same(cache.get(a), load_rgb(a)) and _same(cache.get(b), load_rgb(b)) and cache.hits == 2


def _error(fn) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        fn()
    return info.value


@pytest.mark.parametrize("content", ["garbage", "truncated", "missing"])
def test_unreadable_source_raises_like_load_rgb_and_caches_nothing(tmp_path, content):
    src = tmp_path / "bad.png"
    if content == "garbage":
        src.write_bytes(b"not an image at all")
    elif content == "truncated":
        good = _write(tmp_path / "good.png", "rgb_png").read_bytes()
        src.write_bytes(good[: len(good) // 2])
    cache = DecodedCache(tmp_path / "cache")
    expected = _error(lambda: load_rgb(src))
    got = _error(lambda: cache.get(src))
    assert (type(got), got.kind, str(got)) == (type(expected), expected.kind, str(expected))
    assert _entries(tmp_path / "cache") == []


def test_max_pixels_applies_to_cached_images(tmp_path):
    src = _write(tmp_path / "a.png", "rgb_png")
    cache = DecodedCache(tmp_path / "cache")
    cache.get(src)
    expected = _error(lambda: load_rgb(src, max_pixels=W * H - 1))
    assert str(_error(lambda: cache.get(src, max_pixels=W * H - 1))) == str(expected)
    assert _same(cache.get(src, max_pixels=W * H), load_rgb(src))


def test_bad_alpha_background_is_a_data_error(tmp_path):
    src = _write(tmp_path / "a.png", "rgb_png")
    with pytest.raises(DataError, match="alpha_background"):
        DecodedCache(tmp_path / "cache").get(src, "black")


def test_unwritable_cache_folder_is_a_data_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(DataError, match=str(blocker / "cache")):
        DecodedCache(blocker / "cache")
    if os.name == "posix" and os.geteuid() != 0:  # root writes through permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(DataError, match=str(ro)):
            DecodedCache(ro)


def test_failed_write_warns_once_and_still_returns_the_image(tmp_path):
    a, b = _write(tmp_path / "a.png", "rgb_png", 1), _write(tmp_path / "b.png", "grey", 2)
    cache = DecodedCache(tmp_path / "cache")
    for sub in "0123456789abcdef":  # every two-hex-digit shard is blocked by a plain file
        for sub2 in "0123456789abcdef":
            (tmp_path / "cache" / (sub + sub2)).write_text("")
    with pytest.warns(UserWarning, match="cannot write") as record:
        assert _same(cache.get(a), load_rgb(a)) and _same(cache.get(b), load_rgb(b))
    assert len(record) == 1 and cache.write_errors == 2
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cache_and_folder_pickle(tmp_path, make_dataset):
    ds = make_dataset()
    folder = ClassFolder(ds / "photo", ["a", "b"], cache_dir=tmp_path / "cache")
    folder[0]
    clone = pickle.loads(pickle.dumps(folder))
    assert clone.cache is not None and clone.cache.root == tmp_path / "cache"
    assert _same(clone[0][0], folder[0][0]) and (clone.cache.misses, clone.cache.hits) == (1, 1)  # counts travel
    assert "cache_dir" in repr(clone) and "cache_dir" not in repr(ClassFolder(ds / "photo", ["a"]))


def _run(folder: ClassFolder) -> list[tuple[list[torch.Tensor], int]]:
    torch.manual_seed(0)
    random.seed(0)  # blur and solarize draw from Python's random [Q23]
    return [folder[i] for i in range(len(folder))]


def test_class_folder_with_cache_gives_identical_tensors(tmp_path, make_dataset):
    ds = make_dataset(size=16)
    tf = tvt_train_transform(size=12, scale=(0.3, 1.0))
    plain = ClassFolder(ds / "sketch", ["a", "b", "c"], tf)
    cached = ClassFolder(ds / "sketch", ["a", "b", "c"], tf, cache_dir=tmp_path / "cache")
    reference = _run(plain)
    for _ in range(2):  # cold, then warm
        out = _run(cached)
        assert [y for _, y in out] == [y for _, y in reference]
        for (crops, _), (ref, _) in zip(out, reference):
            assert all(torch.equal(c, r) for c, r in zip(crops, ref))
    assert (cached.cache.misses, cached.cache.hits) == (len(plain), len(plain))


def test_dataloader_with_workers(tmp_path, make_dataset):
    ds = make_dataset(size=16)
    tf = eval_transform(8)
    plain = ClassFolder(ds / "photo", ["a", "b", "c", "d"], tf, return_index=True)
    cached = ClassFolder(ds / "photo", ["a", "b", "c", "d"], tf, return_index=True, cache_dir=tmp_path / "cache")
    expected = torch.stack([plain[i][0] for i in range(len(plain))])
    loader = torch.utils.data.DataLoader(cached, batch_size=3, num_workers=2)
    for _ in range(2):  # epoch 1 fills the cache from two processes, epoch 2 reads it
        xs, idx = zip(*loader)
        assert torch.equal(torch.cat(idx), torch.arange(len(plain)))
        assert torch.equal(torch.cat(xs), expected)
    assert len(_entries(tmp_path / "cache")) == len(plain)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
