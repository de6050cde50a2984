"""The class-folder dataset (spec §1.4): the images of a class list, read with :func:`~tvt.data.images.load_rgb`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.utils.data
from PIL import Image

from tvt.data.cache import DecodedCache
from tvt.data.images import ALPHA_BACKGROUNDS, DATASET_MAX_PIXELS, load_rgb
from tvt.data.layout import IMG_EXTENSIONS, check_class_name, drop_outliers, list_images
from tvt.errors import DataError


class ClassFolder(torch.utils.data.Dataset):
    """Images under ``modality_root/<class>/**`` for a caller-given class list (spec §1.4).

    ``classes`` is sorted (without changing the caller's list) and ``class_to_idx[c]`` is the
    position of ``c`` in it. Samples are gathered class by class in that order with
    :func:`~tvt.data.layout.list_images`. A class without a folder is skipped, keeping its label
    reserved, and is recorded in ``missing_classes``. Outliers are dropped only when they sit
    directly in ``<class>/`` [Q31]; the dropped paths are in ``outliers_removed``.

    ``__getitem__(i)`` returns ``(transform(img), label)``, or ``(transform(img), i)`` with
    ``return_index=True`` (the evaluation variant; labels are then read from ``targets``).

    ``cache_dir`` keeps decoded images in a :class:`~tvt.data.cache.DecodedCache` there, so each
    file is decoded once instead of every epoch; images (and so tensors) are unchanged. ``None``
    (the default) decodes every time. The cache is exposed as ``cache`` (``None`` without one).
    """

    def __init__(self, modality_root: Path, classes: Sequence[str], transform: Callable[[Image.Image], Any] | None = None,
                 *, outliers: Mapping[str, Iterable[str]] | None = None, return_index: bool = False,
                 alpha_background: str = "white", max_pixels: int | None = DATASET_MAX_PIXELS,
                 cache_dir: str | Path | None = None) -> None:
        root = Path(modality_root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist: expected {root}/<class>/<images>")
        names = list(classes)
        if not names:
            raise DataError(f"empty class list for {root}: check the split files")
        dupes = sorted(c for c, n in Counter(names).items() if n > 1)
        if dupes:
            raise DataError(f"class list for {root} has duplicates: {', '.join(map(repr, dupes))}")
        if any(not c.strip() for c in names):
            raise DataError(f"class list for {root} contains an empty class name; remove blank lines [Q30]")
        for c in names:
            check_class_name(c, f"class list for {root}")
        if alpha_background not in ALPHA_BACKGROUNDS:
            raise DataError(f"alpha_background must be one of {ALPHA_BACKGROUNDS}, got {alpha_background!r}")
        self.root = root
        self.classes: list[str] = sorted(names)
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform
        self.return_index = return_index
        self.alpha_background = alpha_background
        self.max_pixels = max_pixels
        self.missing_classes: list[str] = []
        self.outliers_removed: list[Path] = []
        self.samples: list[tuple[Path, int]] = []
        drop = {c: tuple(v) for c, v in (outliers or {}).items()}
        for c in self.classes:
            class_dir = root / c
            if not class_dir.is_dir():
                self.missing_classes.append(c)
                continue
            kept, removed = drop_outliers(list_images(class_dir), class_dir, drop.get(c, ()))
            self.outliers_removed.extend(removed)
            self.samples.extend((path, self.class_to_idx[c]) for path in kept)
        if not self.samples:
            raise DataError(f"no images found under {root} for {len(self.classes)} class(es) "
                            f"(e.g. {self.classes[0]!r}); supported extensions: {' '.join(IMG_EXTENSIONS)}")
        self.targets: list[int] = [y for _, y in self.samples]
        self.cache: DecodedCache | None = None
        if cache_dir is not None:
            self.cache = DecodedCache(cache_dir)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        if self.cache is not None:
            img: Any = self.cache.get(path, self.alpha_background, max_pixels=self.max_pixels)
        else:
            img = load_rgb(path, self.alpha_background, max_pixels=self.max_pixels)
        if self.transform is not None:
            img = self.transform(img)
        return img, (index if self.return_index else label)

    def __repr__(self) -> str:
        return (f"ClassFolder(root={str(self.root)!r}, classes={len(self.classes)}, samples={len(self.samples)}, "
                f"missing_classes={len(self.missing_classes)}"
                + (f", cache_dir={str(self.cache.root)!r})" if self.cache is not None else ")"))
