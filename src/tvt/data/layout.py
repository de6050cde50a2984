"""Benchmark folder layout, class splits and image discovery (spec §1.1-§1.4).

A data root holds one folder per dataset::

    <root>/<dataset>/photo/<class>/<any sub-folders>/<images>
    <root>/<dataset>/sketch/<class>/<any sub-folders>/<images>
    <root>/<dataset>/split/all_classes.txt
    <root>/<dataset>/split/<split>_classes.txt      # held-out (test / unseen) classes

Only the two class-name files are read; images are found by walking the class folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tvt.errors import DataError

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Sketches dropped from the `sketchy` sketch set whenever their class is loaded (spec §1.3).
# Matched only directly inside sketch/<class>/, by exact path [Q31]; photos are never filtered.
SKETCHY_OUTLIERS: dict[str, tuple[str, ...]] = {
    "airplane": ("n02691156_359-5.png", "n02691156_24584-2.png"),
    "sheep": ("n02411705_6501-2.png",),
    "horse": ("n02374451_388-1.png", "n02374451_10809-3.png"),
    "lion": ("n02129165_6087-1.png",),
    "spider": ("n01772222_8541-2.png",),
    "turtle": ("n01669191_4429-3.png", "n01669191_5861-4.png"),
    "alarm_clock": ("n02694662_3449-5.png",),
    "bear": ("n02131653_7633-3.png",),
    "mouse": ("n02330245_8823-4.png",),
}

ALL_CLASSES_FILE = "all_classes.txt"


@dataclass(frozen=True)
class Split:
    """One dataset split: sorted class lists (labels are indices into them) and parsing notes."""

    root: Path
    dataset: str
    split: str
    all_classes: list[str]
    train_classes: list[str]
    test_classes: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def dataset_dir(self) -> Path:
        return self.root / self.dataset

    @property
    def photo_dir(self) -> Path:
        return self.root / self.dataset / "photo"

    @property
    def sketch_dir(self) -> Path:
        return self.root / self.dataset / "sketch"

    @property
    def split_dir(self) -> Path:
        return self.root / self.dataset / "split"


def check_class_name(name: str, where: str) -> None:
    """DataError unless ``name`` is a plain folder name: ``.`` would make every photo of the modality a
    member of the class (test classes included), ``..`` and names with a separator reach outside it."""
    bad = (name.strip() in (".", "..") or "/" in name or "\\" in name
           or any(ord(ch) < 32 or ord(ch) == 127 for ch in name))
    if bad:
        raise DataError(f"{where}: class {name!r} is not a plain folder name (no '.', '..', path separators or "
                        "control characters); write the name of one class folder per line")


def read_class_file(path: Path) -> tuple[list[str], list[str]]:
    """Read one class name per line; return ``(names in file order, notes)``.

    Blank lines are dropped with a note: the official code would turn one into a class ``''``
    whose folder is the modality root itself [Q30]. Duplicates are dropped with a note (the
    official set difference drops them too). Names are otherwise kept exactly, spaces included,
    because they must match folder names; stray leading/trailing whitespace is noted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class file {path} does not exist: create it with one class name per line")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class file {path}: {exc}; save it as UTF-8 text") from exc
    names: list[str] = []
    seen: set[str] = set()
    notes: list[str] = []
    blank: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            blank.append(lineno)
            continue
        if line in seen:
            notes.append(f"{path}: line {lineno}: duplicate class {line!r} ignored")
            continue
        check_class_name(line, f"{path}: line {lineno}")
        if line != line.strip():
            notes.append(f"{path}: line {lineno}: class {line!r} has leading/trailing whitespace "
                         "(kept as written; its folder name must match exactly)")
        seen.add(line)
        names.append(line)
    if blank:
        shown = ", ".join(map(str, blank[:10])) + (" ..." if len(blank) > 10 else "")
        notes.append(f"{path}: {len(blank)} blank line(s) ignored (line {shown}) [Q30]")
    if not names:
        raise DataError(f"class file {path} lists no classes: write one class name per line")
    return names, notes


def _available_splits(split_dir: Path) -> list[str]:
    suffix = "_classes.txt"
    return sorted(p.name[: -len(suffix)] for p in split_dir.glob(f"*{suffix}") if p.name != ALL_CLASSES_FILE)


def _require_dir(path: Path, what: str, hint: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} {path} does not exist: {hint}")


def load_split(root: str | Path, dataset: str, split: str) -> Split:
    """Read ``<root>/<dataset>/split/{all_classes,<split>_classes}.txt`` and derive the classes.

    ``all = sorted(all lines)``, ``test = sorted(split lines)``, ``train = sorted(all - test)``
    (spec §1.2). The split name is a free string [Q1]. Raises :class:`DataError` for a missing
    dataset/photo/sketch/split folder or file, test classes absent from ``all_classes.txt``, or an
    empty train or test side. Class folders themselves are checked by ``tvt data check``.
    """
    root = Path(root).expanduser()
    ds_dir = root / dataset
    _require_dir(ds_dir, f"dataset folder for {dataset!r}", f"check the data root {root} and --dataset")
    layout_hint = "expected <root>/<dataset>/{photo,sketch}/<class>/<images> (spec §1.1)"
    _require_dir(ds_dir / "photo", "photo folder", layout_hint)
    _require_dir(ds_dir / "sketch", "sketch folder", layout_hint)
    split_dir = ds_dir / "split"
    _require_dir(split_dir, "split folder", f"create it with {ALL_CLASSES_FILE} and <split>_classes.txt")
    if not split or os.sep in split or (os.altsep and os.altsep in split):
        raise DataError(f"invalid split name {split!r}: use the <split> part of split/<split>_classes.txt")
    all_file = split_dir / ALL_CLASSES_FILE
    split_file = split_dir / f"{split}_classes.txt"
    if not split_file.is_file():
        have = _available_splits(split_dir)
        raise DataError(f"split file {split_file} does not exist for split {split!r}: "
                        f"available splits: {', '.join(have) if have else 'none'}; "
                        "create it with one held-out class name per line")
    all_names, notes = read_class_file(all_file)
    test_names, test_notes = read_class_file(split_file)
    notes = notes + test_notes
    unknown = sorted(set(test_names) - set(all_names))
    if unknown:
        raise DataError(f"{split_file}: {len(unknown)} test class(es) not in {all_file}: "
                        f"{', '.join(map(repr, unknown))}; fix the spelling or add them to {ALL_CLASSES_FILE}")
    all_classes = sorted(all_names)
    test_classes = sorted(test_names)
    train_classes = sorted(set(all_classes) - set(test_classes))
    if not train_classes:
        raise DataError(f"split {split!r} of {ds_dir} leaves no training classes: {split_file} lists every "
                        f"class of {all_file}; hold out only some classes")
    return Split(root=root, dataset=dataset, split=split, all_classes=all_classes,
                 train_classes=train_classes, test_classes=test_classes, notes=notes)


def list_images(class_dir: Path) -> list[Path]:
    """All image files under ``class_dir``, in the official order (spec §1.4).

    The walk is recursive and follows symlinks; directories come in sorted order of their path
    (``sorted(os.walk(...))``, as the official folder dataset) and names are sorted within each
    directory. A file is kept when its lower-cased name ends with one of :data:`IMG_EXTENSIONS`.
    A symlink that points back to one of its own ancestors is not followed (it would never end).
    """
    class_dir = Path(class_dir)
    top = str(class_dir)
    ancestors: dict[str, frozenset[str]] = {top: frozenset({os.path.realpath(top)})}
    found: list[tuple[str, list[str]]] = []
    for root, dirs, files in os.walk(top, followlinks=True):
        above = ancestors.get(root, frozenset())
        keep = []
        for d in dirs:
            sub = os.path.join(root, d)
            real = os.path.realpath(sub)
            if real in above:
                continue  # symlink cycle
            ancestors[sub] = above | {real}
            keep.append(d)
        dirs[:] = keep
        found.append((root, files))
    paths: list[Path] = []
    for root, files in sorted(found):
        paths.extend(Path(root) / f for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS))
    return paths


def drop_outliers(paths: list[Path], class_dir: Path, names: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """Split ``paths`` into ``(kept, removed)``: removed are files named in ``names`` that sit
    directly in ``class_dir``; the same name in a sub-folder is kept [Q31]."""
    names = set(names)
    class_dir = Path(class_dir)
    kept: list[Path] = []
    removed: list[Path] = []
    for p in paths:
        (removed if p.parent == class_dir and p.name in names else kept).append(p)
    return kept, removed


def outliers_for(dataset: str) -> dict[str, tuple[str, ...]]:
    """The outlier sketches to drop for ``dataset``: :data:`SKETCHY_OUTLIERS` for ``sketchy``."""
    return dict(SKETCHY_OUTLIERS) if dataset == "sketchy" else {}
