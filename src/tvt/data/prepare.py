"""``tvt data prepare``: turn a downloaded benchmark into the tvt layout (spec §1.1).

Output: ``<out>/<dataset>/{photo,sketch}/<class>/...`` (symlinks or copies, or PNGs rendered from
QuickDraw stroke files), ``split/all_classes.txt`` and ``split/<split>_classes.txt`` of the chosen
protocol, and ``manifest.json`` (per-class counts, a checksum of the sorted file list, optional
per-file sha256). Source folders are found liberally (see :data:`SOURCE_FOLDERS`) and class folders
are matched by :class:`tvt.data.names.ClassMatcher`; output folders use the canonical names.

Everything is checked before anything is written: missing protocol classes raise DataError listing
them (unless ``allow_missing``), unknown folders are reported in the manifest. Sketchy outlier
sketches (spec §1.3) are *not* removed here: the loaders drop them, so the data stays complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from tvt.data.layout import list_images
from tvt.data.names import ClassMatcher, MatchResult
from tvt.data.splits import Protocol, load_protocol
from tvt.data.strokes import check_render_options, count_drawings, render_stroke_file
from tvt.errors import DataError, InputError
from tvt.files import sha256_file, write_json, write_text

FORMAT_DATASET: dict[str, str] = {
    "sketchy": "sketchy",
    "tuberlin": "tuberlin",
    "quickdraw-extended": "quickdraw",
    "quickdraw-ndjson": "quickdraw",
}
MODES = ("symlink", "copy")
MANIFEST = "manifest.json"

# format -> (sketch folder names, photo folder names), in priority order, matched case-insensitively
# at SOURCE or up to 3 levels below it. Sketchy's `photo`/`sketch` hold augmentation variants
# `tx_00000000000*`; the benchmarks use tx_000000000000.
SOURCE_FOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sketchy": (
        ("sketch",),
        ("EXTEND_image_sketchy", "extended_photo", "EXTEND_image_sketchy_ready", "photo"),
    ),
    "tuberlin": (("png", "png_ready", "sketches", "sketch"), ("ImageResized", "ImageResized_ready", "images", "photo")),
    "quickdraw-extended": (("QuickDraw_sketches", "sketches", "sketch"), ("QuickDraw_images", "images", "photo")),
    "quickdraw-ndjson": ((), ("QuickDraw_images", "images", "photo")),
}
_NDJSON_PREFIXES = ("full_simplified_", "full_raw_", "simplified_", "raw_", "full_")
_VARIANT = "tx_000000000000"
_PLURAL = {"sketch": "sketches", "photo": "photos"}


@dataclass(frozen=True)
class PrepareOptions:
    """Options of :func:`prepare` (the CLI flags of ``tvt data prepare``)."""

    mode: str = "symlink"
    split: str | None = None  # on-disk split name; default: the protocol's
    photos: Path | None = None
    size: int = 256
    line_width: float = 3
    padding: int = 16
    max_per_class: int | None = None
    allow_missing: bool = False
    checksums: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class _Modality:
    """One modality's source: the folder, its class entries (name -> path) and the match."""

    name: str
    root: Path
    entries: dict[str, Path]
    match: MatchResult = field(default_factory=MatchResult)


def _visible_children(folder: Path, dirs: bool) -> list[Path]:
    """Sorted sub-folders (or files) of ``folder``, hidden entries and ``__MACOSX`` skipped."""
    try:
        with os.scandir(folder) as it:
            children = [
                Path(e.path) for e in it
                if not e.name.startswith((".", "__MACOSX")) and (e.is_dir() if dirs else e.is_file())
            ]
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc}") from exc
    return sorted(children)


def find_folder(root: Path, names: tuple[str, ...], max_depth: int = 3) -> Path | None:
    """The shallowest folder at or below ``root`` named one of ``names`` (earlier names first).

    Raises DataError when one name matches several folders at the same depth (ambiguous).
    """
    wanted = [n.casefold() for n in names]
    levels: list[list[Path]] = [[root]]
    for _ in range(max_depth):
        levels.append([c for d in levels[-1] for c in _visible_children(d, dirs=True)])
    for name in wanted:
        for level in levels:
            hits = [d for d in level if d.name.casefold() == name]
            if len(hits) > 1:
                listed = ", ".join(str(h) for h in hits)
                raise DataError(f"several folders named {name!r} under {root}: {listed}; "
                                "pass the one to use directly")
            if hits:
                return hits[0]
    return None


def _variant(folder: Path) -> Path:
    """Descend into Sketchy's tx_000000000000 augmentation folder when present."""
    sub = [c for c in _visible_children(folder, dirs=True) if c.name.startswith("tx_")]
    if not sub:
        return folder
    for c in sub:
        if c.name == _VARIANT:
            return c
    raise DataError(f"{folder} holds {[c.name for c in sub]} but not {_VARIANT}, the variant the "
                    "benchmarks use; pass the folder of class folders directly")


def _sketch_source(source: Path, fmt: str) -> tuple[Path, dict[str, Path]]:
    """(folder, {class entry name: path}) of the sketches; entries are folders or .ndjson files."""
    if fmt == "quickdraw-ndjson":
        if source.is_file():
            return source.parent, {_ndjson_class(source): source}
        folder = source
        files = [f for f in _visible_children(source, dirs=False) if f.suffix.lower() == ".ndjson"]
        if not files:
            sub = [d for d in _visible_children(source, dirs=True)
                   if any(f.suffix.lower() == ".ndjson" for f in _visible_children(d, dirs=False))]
            if len(sub) != 1:
                raise DataError(f"no .ndjson stroke files in {source} (expected <class>.ndjson "
                                "files, one per class, as in the Quick, Draw! release)")
            folder = sub[0]
            files = [f for f in _visible_children(folder, dirs=False) if f.suffix.lower() == ".ndjson"]
        return folder, {_ndjson_class(f): f for f in files}
    found = find_folder(source, SOURCE_FOLDERS[fmt][0])
    if found is None:
        expected = " or ".join(SOURCE_FOLDERS[fmt][0])
        raise DataError(f"no sketch folder ({expected}) found in {source} or up to 3 levels below; "
                        f"{_LAYOUT_HINT[fmt]}")
    folder = _variant(found)
    return folder, {d.name: d for d in _visible_children(folder, dirs=True)}


def _photo_source(source: Path, fmt: str, photos: Path | None) -> tuple[Path, dict[str, Path]]:
    names = SOURCE_FOLDERS[fmt][1]
    source = source if source.is_dir() else source.parent
    if photos is not None:
        if not photos.is_dir():
            raise DataError(f"--photos {photos} is not a folder")
        found = find_folder(photos, names) or photos
    else:
        found = find_folder(source, names)
        if found is None:
            raise DataError(f"no photo folder ({' or '.join(names)}) found in {source} or up to 3 "
                            f"levels below; pass it with --photos. {_LAYOUT_HINT[fmt]}")
    folder = _variant(found)
    return folder, {d.name: d for d in _visible_children(folder, dirs=True)}


_LAYOUT_HINT = {
    "sketchy": "expected rendered_256x256/256x256/{sketch,photo}/tx_000000000000/<class>/ and "
    "optionally EXTEND_image_sketchy/<class>/ (Sketchy-Extended photos)",
    "tuberlin": "expected png/<class>/*.png (sketches) and ImageResized/<class>/ (Extended photos)",
    "quickdraw-extended": "expected QuickDraw_sketches/<class>/*.png and QuickDraw_images/<class>/*.jpg",
    "quickdraw-ndjson": "expected <class>.ndjson files and QuickDraw_images/<class>/*.jpg (--photos)",
}


def _ndjson_class(path: Path) -> str:
    stem = path.name[: -len(".ndjson")] if path.name.lower().endswith(".ndjson") else path.stem
    for prefix in _NDJSON_PREFIXES:
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def _check_paths(source_dirs: list[Path], dataset_root: Path) -> None:
    """Refuse an output that overlaps a source (overwrite would delete the download)."""
    out = dataset_root.resolve()
    for src in source_dirs:
        s = src.resolve()
        if s == out or out in s.parents or s in out.parents:
            raise InputError(f"output {dataset_root} overlaps the source folder {src}; choose an "
                             "--out outside the downloaded data")


def _prepare_output(dataset_root: Path, overwrite: bool) -> None:
    busy = [d for d in (dataset_root / "photo", dataset_root / "sketch")
            if d.is_dir() and any(d.iterdir())]
    if busy and not overwrite:
        raise DataError(f"{busy[0]} already exists and is not empty; pass --overwrite to replace "
                        "photo/ and sketch/ (other split files are kept) or choose another --out")
    for d in busy:
        if d.is_symlink():
            d.unlink()
        else:
            shutil.rmtree(d)


def _place_images(src: Path, dst: Path, mode: str, limit: int | None) -> list[Path]:
    """Link or copy the images of one class folder, keeping sub-folders; return the new paths."""
    files = list_images(src)[:limit] if limit is not None else list_images(src)
    placed = []
    for f in files:
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "symlink":
            os.symlink(os.path.abspath(f), target)
        else:
            shutil.copy2(f, target)
        placed.append(target)
    return placed


def _match_modality(mod: _Modality, protocol: Protocol, allow_missing: bool) -> None:
    mod.match = ClassMatcher(protocol.all_classes, protocol.dataset).match(
        mod.entries, what=f"{mod.name} folders in {mod.root}")
    if mod.match.missing and not allow_missing:
        raise DataError(
            f"{len(mod.match.missing)} class(es) of protocol {protocol.name} have no {mod.name} "
            f"folder in {mod.root}: {mod.match.missing}. Folders there that match no class: "
            f"{mod.match.unknown or 'none'}. Check the source, or pass --allow-missing to prepare "
            "the rest (the split files still list every class)"
        )


def _notes(fmt: str, photo: _Modality) -> list[str]:
    """Things worth telling the user about the sources that were picked."""
    notes = []
    if fmt == "sketchy" and photo.root.name == _VARIANT:
        notes.append(
            "photos come from the original Sketchy photo folder (100 per class); the benchmarks "
            "use the Sketchy-Extended photos: pass --photos EXTEND_image_sketchy"
        )
    return notes


def write_split_files(dataset_root: Path, protocol: Protocol, split: str | None = None) -> list[Path]:
    """Write ``split/all_classes.txt`` and ``split/<split>_classes.txt``; return both paths."""
    split = split or protocol.split
    if not split or "/" in split or split.startswith("."):
        raise InputError(f"invalid split name {split!r}: use a plain name such as 'zeroshot'")
    folder = dataset_root / "split"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "all_classes.txt", folder / f"{split}_classes.txt"]
    write_text(paths[0], "\n".join(protocol.all_classes) + "\n")
    write_text(paths[1], "\n".join(protocol.test_classes) + "\n")
    return paths


def _fill(mod: _Modality, dataset_root: Path, protocol: Protocol, opts: PrepareOptions,
          bar: tqdm) -> dict[str, list[Path]]:
    """Create ``<dataset_root>/<modality>/<class>/`` for every matched class entry."""
    out: dict[str, list[Path]] = {}
    for entry, cls in mod.match.mapping.items():
        dst = dataset_root / mod.name / cls
        src = mod.entries[entry]
        if src.is_file():  # a QuickDraw stroke file: render
            out[cls] = render_stroke_file(src, dst, size=opts.size, line_width=opts.line_width,
                                          padding=opts.padding, max_drawings=opts.max_per_class)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            out[cls] = _place_images(src, dst, opts.mode, opts.max_per_class)
        bar.update(1)
    return out


def _validate_sources(mods: list[_Modality], opts: PrepareOptions) -> None:
    """Parse every stroke file used (DataError names file and line) before anything is written."""
    for mod in mods:
        for entry in mod.match.mapping:
            if mod.entries[entry].is_file():
                count_drawings(mod.entries[entry], opts.max_per_class)


def prepare(source: str | Path, fmt: str, protocol_name: str, out: str | Path,
            opts: PrepareOptions | None = None) -> dict:
    """Prepare ``source`` (a download in format ``fmt``) under ``out`` for a protocol.

    Returns the manifest (also written to ``<out>/<dataset>/manifest.json``).
    """
    opts = opts or PrepareOptions()
    if fmt not in FORMAT_DATASET:
        raise InputError(f"unknown source format {fmt!r}; choose one of {sorted(FORMAT_DATASET)}")
    if opts.mode not in MODES:
        raise InputError(f"unknown mode {opts.mode!r}; choose symlink or copy")
    if opts.max_per_class is not None and opts.max_per_class < 1:
        raise InputError(f"--max-per-class must be >= 1, got {opts.max_per_class}")
    if fmt == "quickdraw-ndjson":
        check_render_options(opts.size, opts.line_width, opts.padding)
    protocol = load_protocol(protocol_name)
    if protocol.dataset != FORMAT_DATASET[fmt]:
        raise InputError(f"protocol {protocol.name} is for the {protocol.dataset} dataset but the "
                         f"source format {fmt} gives {FORMAT_DATASET[fmt]}")
    source = Path(source)
    if not source.exists():
        raise DataError(f"source {source} does not exist")
    sketch = _Modality("sketch", *_sketch_source(source, fmt))
    photo = _Modality("photo", *_photo_source(source, fmt, opts.photos))
    mods = [sketch, photo]
    for mod in mods:
        _match_modality(mod, protocol, opts.allow_missing)
    _validate_sources(mods, opts)
    dataset_root = Path(out) / protocol.dataset
    _check_paths([sketch.root, photo.root], dataset_root)
    _prepare_output(dataset_root, opts.overwrite)
    split_paths = write_split_files(dataset_root, protocol, opts.split)
    total = sum(len(m.match.mapping) for m in mods)
    with tqdm(total=total, desc=f"prepare {protocol.dataset}", unit="class", file=sys.stderr,
              disable=not opts.progress) as bar:
        placed = {m.name: _fill(m, dataset_root, protocol, opts, bar) for m in mods}
    manifest = build_manifest(dataset_root, protocol, fmt, mods, placed, split_paths, opts)
    manifest["notes"] = _notes(fmt, photo)
    write_json(dataset_root / MANIFEST, manifest, indent=1)
    return manifest


def build_manifest(dataset_root: Path, protocol: Protocol, fmt: str, mods: list[_Modality],
                   placed: dict[str, dict[str, list[Path]]], split_paths: list[Path],
                   opts: PrepareOptions) -> dict:
    """Counts, sources and checksums of a prepared dataset (see docs/datasets.md)."""
    test = set(protocol.test_classes)
    files = sorted(p.relative_to(dataset_root).as_posix()
                   for per_class in placed.values() for paths in per_class.values() for p in paths)
    classes = {}
    for cls in protocol.all_classes:
        row: dict = {"role": "test" if cls in test else "train"}
        for mod in mods:
            row[_PLURAL[mod.name]] = len(placed[mod.name].get(cls, []))
            src = [e for e, c in mod.match.mapping.items() if c == cls]
            row[f"{mod.name}_source"] = src[0] if src else None
        classes[cls] = row
    totals = {role: {"classes": sum(r["role"] == role for r in classes.values()),
                     "sketches": sum(r["sketches"] for r in classes.values() if r["role"] == role),
                     "photos": sum(r["photos"] for r in classes.values() if r["role"] == role)}
              for role in ("train", "test")}
    manifest = {
        "format": "tvt-prepare", "version": 1,
        "dataset": protocol.dataset, "protocol": protocol.name,
        "split": split_paths[1].name[: -len("_classes.txt")],
        "split_files": [p.relative_to(dataset_root).as_posix() for p in split_paths],
        "source_format": fmt, "mode": "render" if fmt == "quickdraw-ndjson" else opts.mode,
        "sources": {m.name: str(m.root.resolve()) for m in mods},
        "max_per_class": opts.max_per_class,
        "classes": classes, "totals": totals,
        "renamed": {m.name: m.match.renamed for m in mods},
        "unknown_folders": {m.name: m.match.unknown for m in mods},
        "missing_classes": {m.name: m.match.missing for m in mods},
        "num_files": len(files),
        "file_list_sha256": hashlib.sha256("\n".join(files).encode("utf-8")).hexdigest(),
    }
    if fmt == "quickdraw-ndjson":
        manifest["render"] = {"size": opts.size, "line_width": opts.line_width,
                              "padding": opts.padding, "antialias": False}
    if opts.checksums:
        manifest["files"] = {f: sha256_file(dataset_root / f) for f in files}
    return manifest
