"""Image files -> RGB PIL images (spec §1.5): decoding with a pixel limit, colour modes, EXIF orientation.

The lowest data layer: datasets (:mod:`tvt.data.folder`), the decoded-image cache, dataset checks,
photo indexing, search queries and the web server all read images through here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from tvt.errors import DataError

ALPHA_BACKGROUNDS = ("white", "none")
# Pixel limits, checked before decoding so that a decompression bomb is refused cheaply; one per use:
DATASET_MAX_PIXELS = 100_000_000  # dataset images and indexed photos (benchmark images are far smaller)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class ImageReadError(DataError):
    """An image file that cannot be decoded; ``kind`` is ``unreadable_image`` or ``truncated_image``."""

    # Defaults let a DataLoader worker re-raise it in the main process as ``ImageReadError(msg)``.
    def __init__(self, message: str, kind: str = "unreadable_image", path: Path | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path


def read_error_kind(exc: BaseException, path: Path) -> str:
    """``truncated_image`` when PIL reports a file cut short, else ``unreadable_image``."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "unreadable_image"
    message = str(exc).replace(str(path), "").lower()  # the path itself may contain the word
    return "truncated_image" if isinstance(exc, EOFError) or "truncat" in message else "unreadable_image"


def open_image(path: str | Path, max_pixels: int | None = DATASET_MAX_PIXELS) -> Image.Image:
    """Open ``path`` with PIL and decode it fully; raise :class:`ImageReadError` if that fails.

    The pixel count is checked before decoding, so a decompression bomb is refused cheaply (PIL's
    own, higher ``Image.MAX_IMAGE_PIXELS`` guard still applies on top).
    """
    path = Path(path)
    try:
        return _open_and_load(path, max_pixels)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"image {path} is too large to decode safely ({exc}); resize it",
                             "unreadable_image", path) from exc
    except FileNotFoundError as exc:
        raise ImageReadError(f"image {path} does not exist", "unreadable_image", path) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        kind = read_error_kind(exc, path)
        what = "is truncated" if kind == "truncated_image" else "cannot be read as an image"
        raise ImageReadError(f"image {path} {what} ({type(exc).__name__}: {exc}); "
                             "re-export or delete it (`tvt data check` lists all such files)", kind, path) from exc


def file_kind(mode: int) -> str:
    """A readable name for the type of a file that is not a regular file (``st_mode``)."""
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _open_and_load(path: Path, max_pixels: int | None) -> Image.Image:
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):  # opening a FIFO blocks forever, a device never ends
        raise ImageReadError(f"image {path} is not a regular file ({file_kind(mode)}); remove it or rename it "
                             "without an image extension", "unreadable_image", path)
    img = Image.open(path)
    try:
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageReadError(f"image {path} is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}: "
                                 "resize it or raise max_pixels", "unreadable_image", path)
        img.load()
    except BaseException:
        img.close()  # do not leak the file handle of a broken image
        raise
    return img


def has_alpha(img: Image.Image) -> bool:
    """True when ``img`` carries an alpha channel or a transparent colour (palette / tRNS)."""
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def _wide_grey_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit ``L`` by scaling, not clipping.

    ``I;16*`` is scaled by 255/65535. ``I`` holds 16-bit PNG data in older Pillow versions, so it is
    scaled the same way when its values exceed 255; ``F`` is taken as [0, 1] when its maximum is
    at most 1, else as [0, 255].
    """
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
    elif img.mode == "I":
        scale = 255.0 / 65535.0 if arr.size and arr.max() > 255 else 1.0
    else:
        scale = 255.0 / 65535.0
    out = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(out)  # 2-D uint8 -> mode "L"


def to_rgb(img: Image.Image, alpha_background: str = "white") -> Image.Image:
    """Convert a decoded image to 3-channel RGB.

    ``"none"`` is the official plain ``convert("RGB")`` (spec §1.5): transparent pixels keep the
    colour stored under them, which is often black. ``"white"`` composites transparency on white
    (so a transparent-background sketch stays black-on-white) and scales 16-bit greyscale to 8 bit.
    """
    if alpha_background not in ALPHA_BACKGROUNDS:
        raise DataError(f"alpha_background must be one of {ALPHA_BACKGROUNDS}, got {alpha_background!r}")
    if alpha_background == "none" or img.mode == "RGB":
        return img.convert("RGB")
    if img.mode in _WIDE_GREY_MODES:
        img = _wide_grey_to_l(img)  # tRNS on 16-bit grey is rare and dropped here
    if has_alpha(img):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


# EXIF orientation tag (0x0112) value -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation of an opened image (1 = upright, also when absent or unreadable).

    Read from the header, so it can be taken before the pixels are decoded or the image resized
    (a resized copy no longer carries the EXIF block).
    """
    try:
        value = img.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError, TypeError):  # a damaged EXIF block: show the pixels as stored
        return 1
    return value if isinstance(value, int) and value in _ORIENTATIONS else 1


def orient(img: Image.Image, orientation: int) -> Image.Image:
    """``img`` turned upright for EXIF ``orientation`` (see :func:`exif_orientation`)."""
    op = _ORIENTATIONS.get(orientation)
    if op is None:
        return img
    out = img.transpose(op)
    out.info.pop("exif", None)  # upright now: a later reader must not turn it again
    return out


def load_rgb(path: str | Path, alpha_background: str = "white", *,
             max_pixels: int | None = DATASET_MAX_PIXELS, exif_transpose: bool = False) -> Image.Image:
    """Load ``path`` as an RGB PIL image (spec §1.5).

    ``alpha_background="white"`` composites transparency on white and scales 16-bit greyscale;
    ``"none"`` is the official plain ``convert("RGB")``. Raises :class:`DataError` (an
    :class:`ImageReadError`) for unreadable or truncated files and images above ``max_pixels``.
    ``exif_transpose=True`` applies the EXIF orientation (useful for phone photos; the benchmarks
    never used it).
    """
    original = open_image(path, max_pixels=max_pixels)
    try:
        rgb = to_rgb(original, alpha_background)
        return orient(rgb, exif_orientation(original)) if exif_transpose else rgb
    except ValueError as exc:  # e.g. a colour mode PIL cannot convert to RGB (LAB, HSV)
        raise ImageReadError(f"image {path} (mode {original.mode}) cannot be converted to RGB: {exc}; "
                             "re-export it as RGB or greyscale", "unreadable_image", Path(path)) from exc
    finally:
        original.close()
