"""Dataset check: per-class counts and every layout or image problem, found up front.

Training must not find a broken file hours in; ``tvt data check`` opens every image once and
reports what the loaders would see (same discovery order, same outlier removal).
"""

from __future__ import annotations

import difflib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from tvt.data.images import DATASET_MAX_PIXELS, ImageReadError, file_kind, has_alpha, open_image, read_error_kind
from tvt.data.layout import Split, drop_outliers, list_images, load_split, outliers_for

PROBLEM_KINDS = ("missing_class_folder", "empty_class", "unreadable_image", "truncated_image",
                 "transparent_png", "transparent_image", "extra_folder", "count_mismatch")
COUNT_TOLERANCE = 0.10  # a known protocol's unseen counts may differ this much from the published ones
MODALITIES = ("photo", "sketch")
_COUNT_KEY = {"photo": "photos", "sketch": "sketches"}


def _problem(kind: str, path: Path | str, cls: str | None, message: str) -> dict[str, Any]:
    return {"kind": kind, "path": str(path), "class": cls, "message": message}


def inspect_image(path: Path, cls: str | None = None, max_pixels: int | None = DATASET_MAX_PIXELS) -> dict | None:
    """Open ``path`` fully; return a problem dict (unreadable, truncated, transparent) or ``None``.

    PIL ``verify`` checks the file structure (PNG checksums), then a full decode catches
    truncation; an image with transparent pixels is reported because the official plain RGB
    conversion shows the colour stored under them (usually black) [spec §1.5]. A FIFO or device
    named like an image is reported without being opened (reading it would block).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _problem("unreadable_image", path, cls, f"cannot stat: {exc.strerror or exc}")
    if not stat.S_ISREG(mode):
        return _problem("unreadable_image", path, cls, f"not a regular file ({file_kind(mode)})")
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is not a usable image
        return _problem(read_error_kind(exc, path), path, cls, f"{type(exc).__name__}: {exc}")
    try:
        img = open_image(path, max_pixels=max_pixels)
    except ImageReadError as exc:
        return _problem(exc.kind, path, cls, str(exc))
    try:
        if not has_alpha(img):
            return None
        alpha = img.convert("RGBA").getchannel("A")
        hist = alpha.histogram()
        see_through = sum(hist[:255])
        if see_through == 0:
            return None
        share = 100.0 * see_through / max(1, img.width * img.height)
        fmt = img.format or path.suffix.lstrip(".").upper()
        kind = "transparent_png" if fmt == "PNG" else "transparent_image"
        return _problem(kind, path, cls, f"{fmt} with {share:.0f}% (partly) transparent pixels: the official plain "
                        "RGB conversion would show the colour stored under them, usually black; tvt composites "
                        "it on white (alpha_background='white')")
    finally:
        img.close()


def _folder_problems(split: Split, modality: str, cls: str, disk: list[str]) -> list[dict]:
    class_dir = split.dataset_dir / modality / cls
    hint = difflib.get_close_matches(cls, disk, n=1)
    extra = f"; a folder named {hint[0]!r} exists, is it misspelled?" if hint else ""
    return [_problem("missing_class_folder", class_dir, cls,
                     f"class {cls!r} is listed in the split files but has no folder {class_dir}{extra}")]


def _disk_classes(split: Split, modality: str) -> list[str]:
    return sorted(e.name for e in (split.dataset_dir / modality).iterdir() if e.is_dir())


def _scan(split: Split) -> tuple[dict, list[tuple[Path, str]], list[str], list[dict]]:
    """Count images per class and modality; return (per_class, images, outliers_removed, problems)."""
    outliers = outliers_for(split.dataset)
    per_class: dict[str, dict[str, Any]] = {}
    images: list[tuple[Path, str]] = []
    removed_all: list[str] = []
    problems: list[dict] = []
    disk = {m: _disk_classes(split, m) for m in MODALITIES}
    roles = [(c, "train") for c in split.train_classes] + [(c, "test") for c in split.test_classes]
    for cls, role in roles:
        entry: dict[str, Any] = {"role": role, "photos": 0, "sketches": 0}
        for modality in MODALITIES:
            class_dir = split.dataset_dir / modality / cls
            if not class_dir.is_dir():
                problems += _folder_problems(split, modality, cls, [d for d in disk[modality]
                                                                    if d not in split.all_classes])
                continue
            found = list_images(class_dir)
            if modality == "sketch":
                found, removed = drop_outliers(found, class_dir, outliers.get(cls, ()))
                removed_all += [str(p) for p in removed]
            entry[_COUNT_KEY[modality]] = len(found)
            images += [(p, cls) for p in found]
            if not found:
                problems.append(_problem("empty_class", class_dir, cls,
                                         f"no {modality} images in {class_dir} (extensions are matched "
                                         "case-insensitively: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp)"))
        per_class[cls] = entry
    listed = set(split.all_classes)
    for modality in MODALITIES:
        for name in disk[modality]:
            if name not in listed:
                path = split.dataset_dir / modality / name
                problems.append(_problem("extra_folder", path, None,
                                         f"folder {path} is not a class in all_classes.txt; it is ignored"))
    return per_class, images, removed_all, problems


def _verify(images: list[tuple[Path, str]], workers: int | None, max_pixels: int | None) -> list[dict]:
    """Open every image (threads: PIL releases the GIL while decoding); problems in file order."""
    n = workers if workers is not None else min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(images), desc="checking images", unit="img", leave=False)
    found: list[dict] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
            for result in pool.map(lambda item: inspect_image(item[0], item[1], max_pixels), images):
                bar.update(1)
                if result is not None:
                    found.append(result)
    finally:
        bar.close()
    return found


def _totals(per_class: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals = {role: {"classes": 0, "photos": 0, "sketches": 0} for role in ("train", "test")}
    for entry in per_class.values():
        t = totals[entry["role"]]
        t["classes"] += 1
        t["photos"] += entry["photos"]
        t["sketches"] += entry["sketches"]
    return totals


def check_dataset(root: str | Path, dataset: str, split: str, *, strict: bool = False, verify_images: bool = True,
                  workers: int | None = None, max_pixels: int | None = DATASET_MAX_PIXELS) -> dict:
    """Check ``<root>/<dataset>`` for ``split`` and return a JSON-ready report.

    Keys: ``dataset, split, root, train_classes, test_classes, per_class`` ({class: {role, photos,
    sketches}}), ``totals`` ({train|test: {classes, photos, sketches}}), ``outliers_removed``,
    ``problems`` ([{kind, path, class, message}]), ``notes``, ``images_verified``, ``strict``,
    ``ok``. Layout errors that make the split unusable raise :class:`~tvt.errors.DataError`;
    everything else is listed as a problem. ``strict`` only sets ``ok`` to False when there are
    problems (the command then exits 1).
    """
    sp = load_split(root, dataset, split)
    per_class, images, removed, problems = _scan(sp)
    problems += published_count_problems(sp, _totals(per_class))
    notes = list(sp.notes)
    if verify_images:
        problems += _verify(images, workers, max_pixels)
    else:
        notes.append("images were not opened (--no-verify-images): unreadable files are not detected")
    return {
        "dataset": dataset, "split": split, "root": str(sp.root),
        "train_classes": list(sp.train_classes), "test_classes": list(sp.test_classes),
        "per_class": per_class, "totals": _totals(per_class),
        "outliers_removed": removed, "problems": problems, "notes": notes,
        "images_verified": bool(verify_images), "strict": bool(strict),
        "ok": not (strict and problems),
    }


def published_count_problems(sp: Split, totals: dict[str, dict[str, int]]) -> list[dict]:
    """``count_mismatch`` problems when the split is a known protocol (same unseen classes) and its
    unseen photo or sketch count is more than :data:`COUNT_TOLERANCE` away from the published one
    (e.g. a Sketchy-NO tree holding only the original photos, or half a download)."""
    from tvt.data.splits import PROTOCOLS

    test = set(sp.test_classes)
    out = []
    for p in PROTOCOLS.values():
        if set(p.test_classes) != test:
            continue
        for key, expected in (("photos", p.unseen_gallery), ("sketches", p.tvt_queries or p.unseen_queries)):
            found = totals["test"][key]
            if expected and abs(found - expected) > COUNT_TOLERANCE * expected:
                out.append(_problem("count_mismatch", sp.root / sp.dataset, None,
                                    f"the unseen classes match protocol {p.name}, which has {expected} unseen {key}, "
                                    f"but this tree holds {found}; is the download complete and the right variant? "
                                    "(docs/datasets.md)"))
    return out


def _class_table(report: dict, role: str, flagged: set[str]) -> list[str]:
    classes = report[f"{role}_classes"]
    width = max([len("class")] + [len(c) for c in classes])
    lines = [f"{role} classes ({len(classes)})", f"  {'class':<{width}}  {'photos':>8}  {'sketches':>8}"]
    for c in classes:
        e = report["per_class"][c]
        mark = "  !" if c in flagged else ""
        lines.append(f"  {c:<{width}}  {e['photos']:>8}  {e['sketches']:>8}{mark}")
    return lines


def format_report(report: dict) -> str:
    """Readable text: per-class count tables (train, test), totals, outliers, notes, every problem."""
    problems = report["problems"]
    flagged = {p["class"] for p in problems if p["class"]}
    lines = [f"dataset {report['dataset']!r}, split {report['split']!r} (root {report['root']})", ""]
    for role in ("train", "test"):
        lines += _class_table(report, role, flagged) + [""]
    lines.append("totals")
    for role in ("train", "test"):
        t = report["totals"][role]
        lines.append(f"  {role + ':':<6} {t['classes']} classes, {t['photos']} photos, {t['sketches']} sketches")
    removed = report["outliers_removed"]
    lines += ["", f"outliers removed ({len(removed)})"] + [f"  {p}" for p in removed]
    if report["notes"]:
        lines += ["", f"notes ({len(report['notes'])})"] + [f"  - {n}" for n in report["notes"]]
    lines += ["", f"problems ({len(problems)})"]
    for p in problems:  # add the path unless the message already names it
        where = "" if p["path"] in p["message"] else f" ({p['path']})"
        lines.append(f"  [{p['kind']}] {p['class'] or '-'}: {p['message']}{where}")
    if flagged:
        lines.append("  (classes with a problem are marked ! in the tables)")
    verdict = "OK: no problems found" if not problems else f"{len(problems)} problem(s) found"
    if not report.get("images_verified", True):
        verdict += " (images not opened)"
    lines += ["", verdict]
    return "\n".join(lines)
