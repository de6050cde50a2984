"""Bad-input corpus for the robustness tests: image writers, tiny dataset trees, a tiny checkpoint.

Test modules reach the helpers through the ``bad`` fixture (this module itself), since
``--import-mode=importlib`` does not make conftest importable by name.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from _helpers import tiny_checkpoint  # noqa: F401  (shared with tests/search, serve, robustness)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _blocky(size: int = 16, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((size // 4, size // 4, 1), np.uint8))
    return Image.fromarray(arr)


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` (valid CRC), a few dozen bytes on disk."""
    data = bytearray(_png_bytes(Image.new("RGB", (1, 1), (255, 0, 0))))
    # signature (8) | length (4) | b"IHDR" (4) | width (4) | height (4) | ... | CRC over type+data
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _img(mode: str, size: tuple[int, int], color, fmt: str = "PNG", **save) -> Callable[[], bytes]:
    def make() -> bytes:
        buf = io.BytesIO()
        Image.new(mode, size, color).save(buf, format=fmt, **save)
        return buf.getvalue()
    return make


def _palette(transparent: bool) -> bytes:
    img = _blocky().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    buf = io.BytesIO()
    img.save(buf, format="PNG", **({"transparency": 0} if transparent else {}))
    return buf.getvalue()


def _png16() -> bytes:
    img = Image.new("I;16", (8, 8))
    img.putdata([1000 * i for i in range(64)])  # values up to 63000: real 16-bit data
    return _png_bytes(img)


def _rgba_half_transparent() -> bytes:
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[:, :4] = (0, 0, 0, 255)  # left half opaque black, right half fully transparent
    return _png_bytes(Image.fromarray(arr, mode="RGBA"))


def _random_bytes(n: int = 512, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# name -> (file name, bytes factory, expected outcome)
#   "bad": unreadable or truncated (kinds accepted by `data check`), load_rgb raises DataError
#   "transparent": loads fine, `data check` reports a transparent image
#   "ok": loads fine as RGB, no problem reported
IMAGES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "empty_png": ("empty.png", lambda: b"", "bad"),
    "empty_jpg": ("empty.jpg", lambda: b"", "bad"),
    "text_png": ("text.png", lambda: b"this is not an image\n", "bad"),
    "text_jpg": ("text.JPG", lambda: b"<html><body>404 not found</body></html>", "bad"),
    "random_png": ("random.png", lambda: _random_bytes(512, 1), "bad"),
    "random_jpeg": ("random.jpeg", lambda: _random_bytes(512, 2), "bad"),
    "random_bmp": ("random.bmp", lambda: _random_bytes(300, 3), "bad"),
    "random_webp": ("random.webp", lambda: _random_bytes(300, 4), "bad"),
    "random_tif": ("random.tif", lambda: _random_bytes(300, 5), "bad"),
    "png_signature_only": ("sig.png", lambda: _png_bytes(_blocky())[:8], "bad"),
    "truncated_png": ("trunc.png", lambda: (lambda b: b[: len(b) // 2])(_png_bytes(_blocky(32))), "bad"),
    "truncated_jpg": ("trunc.jpg", lambda: (lambda b: b[: len(b) // 2])(_jpeg_bytes(_blocky(64))), "bad"),
    "jpeg_header_only": ("head.jpg", lambda: _jpeg_bytes(_blocky())[:20], "bad"),
    "huge_declared_png": ("huge.png", huge_png, "bad"),
    "one_pixel_png": ("one.png", _img("RGB", (1, 1), (10, 20, 30)), "ok"),
    "one_pixel_jpg": ("one.jpg", _img("RGB", (1, 1), (10, 20, 30), "JPEG"), "ok"),
    "cmyk_jpg": ("cmyk.jpg", _img("CMYK", (8, 8), (0, 255, 0, 0), "JPEG"), "ok"),
    "grey_png": ("grey.png", _img("L", (8, 8), 128), "ok"),
    "png_16bit": ("deep.png", _png16, "ok"),
    "palette_png": ("pal.png", lambda: _palette(False), "ok"),
    "gif_named_png": ("anim.png", _img("RGB", (8, 8), (1, 2, 3), "GIF"), "ok"),
    "transparent_rgba_png": ("alpha.png", _rgba_half_transparent, "transparent"),
    "transparent_la_png": ("la.png", _img("LA", (8, 8), (0, 0)), "transparent"),
    "transparent_palette_png": ("paltrns.png", lambda: _palette(True), "transparent"),
}
BAD_IMAGES = [k for k, v in IMAGES.items() if v[2] == "bad"]
GOOD_IMAGES = [k for k, v in IMAGES.items() if v[2] != "bad"]


def write_image(folder: Path, name: str) -> Path:
    """Write corpus image ``name`` into ``folder``; return its path."""
    file_name, make, _ = IMAGES[name]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    path.write_bytes(make())
    return path


def write_good(path: Path, seed: int = 0, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _blocky(size, seed).save(path)
    return path


def make_tree(root: Path, classes=("a", "b", "c"), test=("c",), dataset: str = "ds", split: str = "s",
              per_class: int = 1) -> Path:
    """``root/<dataset>/{photo,sketch}/<class>/`` with ``per_class`` good PNGs and the two split files."""
    ds = root / dataset
    for modality in ("photo", "sketch"):
        for i, c in enumerate(classes):
            for j in range(per_class):
                write_good(ds / modality / c / f"{j}.png", seed=10 * i + j)
    (ds / "split").mkdir(parents=True, exist_ok=True)
    (ds / "split" / "all_classes.txt").write_text("".join(f"{c}\n" for c in classes))
    (ds / "split" / f"{split}_classes.txt").write_text("".join(f"{c}\n" for c in test))
    return ds


@pytest.fixture(scope="session")
def good_index(tmp_path_factory, tiny_ckpt) -> tuple[Path, Path]:
    """(photo_dir, index_dir): 4 good photos indexed with the tiny checkpoint. Read-only for tests."""
    from tvt.cli import main

    base = tmp_path_factory.mktemp("index")
    photos = base / "photos"
    for i in range(4):
        write_good(photos / f"{i}.png", seed=i, size=32)
    out = base / "idx"
    assert main(["index", str(photos), "--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    return photos, out


@pytest.fixture(scope="session")
def bad():
    """This module: IMAGES, BAD_IMAGES, GOOD_IMAGES, write_image, write_good, make_tree, huge_png, ..."""
    return sys.modules[__name__]
